"""DeepAA from a synthetic policy file: both variants' laws, every op against Pillow, bad files.

The file is built here in DeepAA's saved format (``policy_probs`` [K, N], ``ops``/``mags``
[N, 1], ``op_names`` like ``"ShearX:(-0.3,,0.3)"``, ``l_ops``, ``l_mags``), with DeepAA's
ImageNet op list and its unique (op, magnitude) entries: 139 of them. No policy ships.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ff_lightning.augment import OpRecord, _native, build_policy
from ff_lightning.augment.deepaa import GEOMETRY_OPS, DeepAA, load_policy_file
from ff_lightning.errors import ConfigError
from tests.lazy_scipy import stats

Image = pytest.importorskip("PIL.Image")
from PIL import ImageDraw, ImageEnhance, ImageOps  # noqa: E402

IMAGENET_OPS = [
    ("Identity", 0.0, 1.0),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("TranslateX", -0.45, 0.45),
    ("TranslateY", -0.45, 0.45),
    ("Rotate", -30.0, 30.0),
    ("AutoContrast", 0.0, 1.0),
    ("Invert", 0.0, 1.0),
    ("Equalize", 0.0, 1.0),
    ("Solarize", 0.0, 256.0),
    ("Posterize", 4.0, 8.0),
    ("Contrast", 0.1, 1.9),
    ("Color", 0.1, 1.9),
    ("Brightness", 0.1, 1.9),
    ("Sharpness", 0.1, 1.9),
    ("RandFlip", 0.0, 1.0),
    ("RandCutout60", 0.0, 1.0),
    ("RandResizeCrop_imagenet", 0.0, 1.0),
]
CIFAR_EXTRA = [("RandCutout", 0.0, 1.0), ("RandCrop", 0.0, 1.0)]
_MID = {"Solarize": 12, "Posterize": 12}  # no-op bin left out; symmetric ops: bin 6
_NO_MAG = {"Identity", "AutoContrast", "Invert", "Equalize", *GEOMETRY_OPS}


def entries(ops, l_mags: int = 13):
    """DeepAA's unique (op, bin) entries: every bin but the op's no-op one."""
    out = []
    for k, (name, _, _) in enumerate(ops):
        if name in _NO_MAG:
            out.append((k, (l_mags - 1) // 2))
            continue
        mid = _MID.get(name, (l_mags - 1) // 2)
        out.extend((k, m) for m in range(l_mags) if m != mid)
    return out


def write_policy(path, op_list=IMAGENET_OPS, layers: int = 5, seed: int = 0, **override):
    ent = entries(op_list)
    rs = np.random.default_rng(seed)
    probs = rs.random((layers, len(ent))) ** 3
    probs /= probs.sum(1, keepdims=True)
    arrays = {
        "policy_probs": probs.astype(np.float32),
        "l_ops": len(op_list),
        "l_mags": 13,
        "ops": np.array([e[0] for e in ent], np.int32)[:, None],
        "mags": np.array([e[1] for e in ent], np.int32)[:, None],
        "op_names": np.array([f"{n}:({lo},,{hi}" for n, lo, hi in op_list]),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.fixture
def policy_file(tmp_path):
    return write_policy(tmp_path / "policy_DeepAA.npz")


def test_file_format_and_entry_count(policy_file):
    data = load_policy_file(policy_file)
    assert data["probs"].shape == (5, 139)  # DeepAA's ImageNet policy size
    assert data["names"][1] == ("ShearX", -0.3, 0.3) and data["l_mags"] == 13


@pytest.mark.parametrize("variant", ["fusionflow", "paper"])
def test_layer_laws(policy_file, variant):
    pol = build_policy("deepaa", policy_file=str(policy_file), variant=variant)
    data = load_policy_file(policy_file)
    probs = torch.from_numpy(data["probs"])
    keep = torch.tensor([pol.op_table[k][0] not in GEOMETRY_OPS for k in data["ops"]])
    if variant == "fusionflow":  # dropped and renormalised per layer
        probs = probs * keep
        probs = probs / probs.sum(1, keepdim=True)
    assert torch.allclose(pol.probs, probs, atol=1e-12)
    assert torch.allclose(pol.probs.sum(1), torch.ones(5, dtype=torch.float64))
    n = 20_000
    rec = pol.sample(torch.arange(n), 0, 0)
    assert rec.num_slots == 5 and rec.applied.all()
    names = np.array([pol.op_names[k] for k in rec.op_ids.flatten().tolist()]).reshape(n, 5)
    if variant == "fusionflow":
        assert not np.isin(names, GEOMETRY_OPS).any()
    else:
        assert np.isin(names, GEOMETRY_OPS).any()
    # per layer: the drawn (op, bin) entries follow the layer's probabilities
    index = {
        (int(o), int(m)): j for j, (o, m) in enumerate(zip(data["ops"], data["mags"], strict=True))
    }
    for layer in range(5):
        drawn = [
            index[(o, m)]
            for o, m in zip(rec.op_ids[:, layer].tolist(), rec.bins[:, layer].tolist(), strict=True)
        ]
        counts = np.bincount(drawn, minlength=probs.shape[1])
        p = probs[layer].numpy()
        live = p > 0
        assert counts[~live].sum() == 0
        expected = p[live] * n
        big = expected >= 5  # pool the rare entries into one cell
        obs = np.append(counts[live][big], counts[live][~big].sum())
        exp = np.append(expected[big], expected[~big].sum())
        assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3, layer
    # the mirror sign of geometric ops is a fair coin
    assert abs(float((rec.signs < 0).float().mean()) - 0.5) < 0.01


def _reference(img, name: str, low: float, high: float, mag: int, neg: bool, aux):
    """DeepAA's ``apply_augment`` (its public code's Pillow calls) with our draws."""
    level = np.float32(mag) / float(12)
    v = level * (high - low) + low
    w, h = img.size
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate") and neg:
        v = -v
    if name == "ShearX":
        return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0))
    if name == "ShearY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0))
    if name == "TranslateX":
        return img.transform(img.size, Image.AFFINE, (1, 0, v * w, 0, 1, 0))
    if name == "TranslateY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * h))
    if name == "Rotate":
        return img.rotate(v)
    if name in ("AutoContrast", "Invert", "Equalize"):
        return getattr(ImageOps, name.lower())(img)
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    if name == "Posterize":
        return ImageOps.posterize(img, max(1, int(v)))
    if name in ("Contrast", "Color", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(v)
    if name == "RandFlip":
        return ImageOps.mirror(img) if aux[0] > 0.5 else img
    if name in ("RandCutout", "RandCutout60"):
        size = 16 if name == "RandCutout" else 60
        lx, hx, ly, hy = 0, w, 0, h
        if size == 60:
            lx, hx = max(0, w // 2 - 128), min(w, w // 2 + 128)
            ly, hy = max(0, h // 2 - 128), min(h, h // 2 + 128)
        x, y = lx + (hx - lx) * aux[0], ly + (hy - ly) * aux[1]
        box = (
            int(min(w, max(0, x - size // 2))),
            int(min(h, max(0, y - size // 2))),
            int(min(w, max(0, x + size // 2))),
            int(min(h, max(0, y + size // 2))),
        )
        img = img.copy()
        ImageDraw.Draw(img).rectangle(box, (125, 123, 114))
        return img
    if name == "RandCrop":
        padded = Image.new("RGB", (w + 8, h + 8), color=(125, 123, 114))
        padded.paste(img, (4, 4))
        top, left = int(aux[0] * 9), int(aux[1] * 9)
        return padded.crop((left, top, left + w, top + h))
    if name == "RandResizeCrop_imagenet":
        from ff_lightning.augment.deepaa import _resized_crop_box

        x0, y0, bw, bh = _resized_crop_box(aux, w, h)
        return img.transform(img.size, Image.EXTENT, (x0, y0, x0 + bw, y0 + bh), Image.BICUBIC)
    return img


@pytest.mark.parametrize("ops", [IMAGENET_OPS, IMAGENET_OPS[:15] + CIFAR_EXTRA])
def test_every_op_matches_pillow(tmp_path, ops):
    ent = entries(ops)
    per_op = np.bincount([o for o, _ in ent])
    probs = np.array([[1.0 / (len(ops) * per_op[o]) for o, _ in ent]] * 2, np.float32)
    pol = DeepAA(write_policy(tmp_path / "p.npz", op_list=ops, policy_probs=probs), "paper")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (300, 3, 36, 44), dtype=torch.uint8, generator=g)
    x[::2] = x[::2] // 3 + 60
    rec = pol.sample(torch.arange(len(x)), 1, 2)
    got = pol.apply_batch(x, rec)
    seen = set()
    for i in range(len(x)):
        img = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        for k in range(2):
            name, low, high = pol.op_table[int(rec.op_ids[i, k])]
            seen.add(name)
            aux = rec.aux[i, 4 * k : 4 * k + 4].tolist()
            neg = bool(rec.signs[i, k] < 0)
            img = _reference(img, name, low, high, int(rec.bins[i, k]), neg, aux)
        ref = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        mad = float((got[i].int() - ref.int()).abs().float().mean())
        assert mad <= 2.0, (i, [pol.op_table[int(j)][0] for j in rec.op_ids[i]], mad)
    assert seen == {n for n, _, _ in ops}


@pytest.mark.parametrize("variant", ["fusionflow", "paper"])
def test_routes_are_bit_identical(policy_file, variant):
    pol = DeepAA(policy_file, variant)
    x = torch.randint(0, 256, (10, 3, 40, 40), dtype=torch.uint8)
    rec = pol.sample(torch.arange(50, 60), 0, 0)
    assert isinstance(rec, OpRecord) and rec.aux.shape == (10, 20)
    whole = pol.apply_batch(x, rec)
    assert torch.equal(whole, torch.stack([pol.apply_one(x[i], rec[i]) for i in range(10)]))
    half = torch.arange(10) % 2 == 0
    mixed = x.clone()
    mixed[half] = pol.apply_batch(x[half], rec[half])
    mixed[~half] = pol.apply_batch(x[~half], rec[~half])
    assert torch.equal(mixed, whole)
    with _native.disabled():  # the torch kernels (the device route's) give the same bytes
        assert torch.equal(pol.apply_batch(x, rec), whole)
    assert rec[3].equal(pol.sample([53], 0, 0))
    assert pol.estimate_cost(rec).shape == (10,)


# ---------------------------------------------------------------- bad files
def _bad(tmp_path, **override):
    return write_policy(tmp_path / "bad.npz", **override)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"policy_probs": None}, r"`policy_probs` must be present"),
        (
            {"policy_probs": np.ones(139, np.float32)},
            r"`policy_probs` must be a float array \[layers, entries\]",
        ),
        (
            {"policy_probs": np.full((5, 10), 0.1, np.float32)},
            r"`ops` must be integers shaped \[10\]",
        ),
        (
            {"policy_probs": np.full((5, 139), 0.5, np.float32)},
            r"`policy_probs` must be rows that sum to 1, got layer 0 sums to 69.5",
        ),
        ({"ops": np.zeros((139, 1), np.float32)}, r"`ops` must be integers"),
        ({"ops": np.full((139, 1), 18, np.int32)}, r"`ops` must be op indices in \[0, 17\]"),
        ({"mags": np.full((139, 1), 13, np.int32)}, r"`mags` must be bins in \[0, 12\]"),
        ({"l_ops": 17}, r"`op_names` must be 17 strings"),
        ({"l_mags": 1}, r"`l_mags` must be an integer >= 2"),
    ],
)
def test_bad_arrays(tmp_path, override, match):
    path = _bad(tmp_path, **override)
    with pytest.raises(ConfigError, match=match) as err:
        DeepAA(path)
    assert "bad.npz" in str(err.value)


def test_bad_probabilities_and_names(tmp_path):
    probs = np.random.default_rng(0).random((5, 139)).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)
    probs[2, 0] = -probs[2, 0]
    with pytest.raises(ConfigError, match="`policy_probs` must be finite and non-negative"):
        DeepAA(_bad(tmp_path, policy_probs=probs))
    names = [f"{n}:({lo},,{hi}" for n, lo, hi in IMAGENET_OPS]
    names[3] = "Blur:(0.0,,1.0"
    with pytest.raises(ConfigError, match=r"`op_names` must be DeepAA ops .*got unknown op 'Blur'"):
        DeepAA(_bad(tmp_path, op_names=np.array(names)))
    names[3] = "TranslateX[-0.45, 0.45]"
    with pytest.raises(ConfigError, match=r"entries like 'ShearX:\(-0.3,,0.3\)'"):
        DeepAA(_bad(tmp_path, op_names=np.array(names)))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="`policy_file` must be an existing DeepAA .npz file"):
        DeepAA(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="is not a readable .npz file"):
        DeepAA(junk)


def test_fusionflow_layer_of_only_geometry_is_an_error(tmp_path):
    ops = [("Identity", 0.0, 1.0), ("RandFlip", 0.0, 1.0)]
    path = write_policy(
        tmp_path / "geo.npz",
        op_list=ops,
        layers=1,
        policy_probs=np.array([[0.0, 1.0]], np.float32),
    )
    with pytest.raises(ConfigError, match="layer 0 has no probability left"):
        DeepAA(path, "fusionflow")
    assert DeepAA(path, "paper").num_slots == 1


def test_variant_and_stream_errors(policy_file):
    with pytest.raises(
        ConfigError, match=r"`variant` must be one of \('fusionflow', 'paper'\), got 'full'"
    ):
        build_policy("deepaa", policy_file=str(policy_file), variant="full")
    with pytest.raises(ConfigError, match="`stream`"):
        DeepAA(policy_file, stream=2)
    with pytest.raises(TypeError):
        build_policy("deepaa")  # the policy file is required
