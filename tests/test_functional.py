"""Tests of the batched per-sample kernels in ``ff_lightning.augment.functional``.

The reference is torchvision's v2 functional API applied to one image at a time, with the
magnitude converted exactly as torchvision's auto-augment transforms convert it
(``_AutoAugmentBase._apply_image_or_video_transform``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import v2

import ff_lightning.augment.groups as groups
import ff_lightning.augment.runners as runners
from ff_lightning.augment import _native
from ff_lightning.augment.functional import OPS, _context, apply_op, apply_ops_grouped
from ff_lightning.augment.registry import REGISTRY

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED = GEOMETRIC + ("Brightness", "Color", "Contrast", "Sharpness")
NO_MAGNITUDE = ("Identity", "AutoContrast", "Equalize", "Invert")
H, W = 32, 40  # non-square on purpose

# A magnitude at which the op is exactly the identity; None: the op has no magnitude and
# is never the identity. Solarize above 1 puts the threshold above 255 (torchvision only
# allows up to 1, where pixels equal to 255 are still inverted).
NOOP_MAGNITUDE = {
    "Identity": 0.0,
    **dict.fromkeys(GEOMETRIC, 0.0),
    "Brightness": 0.0,
    "Color": 0.0,
    "Contrast": 0.0,
    "Sharpness": 0.0,
    "Posterize": 8.0,
    "Solarize": 1.5,
    "AutoContrast": None,
    "Equalize": None,
    "Invert": None,
}
# A magnitude at which every op changes a typical image.
SOME_MAGNITUDE = {
    **dict.fromkeys(OPS, 0.0),
    "ShearX": 0.3,
    "ShearY": -0.2,
    "TranslateX": 7.0,
    "TranslateY": -5.0,
    "Rotate": 25.0,
    "Brightness": 0.5,
    "Color": -0.6,
    "Contrast": 0.7,
    "Sharpness": 0.9,
    "Posterize": 3.0,
    "Solarize": 0.4,
}


# --------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("single_thread")


def tv_reference(
    image: torch.Tensor, op: str, magnitude: float, interpolation: str = "nearest", fill=None
) -> torch.Tensor:
    """torchvision v2 on one ``[3, H, W]`` image, converting the magnitude like auto-augment."""
    m = float(magnitude)
    if op == "Identity":
        return image
    if op in ("ShearX", "ShearY"):
        shear = [math.degrees(math.atan(m)), 0.0]
        if op == "ShearY":
            shear.reverse()
        return F.affine(
            image,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=shear,
            interpolation=interpolation,
            fill=fill,
            center=[0, 0],
        )
    if op in ("TranslateX", "TranslateY"):
        translate = [int(m), 0] if op == "TranslateX" else [0, int(m)]
        return F.affine(
            image,
            angle=0.0,
            translate=translate,
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=interpolation,
            fill=fill,
        )
    if op == "Rotate":
        return F.rotate(image, angle=m, interpolation=interpolation, fill=fill)
    if op == "Brightness":
        return F.adjust_brightness(image, brightness_factor=1.0 + m)
    if op == "Color":
        return F.adjust_saturation(image, saturation_factor=1.0 + m)
    if op == "Contrast":
        return F.adjust_contrast(image, contrast_factor=1.0 + m)
    if op == "Sharpness":
        return F.adjust_sharpness(image, sharpness_factor=1.0 + m)
    if op == "Posterize":
        return F.posterize(image, bits=int(m))
    if op == "Solarize":
        return F.solarize(image, threshold=255.0 * m)
    if op == "AutoContrast":
        return F.autocontrast(image)
    if op == "Equalize":
        return F.equalize(image)
    assert op == "Invert"
    return F.invert(image)


def policy_magnitudes(op: str, height: int = H, width: int = W) -> torch.Tensor:
    """Every magnitude torchvision's RandAugment (31 bins), TrivialAugmentWide and
    AutoAugment (10 bins) can pass for ``op``, both signs where signed (float32, as theirs)."""

    def lin(hi: float, bins: int, lo: float = 0.0) -> torch.Tensor:
        return torch.linspace(lo, hi, bins)

    def bits(top: int, span: int, bins: int) -> torch.Tensor:
        return (top - torch.arange(bins) / ((bins - 1) / span)).round().float()

    tables = {
        "ShearX": [lin(0.3, 31), lin(0.99, 31), lin(0.3, 10)],
        "TranslateX": [lin(150.0 / 331.0 * width, 31), lin(32.0, 31), lin(150 / 331 * width, 10)],
        "TranslateY": [lin(150.0 / 331.0 * height, 31), lin(32.0, 31)],
        "Rotate": [lin(30.0, 31), lin(135.0, 31)],
        "Brightness": [lin(0.9, 31), lin(0.99, 31)],
        "Posterize": [bits(8, 4, 31), bits(8, 6, 31), bits(4, 4, 31)],
        "Solarize": [lin(0.0, 31, lo=1.0), lin(0.0, 10, lo=1.0)],
    }
    tables["ShearY"] = tables["ShearX"]
    for name in ("Color", "Contrast", "Sharpness"):
        tables[name] = tables["Brightness"]
    if op not in tables:
        return torch.zeros(4)
    values = torch.cat(tables[op]).unique()
    return torch.cat([values, -values[values > 0]]) if op in SIGNED else values


def make_images(batch: int, seed: int, height: int = H, width: int = W) -> torch.Tensor:
    """A mix of noise, gradients, blurred noise, flat and few-valued uint8 images."""
    g = torch.Generator().manual_seed(seed)
    kinds = []
    noise = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    kinds.append(noise)
    yy = torch.linspace(0, 1, height).view(1, height, 1)
    xx = torch.linspace(0, 1, width).view(1, 1, width)
    ramp = torch.stack([yy * 0 + xx, yy + xx * 0, (yy + xx) / 2]).squeeze(1)
    kinds.append((40 + 150 * ramp).round().to(torch.uint8))  # narrow range: autocontrast work
    blurred = torch.nn.functional.avg_pool2d(
        torch.randint(0, 256, (1, 3, height + 4, width + 4), generator=g).float(), 5, 1
    )
    kinds.append(blurred[0].round().to(torch.uint8))
    flat = torch.full((3, height, width), 77, dtype=torch.uint8)
    flat[1] = 200
    kinds.append(flat)  # a single value per channel: equalize/autocontrast leave it
    few = torch.randint(0, 4, (3, height, width), generator=g, dtype=torch.uint8) * 60 + 10
    kinds.append(few)
    return torch.stack([kinds[i % len(kinds)] for i in range(batch)])


def differences(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(mean absolute difference, fraction of pixels more than 2 levels off) of one image."""
    diff = (out.to(torch.int16) - ref.to(torch.int16)).abs()
    return diff.float().mean().item(), (diff > 2).float().mean().item()


def assert_close_to_reference(out, images, op, mags, interpolation="nearest", fill=None):
    """Every sample within 1 level on average and with at most 2% of pixels > 2 levels off."""
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(images.shape[0]):
        ref = tv_reference(images[i], op, float(mags[i]), interpolation, fill)
        mad, frac = differences(out[i], ref)
        assert mad <= 1.0 and frac <= 0.02, (
            f"{op} m={float(mags[i])!r} sample {i}: mean abs diff {mad:.3f}, "
            f"{frac:.2%} of pixels > 2 levels off"
        )


# --------------------------------------------------------------------------- contract


class TestOpContract:
    """The same checks for every op."""

    @pytest.mark.parametrize("op", OPS)
    @pytest.mark.parametrize("batch", [1, 3, 8])
    def test_shape_dtype_device(self, op: str, batch: int) -> None:
        images = make_images(batch, seed=1)
        mags = torch.full((batch,), SOME_MAGNITUDE[op])
        out = apply_op(images, op, mags)
        assert out.shape == images.shape
        assert out.dtype == torch.uint8
        assert out.device == images.device
        assert out.is_contiguous()
        assert out.data_ptr() != images.data_ptr()

    @pytest.mark.parametrize("op", [op for op in OPS if NOOP_MAGNITUDE[op] is not None])
    def test_noop_magnitude_is_identity(self, op: str) -> None:
        images = make_images(6, seed=2)
        out = apply_op(images, op, torch.full((6,), NOOP_MAGNITUDE[op]))
        assert torch.equal(out, images)
        out[0, 0, 0, 0] += 1  # the output never aliases the input
        assert not torch.equal(out, images)

    @pytest.mark.parametrize("op", NO_MAGNITUDE)
    def test_magnitude_ignored_by_ops_without_one(self, op: str) -> None:
        images = make_images(5, seed=2)
        expected = apply_op(images, op, 0.0)
        assert torch.equal(
            apply_op(images, op, torch.tensor([-3.0, 0.5, 1.0, 9.0, 30.0])), expected
        )

    @pytest.mark.parametrize("op", OPS)
    def test_batch_of_one(self, op: str) -> None:
        images = make_images(2, seed=3)[1:]
        mags = torch.tensor([SOME_MAGNITUDE[op]])
        out = apply_op(images, op, mags)
        assert out.shape == (1, 3, H, W)
        assert_close_to_reference(out, images, op, mags)

    @pytest.mark.parametrize("op", OPS)
    def test_empty_batch(self, op: str) -> None:
        images = torch.empty(0, 3, H, W, dtype=torch.uint8)
        out = apply_op(images, op, torch.empty(0))
        assert out.shape == (0, 3, H, W) and out.dtype == torch.uint8

    @pytest.mark.parametrize("op", OPS)
    def test_non_contiguous_input(self, op: str) -> None:
        base = make_images(4, seed=4, height=H + 4, width=W + 6)
        sliced = base[:, :, 2 : 2 + H, 3 : 3 + W]  # a strided view
        channels_last = make_images(4, seed=5).contiguous(memory_format=torch.channels_last)
        for images in (sliced, channels_last):
            assert not images.is_contiguous()
            mags = torch.full((4,), SOME_MAGNITUDE[op])
            out = apply_op(images, op, mags)
            expected = apply_op(images.contiguous(), op, mags)
            assert torch.equal(out, expected)

    @pytest.mark.parametrize("op", OPS)
    def test_scalar_magnitude_broadcasts(self, op: str) -> None:
        images = make_images(3, seed=6)
        value = SOME_MAGNITUDE[op]  # a Python float: compare with float64 magnitudes
        expected = apply_op(images, op, torch.full((3,), value, dtype=torch.float64))
        assert torch.equal(apply_op(images, op, value), expected)
        assert torch.equal(apply_op(images, op, torch.tensor(value, dtype=torch.float64)), expected)

    @pytest.mark.parametrize("op", OPS)
    def test_each_sample_gets_its_own_magnitude(self, op: str) -> None:
        mags = policy_magnitudes(op)
        images = make_images(len(mags), seed=7)
        out = apply_op(images, op, mags)
        for i in range(0, len(mags), 7):
            assert torch.equal(out[i : i + 1], apply_op(images[i : i + 1], op, mags[i : i + 1]))


# --------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("size", [(H, W), (37, 29)])
def test_matches_torchvision_over_policy_magnitudes(op: str, size: tuple[int, int]) -> None:
    mags = policy_magnitudes(op, *size)
    images = make_images(len(mags), seed=11, height=size[0], width=size[1])
    out = apply_op(images, op, mags)
    assert_close_to_reference(out, images, op, mags)


@pytest.mark.parametrize("op", GEOMETRIC)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("fill", [None, 0, 128.4, (10, 200, 30)])
def test_geometric_interpolation_and_fill_match_torchvision(op, interpolation, fill) -> None:
    # fill=None and fill=0 differ for bilinear in torchvision (the mask blend); both match.
    mags = policy_magnitudes(op)[::3]
    images = make_images(len(mags), seed=12)
    out = apply_op(images, op, mags, interpolation=interpolation, fill=fill)
    ref_fill = list(fill) if isinstance(fill, tuple) else fill
    assert_close_to_reference(out, images, op, mags, interpolation, ref_fill)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotate_right_angles_match_torchvision_fast_paths(interpolation: str) -> None:
    # torchvision returns rot90/clone for these angles; the generic warp must agree.
    mags = torch.tensor([0.0, 90.0, 180.0, 270.0, 360.0, -90.0, -180.0, 450.0])
    images = make_images(len(mags), seed=13, height=24, width=24)
    out = apply_op(images, "Rotate", mags, interpolation=interpolation)
    assert_close_to_reference(out, images, "Rotate", mags, interpolation)


def test_reference_conversion_matches_torchvision_auto_augment() -> None:
    """``tv_reference`` converts magnitudes exactly like torchvision's auto-augment."""
    transform = v2.RandAugment()
    apply = getattr(transform, "_apply_image_or_video_transform", None)
    if apply is None:
        pytest.skip("this torchvision has no _apply_image_or_video_transform")
    images = make_images(5, seed=14)
    for op in OPS:
        for i, m in enumerate(policy_magnitudes(op)[::5].tolist()):
            img = images[i % 5]
            expected = apply(img, op, m, interpolation="nearest", fill={"others": None})
            assert torch.equal(tv_reference(img, op, m), expected), (op, m)


def test_chunked_cpu_path_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # The torch kernels' CPU chunks (the native loops have none): chunks of 3 images.
    images = make_images(10, seed=15)
    whole = {op: apply_op(images, op, SOME_MAGNITUDE[op]) for op in OPS}
    monkeypatch.setitem(_native._state, "off", True)
    monkeypatch.setattr(runners, "_CPU_CHUNK_ELEMENTS", 3 * H * W * 3)
    for op in OPS:
        assert torch.equal(apply_op(images, op, SOME_MAGNITUDE[op]), whole[op]), op


def test_chunked_lookup_tables_match_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every table-mapped op in one slot, chunks of 3 images cutting across the ops' spans
    # (torch's chunked lookup: the native loop has no chunks).
    monkeypatch.setitem(_native._state, "off", True)
    lut_ops = [op for op in OPS if REGISTRY[op].lut is not None and REGISTRY[op].run is None]
    batch = 17
    ids = torch.arange(batch) % len(lut_ops)
    mags = torch.tensor([float(SOME_MAGNITUDE[lut_ops[k]]) for k in ids.tolist()])
    images = make_images(batch, seed=18)
    whole = apply_ops_grouped(images, ids, mags, lut_ops)
    single = {op: apply_op(images, op, SOME_MAGNITUDE[op]) for op in lut_ops}
    monkeypatch.setattr(groups, "LUT_CHUNK_ELEMENTS", 3 * H * W * 3)
    assert torch.equal(apply_ops_grouped(images, ids, mags, lut_ops), whole)
    for op in lut_ops:
        assert torch.equal(apply_op(images, op, SOME_MAGNITUDE[op]), single[op]), op
    for i, k in enumerate(ids.tolist()):
        assert torch.equal(whole[i], single[lut_ops[k]][i]), (i, lut_ops[k])


@pytest.mark.parametrize("native", [True, False])
def test_a_slot_groups_ops_by_kernel(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # 14 ops in one slot, torch kernels: one table group (3 ops), one affine (3), one shift (2),
    # and the six direct kernels: 9 groups. Native loops: every op with a table (7) in one
    # group, affine, shift, Color, Sharpness: 5. Every sample is covered but the Identity ones.
    if native and _native.lib() is None:
        pytest.skip("native kernels unavailable here")
    monkeypatch.setitem(_native._state, "off", not native)
    ids = torch.arange(2 * len(OPS)) % len(OPS)
    mags = torch.tensor([float(SOME_MAGNITUDE[OPS[k]]) for k in ids.tolist()], dtype=torch.float64)
    ctx = _context(make_images(1, seed=0), "nearest", 0)
    assert ctx.native is native
    planned = groups.plan_groups(ids, mags, OPS, ctx)
    covered = sorted(i for g in planned for i in g.idx.tolist())
    assert len(planned) == (5 if native else 9)
    assert covered == [i for i, k in enumerate(ids.tolist()) if OPS[k] != "Identity"]


def test_nearest_index_cache_is_bounded_and_exact() -> None:
    from ff_lightning.augment import _geometry

    cache = _geometry._IndexCache(max_bytes=3 * 20 * 24 * 8)  # three 20x24 indices
    shears = torch.linspace(-0.3, 0.3, 5, dtype=torch.float64)
    zeros = torch.zeros_like(shears)
    matrix = _geometry.inverse_affine(
        zeros, _geometry.degrees(_geometry.atan(shears)), zeros, -12.0, -10.0
    )
    factors = _geometry.grid_factors(matrix, 20, 24)
    fresh = [
        _geometry.source_index(_geometry.grid(*_geometry.grid_terms(f[None], 20, 24)), 20, 24)
        for f in factors
    ]
    for _ in range(2):
        for f, expected in zip(factors, fresh, strict=True):
            assert torch.equal(cache.get(f, 20, 24), expected)
    assert cache._bytes <= cache.max_bytes and len(cache._entries) == 3
    assert cache.get(factors[4], 20, 24) is cache.get(factors[4], 20, 24)  # a hit


def test_nearest_index_fallback_for_huge_images(monkeypatch: pytest.MonkeyPatch) -> None:
    # Beyond 2**24 pixels the flat index is not exact in float32; rows and columns are
    # then sampled separately. Force that path on small images: same result.
    from ff_lightning.augment import _geometry

    images = make_images(6, seed=26)
    mags = {"Rotate": torch.tensor([-30.0, 10.0, 45.0, 90.0, 135.0, 7.5]), "ShearY": 0.3}
    expected = {op: apply_op(images, op, m, fill=(1, 2, 3)) for op, m in mags.items()}
    monkeypatch.setattr(_geometry, "_FLOAT32_EXACT_INT", 1)
    _geometry.INDEX_CACHE.clear()  # recompute: the cached indices came from the other path
    for op, m in mags.items():
        assert torch.equal(apply_op(images, op, m, fill=(1, 2, 3)), expected[op]), op


@pytest.mark.parametrize("op", ["Rotate", "Brightness", "TranslateY"])
def test_mostly_noop_magnitudes(op: str) -> None:
    # Few active samples take the subset path; it must give the same per-sample results.
    mags = torch.zeros(9)
    mags[[2, 7]] = SOME_MAGNITUDE[op]
    images = make_images(9, seed=16)
    out = apply_op(images, op, mags)
    assert torch.equal(out[mags == 0], images[mags == 0])
    assert_close_to_reference(out, images, op, mags)


def test_out_of_range_magnitudes_are_clamped() -> None:
    images = make_images(2, seed=17)
    assert torch.equal(apply_op(images, "Posterize", 11.0), images)
    assert torch.equal(apply_op(images, "Posterize", -2.0), torch.zeros_like(images))
    assert torch.equal(apply_op(images, "Brightness", -1.5), torch.zeros_like(images))
    assert torch.equal(apply_op(images, "Solarize", -0.5), 255 - images)


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument_and_echo_the_value() -> None:
    images = make_images(2, seed=18)
    with pytest.raises(ValueError, match=r"`op` must be one of \('Identity'.*got 'Foo'"):
        apply_op(images, "Foo", 0.0)
    with pytest.raises(TypeError, match=r"`images` must have dtype torch.uint8, got torch.float32"):
        apply_op(images.float(), "Invert", 0.0)
    with pytest.raises(TypeError, match=r"`images` must be a torch.Tensor, got list"):
        apply_op([1, 2], "Invert", 0.0)
    with pytest.raises(
        ValueError,
        match=r"`images` must have shape \[B, C, H, W\] with C = 1 or 3, got \[3, 32, 40\]",
    ):
        apply_op(images[0], "Invert", 0.0)
    with pytest.raises(
        ValueError,
        match=r"`images` must have shape \[B, C, H, W\] with C = 1 or 3, got \[2, 2, 32, 40\]",
    ):
        apply_op(images[:, :2], "Invert", 0.0)  # one channel is fine now, two is not
    with pytest.raises(ValueError, match=r"`magnitude` must have shape \[B\] with B=2.*got \[3\]"):
        apply_op(images, "Rotate", torch.zeros(3))
    with pytest.raises(
        ValueError, match=r"`magnitude` must have shape \[B\] with B=2.*got \[2, 1\]"
    ):
        apply_op(images, "Rotate", torch.zeros(2, 1))
    with pytest.raises(TypeError, match=r"`magnitude` must be a float tensor.*got str"):
        apply_op(images, "Rotate", "10")
    with pytest.raises(
        ValueError, match=r"`interpolation` must be one of \('nearest', 'bilinear'\), got 'bicubic'"
    ):
        apply_op(images, "Rotate", 10.0, interpolation="bicubic")
    with pytest.raises(
        ValueError, match=r"`fill` must be None, a number or a sequence.*got \(1, 2\)"
    ):
        apply_op(images, "Rotate", 10.0, fill=(1, 2))


def test_interpolation_accepts_torchvision_enum() -> None:
    images = make_images(2, seed=19)
    out = apply_op(images, "Rotate", 20.0, interpolation=v2.InterpolationMode.BILINEAR)
    assert torch.equal(out, apply_op(images, "Rotate", 20.0, interpolation="bilinear"))


def test_grouped_errors() -> None:
    images = make_images(3, seed=20)
    with pytest.raises(ValueError, match=r"`op_ids` must lie in \[0, 1\].*got values in \[0, 2\]"):
        apply_ops_grouped(images, torch.tensor([0, 1, 2]), torch.zeros(3), ["Invert", "Rotate"])
    with pytest.raises(ValueError, match=r"`op_ids` must have shape \[B\] with B=3, got \[2\]"):
        apply_ops_grouped(images, torch.tensor([0, 1]), torch.zeros(3))
    with pytest.raises(
        TypeError,
        match=r"`op_ids` must be an integer tensor of shape \[B\], got dtype torch.float32",
    ):
        apply_ops_grouped(images, torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"`op` must be one of .*got 'Blur'"):
        apply_ops_grouped(images, torch.zeros(3, dtype=torch.long), torch.zeros(3), ["Blur"])


# --------------------------------------------------------------------------- grouped


@pytest.mark.parametrize("op_names", [OPS, ("Rotate", "Identity", "Equalize", "Rotate")])
def test_grouped_matches_per_sample_apply_op(op_names) -> None:
    batch = 40
    g = torch.Generator().manual_seed(21)
    op_ids = torch.randint(0, len(op_names), (batch,), generator=g)
    mags = torch.empty(batch)
    for i, k in enumerate(op_ids.tolist()):
        table = policy_magnitudes(op_names[k])
        mags[i] = table[torch.randint(0, len(table), (1,), generator=g)]
    images = make_images(batch, seed=22)
    out = apply_ops_grouped(
        images, op_ids, mags, op_names, interpolation="bilinear", fill=(5, 6, 7)
    )
    for i, k in enumerate(op_ids.tolist()):
        expected = apply_op(
            images[i : i + 1],
            op_names[k],
            mags[i : i + 1],
            interpolation="bilinear",
            fill=(5, 6, 7),
        )
        assert torch.equal(out[i : i + 1], expected), (i, op_names[k], float(mags[i]))


def test_grouped_single_group_and_empty_batch() -> None:
    images = make_images(4, seed=23)
    ids = torch.full((4,), OPS.index("Solarize"))
    out = apply_ops_grouped(images, ids, torch.full((4,), 0.3))
    assert torch.equal(out, apply_op(images, "Solarize", 0.3))
    empty = torch.empty(0, 3, H, W, dtype=torch.uint8)
    out = apply_ops_grouped(empty, torch.empty(0, dtype=torch.long), torch.empty(0))
    assert out.shape == (0, 3, H, W)


def test_grouped_identity_leaves_samples_untouched() -> None:
    images = make_images(6, seed=24)
    ids = torch.tensor([0, 1, 0, 1, 0, 1])
    out = apply_ops_grouped(images, ids, torch.zeros(6), ["Identity", "Invert"])
    assert torch.equal(out[0::2], images[0::2])
    assert torch.equal(out[1::2], 255 - images[1::2])


# --------------------------------------------------------------------------- devices


@pytest.mark.cuda
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_cuda_matches_cpu(op: str, interpolation: str) -> None:
    mags = policy_magnitudes(op)
    images = make_images(len(mags), seed=25)
    cpu = apply_op(images, op, mags, interpolation=interpolation)
    on_device = apply_op(images.cuda(), op, mags.cuda(), interpolation=interpolation)
    mixed = apply_op(images.cuda(), op, mags, interpolation=interpolation)  # CPU magnitudes
    assert on_device.device.type == "cuda" and mixed.device.type == "cuda"
    for i in range(len(mags)):
        for result in (on_device, mixed):
            mad, frac = differences(result[i].cpu(), cpu[i])
            assert mad <= 1.0 and frac <= 0.02, (op, float(mags[i]), mad, frac)
    assert_close_to_reference(on_device.cpu(), images, op, mags, interpolation)
