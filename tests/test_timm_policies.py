"""timm's policies: fidelity to timm's Pillow path per op, route equality, records, AugMix mixing.

Fidelity: for every op, each sample's drawn level, sign, resampling and extra draw are handed to
timm's own ``AugmentOp`` (magnitude forced, its random choices forced to ours) on the Pillow
image; the batched result must be within 2 levels (mean absolute difference) of it.
"""

from __future__ import annotations

import pickle
import random
from unittest import mock

import numpy as np
import pytest
import torch

from ff_lightning.augment import OpRecord, Params, _native, build_policy, policy_from_timm
from ff_lightning.augment.pil_ops import AFFINE_COST, COST
from ff_lightning.augment.timm_ops import TIMM_OPS

taa = pytest.importorskip("timm.data.auto_augment")
Image = pytest.importorskip("PIL.Image")

HP = {"translate_const": 20, "img_mean": (124, 116, 104), "translate_pct": 0.4}


def _images(b: int = 16, h: int = 40, w: int = 52, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w)
    base = 180 * ys + 60 * xs + torch.rand(b, 3, 1, 1, generator=g) * 60
    x = base + torch.randn(b, 3, h, w, generator=g) * 15
    x[::2] = x[::2] * 0.4 + 60
    return x.clamp(0, 255).to(torch.uint8)


def _pil(x: torch.Tensor):
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def _tensor(im) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def timm_apply(img, name: str, level: float, sign: float, resample: int, aux: float, hp):
    """timm's ``AugmentOp`` at magnitude ``level`` with its random draws forced to ours."""
    if name.startswith("Posterize"):
        bits = int(level / 10 * 4)
        bits = {"PosterizeIncreasing": 4 - bits, "PosterizeOriginal": bits + 4}.get(name, bits)
        if bits < 1:  # Pillow 13 raises there; the documented result is black
            return Image.fromarray(np.zeros_like(np.asarray(img)))
    # the level is drawn and clipped already: no noise again (the clip to mmax is a no-op)
    op = taa.AugmentOp(name, prob=1.0, magnitude=level, hparams=dict(hp, magnitude_std=0))
    op.kwargs["resample"] = resample
    draws = [1.0 if sign < 0 else 0.0]  # _randomly_negate: negate when random() > 0.5
    with (
        mock.patch.object(taa.random, "random", side_effect=draws),
        mock.patch.object(taa.random, "uniform", side_effect=lambda a, b: a + (b - a) * aux),
    ):
        return op(img)


def timm_reference(pol, x: torch.Tensor, rec: OpRecord, hp) -> torch.Tensor:
    """Every sample through timm's ops, slot by slot, with the record's draws."""
    out = []
    for i in range(len(x)):
        img = _pil(x[i])
        for k in range(pol.num_slots):
            if rec.applied[i, k]:
                name = pol.op_names[int(rec.op_ids[i, k])]
                args = (float(rec.levels[i, k]), float(rec.signs[i, k]))
                args += (int(rec.resample[i, k]), float(rec.aux[i, k]))
                img = timm_apply(img, name, *args, hp)
        out.append(_tensor(img))
    return torch.stack(out)


def _mad(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.int() - b.int()).abs().flatten(1).float().mean(1)


# ---------------------------------------------------------------- fidelity
@pytest.mark.parametrize("name", list(TIMM_OPS))
def test_each_op_matches_timm(name):
    """One op per image at levels N(7, 3) clipped to [0, 15]: each sample within 2 levels."""
    hp = dict(HP, magnitude_max=15)
    pol = build_policy(
        "timm_randaugment", config="rand-n1-p1.0-m7-mstd3", hparams=hp, transforms=[name]
    )
    x = _images()
    rec = pol.sample(torch.arange(len(x)), 0, 11)
    got = pol.apply_batch(x, rec)
    mad = _mad(got, timm_reference(pol, x, rec, pol.hparams))
    assert (mad <= 2.0).all(), (name, mad)
    assert float(mad.mean()) <= 0.05, (name, mad)  # bit-exact but for rare rounding


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("timm_randaugment", "rand-m9-mstd0.5-inc1"),
        ("timm_randaugment", "rand-m9-n3-mstd101-tweights"),
        ("timm_autoaugment", "original"),
        ("timm_autoaugment", "v0r-mstd0.5"),
        ("timm_autoaugment", "3a"),
    ],
)
def test_policies_match_timm(kind, config):
    pol = build_policy(kind, config=config, hparams=dict(HP))
    x = _images(24)
    rec = pol.sample(torch.arange(len(x)), 2, 5)
    mad = _mad(pol.apply_batch(x, rec), timm_reference(pol, x, rec, pol.hparams))
    assert (mad <= 2.0).all(), mad


@pytest.mark.parametrize(
    "config", ["augmix-m3-w3", "augmix-m5-w4-d2-b1", "augmix-m3-w2-a0.5-mstd0"]
)
def test_augmix_matches_timm_mixing(config):
    hp = dict(HP, translate_pct=0.3)
    pol = build_policy("timm_augmix", config=config, hparams=hp)
    x = _images(8)
    rec = pol.sample(torch.arange(len(x)), 0, 1)
    got = pol.apply_batch(x, rec)
    mixer = taa.AugMixAugment([], alpha=pol.alpha, width=pol.width, depth=pol.depth)
    for i in range(len(x)):
        img = _pil(x[i])
        chains = []
        for c in range(pol.width):
            aug = img
            for s in range(c * pol.max_depth, (c + 1) * pol.max_depth):
                if rec.applied[i, s]:
                    name = pol.op_names[int(rec.op_ids[i, s])]
                    args = (float(rec.levels[i, s]), float(rec.signs[i, s]))
                    aug = timm_apply(aug, name, *args, int(rec.resample[i, s]), 0.0, pol.hparams)
            chains.append(aug)
        mw = rec.weights[i, 1:].numpy()
        m = np.float32(rec.weights[i, 0].item())
        if pol.blended:  # timm's _apply_blended with these chains
            ref = img
            for w, aug in zip(mixer._calc_blended_weights(mw, m), chains, strict=True):
                ref = Image.blend(ref, aug, w)
        else:  # timm's _apply_basic
            mixed = np.zeros_like(np.asarray(img), dtype=np.float32)
            for w, aug in zip(mw, chains, strict=True):
                mixed += w * np.asarray(aug, dtype=np.float32)
            np.clip(mixed, 0, 255.0, out=mixed)
            ref = Image.blend(img, Image.fromarray(mixed.astype(np.uint8)), m)
        assert float(_mad(got[i : i + 1], _tensor(ref)[None])[0]) <= 2.0, i
        assert int((got[i].int() - _tensor(ref).int()).abs().max()) <= 1, i


# ---------------------------------------------------------------- routes
def _policies():
    return [
        build_policy("timm_randaugment", config="rand-m9-mstd0.5-inc1", hparams=dict(HP)),
        build_policy("timm_randaugment", config="rand-n3-m9-mstd1-t3aw", hparams=dict(HP)),
        build_policy("timm_autoaugment", config="v0r-mstd0.5", hparams=dict(HP)),
        build_policy("timm_augmix", config="augmix-m3-w3", hparams=dict(HP)),
        build_policy("timm_augmix", config="augmix-m3-w2-d2-b1", hparams=dict(HP)),
    ]


@pytest.mark.parametrize("index", range(5))
def test_routes_are_bit_identical(index):
    """apply_batch = apply_one per sample = any split into subsets, with and without the native
    loops (CPU), at ratios 0, 0.5 and 1 of a routed batch."""
    pol = _policies()[index]
    x = _images(12)
    rec = pol.sample(torch.arange(100, 112), 3, 1)
    whole = pol.apply_batch(x, rec)
    one = torch.stack([pol.apply_one(x[i], rec[i]) for i in range(len(x))])
    assert torch.equal(whole, one)
    for ratio in (0.0, 0.5, 1.0):
        k = int(round(ratio * len(x)))
        dev = torch.randperm(len(x), generator=torch.Generator().manual_seed(k))[:k]
        mask = torch.zeros(len(x), dtype=torch.bool)
        mask[dev] = True
        mixed = x.clone()
        if (~mask).any():
            mixed[~mask] = pol.apply_batch(x[~mask], rec[~mask])
        if mask.any():
            mixed[mask] = pol.apply_batch(x[mask], rec[mask])
        assert torch.equal(mixed, whole), ratio
    with _native.disabled():
        assert torch.equal(pol.apply_batch(x, rec), whole)


@pytest.mark.parametrize("index", range(5))
def test_sampling_depends_only_on_seed_epoch_index(index):
    pol = _policies()[index]
    rec = pol.sample(torch.tensor([5, 9, 2]), 3, 7)
    assert isinstance(rec, OpRecord) and isinstance(rec, Params) and len(rec) == 3
    assert rec[1].equal(pol.sample(torch.tensor([9]), 3, 7))
    big = pol.sample(torch.arange(1000), 3, 7)
    assert big[torch.tensor([5, 9, 2])].equal(rec)
    assert OpRecord.cat([pol.sample([i], 3, 7) for i in (5, 9, 2)]).equal(rec)
    other = pol.sample(torch.tensor([5, 9, 2]), 4, 7)
    assert not other.equal(rec)
    moved = pol.sample([5, 9, 2], 3, 7)
    assert moved.equal(rec)


def test_stream_changes_the_draws_and_only_them():
    a = build_policy("timm_randaugment", hparams=dict(HP))
    b = build_policy("timm_randaugment", hparams=dict(HP), stream=16)
    ra, rb = a.sample(torch.arange(64), 0, 0), b.sample(torch.arange(64), 0, 0)
    assert not ra.equal(rb)
    x = _images(4)
    assert torch.equal(a.apply_batch(x, rb[:4]), b.apply_batch(x, rb[:4]))


def test_record_protocol_and_pickling():
    pol = _policies()[3]
    rec = pol.sample(torch.arange(6), 0, 0)
    assert rec[torch.tensor([True, False] * 3)].equal(rec[::2])
    assert rec[torch.tensor([4, 1])].equal(OpRecord.cat([rec[4], rec[1]]))
    assert rec.to("cpu") is not None and rec.allclose(pickle.loads(pickle.dumps(rec)))
    assert rec.to("meta").device.type == "meta"
    again = pickle.loads(pickle.dumps(pol))
    x = _images(6)
    assert torch.equal(again.apply_batch(x, rec), pol.apply_batch(x, rec))
    assert repr(again) == repr(pol) == "TimmAugMix(config='augmix-m3-w3', width=3, depth=-1)"
    with pytest.raises(TypeError, match="OpRecord"):
        pol.apply_batch(x, Params.empty(9, 4, 6))
    with pytest.raises(ValueError, match="records for 5 image"):
        pol.apply_batch(x[:5], rec)
    with pytest.raises(ValueError, match="expects"):
        _policies()[0].apply_batch(x, rec)
    with pytest.raises(ValueError, match="uint8 tensor"):
        pol.apply_batch(x.float(), rec)


def test_empty_and_no_op_batches():
    pol = build_policy("timm_randaugment", config="rand-n0")
    x = _images(3)
    rec = pol.sample(torch.arange(3), 0, 0)
    assert rec.num_slots == 0 and torch.equal(pol.apply_batch(x, rec), x)
    ra = build_policy("timm_randaugment", config="rand-p0")  # never applied
    out = ra.apply_batch(x, ra.sample(torch.arange(3), 0, 0))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert ra.apply_batch(x[:0], ra.sample(torch.arange(0), 0, 0)).shape == (0, 3, 40, 52)


def test_estimate_cost_follows_ops_and_resampling():
    pol = build_policy("timm_randaugment", config="rand-n2-p0.7", transforms=["Rotate", "Invert"])
    rec = pol.sample(torch.arange(400), 0, 0)
    per_slot = torch.where(
        rec.op_ids == 0,
        torch.tensor([AFFINE_COST.get(i, 0.0) for i in range(4)])[rec.resample],
        torch.tensor(COST["Invert"]),
    )
    assert torch.equal(pol.estimate_cost(rec), (per_slot * rec.applied).sum(1))
    assert AFFINE_COST[3] > AFFINE_COST[2] > COST["Invert"]  # bicubic warps cost the most


def test_converted_create_transform_applies_like_the_config():
    timm_data = pytest.importorskip("timm.data")
    t = timm_data.create_transform(
        48, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic"
    )
    timm_ra = next(x for x in t.transforms if type(x).__name__ == "RandAugment")
    converted = policy_from_timm(timm_ra)
    hp = {"translate_const": int(48 * 0.45), "img_mean": (124, 116, 104), "interpolation": 3}
    direct = build_policy("timm_randaugment", config="rand-m9-mstd0.5-inc1", hparams=hp)
    assert converted.resample_choices == direct.resample_choices == (3,)
    rec = converted.sample(torch.arange(8), 0, 0)
    assert rec.equal(direct.sample(torch.arange(8), 0, 0))
    x = _images(8)
    assert torch.equal(converted.apply_batch(x, rec), direct.apply_batch(x, rec))
    random.seed(0)  # timm's own transform still runs on the same images (sanity)
    assert timm_ra(_pil(x[0])).size == (52, 40)
