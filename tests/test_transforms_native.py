"""The routed transforms' native loops (hue, blur, grayscale) against their torch kernels, bit
for bit: shapes that hit the vector tails, one channel, rows of a batch, in place; and every
transform with the native loops switched off."""

from __future__ import annotations

import pytest
import torch

from ff_lightning.augment import _native
from ff_lightning.augment.transforms import _kernels, _native_ops
from ff_lightning.augment.transforms.blur import blur_taps
from ff_lightning.augment.transforms.pointwise import grayscale
from tests.transforms_cases import ALL, images, policy_chain

needs_native = pytest.mark.skipif(_native.lib() is None, reason="no native kernels here")

SHAPES = [(5, 3, 37, 53), (3, 3, 224, 224), (4, 3, 9, 8), (2, 3, 1, 7), (3, 3, 16, 33)]


def _random(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    x[0, :, : shape[2] // 2] = x[0, :1, : shape[2] // 2]  # grey rows: r == g == b
    return x


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_hue_loop_equals_torch(shape) -> None:
    x = _random(shape, shape[-1])
    factor = torch.linspace(-0.5, 0.5, shape[0])
    ref = _kernels._hue_torch(x, factor)
    out = torch.empty_like(x)
    _native_ops.hue(x, out, factor)
    assert torch.equal(out, ref)
    rows = torch.arange(shape[0] - 1, -1, -2)
    y = x.clone()
    _native_ops.hue(y, y, factor[rows], rows)  # in place, on rows only
    expected = x.clone()
    expected[rows] = ref[rows]
    assert torch.equal(y, expected)


@needs_native
@pytest.mark.parametrize("shape", [s for s in SHAPES if min(s[2:]) > 4] + [(2, 1, 40, 70)])
@pytest.mark.parametrize("k", [(3, 3), (9, 5), (23, 23)])
def test_blur_loop_equals_torch(shape, k) -> None:
    kx, ky = k
    if kx // 2 >= shape[3] or ky // 2 >= shape[2]:
        pytest.skip("kernel larger than the image")
    x = _random(shape, kx)
    sigma = torch.linspace(0.1, 3.0, shape[0])
    tx, ty = blur_taps(kx, sigma), blur_taps(ky, sigma)
    ref = _kernels._blur_torch(x, tx, ty)
    out = torch.empty_like(x)
    _native_ops.blur(x, out, tx, ty)
    assert torch.equal(out, ref)
    y = x.clone()
    _native_ops.blur(y, y, tx, ty)  # in place
    assert torch.equal(y, ref)
    # the torch route skips the edge taps that are zero in every row: the same sums
    assert torch.equal(
        _kernels._blur_torch(x, tx, ty, (_kernels.first_live_tap(tx), _kernels.first_live_tap(ty))),
        ref,
    )


@needs_native
def test_blur_at_the_reflect_limit() -> None:
    x = _random((2, 3, 6, 6), 1)
    taps = blur_taps(11, torch.tensor([5.0, 0.8]))
    ref = _kernels._blur_torch(x, taps, taps)
    out = torch.empty_like(x)
    _native_ops.blur(x, out, taps, taps)
    assert torch.equal(out, ref)


@pytest.mark.skipif(not _native.fused(), reason="native luma needs fused multiply-adds")
@pytest.mark.parametrize("shape", [(4, 3, 37, 53), (2, 3, 1, 5)])
def test_grayscale_loop_equals_torch(shape) -> None:
    x = _random(shape, 3)
    native = grayscale(x.clone())
    with _native.disabled():
        ref = grayscale(x.clone())
    assert torch.equal(native, ref)


@needs_native
@pytest.mark.parametrize("name", [*ALL, "policy-chain"])
def test_every_transform_same_without_native_loops(name: str) -> None:
    t = policy_chain() if name == "policy-chain" else ALL[name]()
    x = images(9, 3, 33, 41, seed=2)
    rec = t.sample(torch.arange(9), 1, 1)
    native = t.apply_batch(x, rec)
    with _native.disabled():
        ref = t.apply_batch(x, rec)
    assert torch.equal(native, ref)
