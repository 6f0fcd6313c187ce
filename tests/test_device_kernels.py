"""The accelerator formulations of the kernels, checked for values on the CPU.

Off the CPU some kernels take other (fewer) torch ops for the same values: direct float ->
uint8 stores, Sharpness's box sum by pooling, Solarize by ``ge``, histograms by
``index_add_``, nearest warps and shifts gathered through indices cached on the device. Here
the kernel table for an accelerator (``kernels_for("meta")``: the torch kernels every device
without its own gets) runs on CPU tensors with the CPU formulations switched off, and every op
must give the CPU route's bytes.
"""

from __future__ import annotations

import pytest
import torch

from ff_lightning.augment import _color, _gather, _native, build_policy
from ff_lightning.augment.dispatch import kernels_for
from ff_lightning.augment.functional import OPS, _apply_grouped, _context, apply_op
from ff_lightning.augment.registry import _Ctx


def _images(b: int, h: int, w: int, seed: int, ch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, ch, h, w), dtype=torch.uint8, generator=g)
    x[0] = x[0] // 3 + 60  # narrow range: AutoContrast and Equalize do something
    x[1, :, : h // 2] = 255
    return x


def _device_ctx(x: torch.Tensor, interpolation: str = "nearest", fill=(10, 200, 30)) -> _Ctx:
    ctx = _context(x, interpolation, list(fill) if x.shape[1] == 3 else fill[0])
    return _Ctx(
        ctx.height, ctx.width, ctx.channels, ctx.interpolation, ctx.fill, kernels_for("meta")
    )


@pytest.fixture
def accelerator_formulations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_color, "_cpu", lambda t: False)
    _gather.DEVICE_INDEX_CACHE.clear()
    yield
    _gather.DEVICE_INDEX_CACHE.clear()


MAGS = {
    "ShearX": [0.3, -0.2, 0.3, 0.0, 0.9, -0.3],
    "ShearY": [-0.25, 0.3, -0.25, 0.1, 0.5, 0.3],
    "Rotate": [30.0, -12.5, 30.0, 90.0, 181.0, -30.0],
    "TranslateX": [5.0, -7.9, 5.0, 40.0, -3.0, 0.0],
    "TranslateY": [-4.0, 6.0, 13.0, -4.0, 2.5, -60.0],
}


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize(("shape", "seed"), [((6, 3, 37, 45), 1), ((6, 1, 24, 19), 2)])
@pytest.mark.parametrize("op", OPS)
def test_every_op_gives_the_cpu_bytes(
    accelerator_formulations: None, op: str, shape: tuple, seed: int, interpolation: str
) -> None:
    x = _images(shape[0], shape[2], shape[3], seed, shape[1])
    m = torch.tensor(MAGS.get(op, [0.4, -0.6, 0.9, 0.2, -0.3, 0.0]), dtype=torch.float64)
    if op == "Posterize":
        m = torch.tensor([1.0, 3.0, 4.0, 8.0, 0.0, 6.0], dtype=torch.float64)
    if op == "Solarize":
        m = torch.tensor([0.5, 0.1, 1.0, 0.0, 0.7, 1.2], dtype=torch.float64)
    fill = (10, 200, 30)
    fill_arg = list(fill) if shape[1] == 3 else fill[0]
    with _native.disabled():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_color, "_cpu", lambda t: True)
            expected = apply_op(x, op, m, interpolation=interpolation, fill=fill_arg)
    ctx = _device_ctx(x, interpolation, fill)
    ids = torch.zeros(len(m), dtype=torch.int64)
    for _ in range(2):  # the second call hits the device caches
        got = _apply_grouped(x, ids, m, (op,), ctx, torch.empty_like(x))
        assert torch.equal(got, expected), op


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment", "augmix"])
def test_policies_give_the_cpu_bytes_on_subsets_and_in_place(
    accelerator_formulations: None, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = build_policy(name)
    x = _images(24, 33, 29, seed=5)
    params = policy.sample(torch.arange(24), 3, 7)
    with _native.disabled():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_color, "_cpu", lambda t: True)
            expected = policy.apply_batch(x, params)
    # Every kernel call of the policy resolves the accelerator's table.
    from ff_lightning.augment import functional

    real = functional._context
    monkeypatch.setattr(functional, "_context", lambda *a: _device_ctx_of(real(*a)))
    assert torch.equal(policy.apply_batch(x, params), expected)
    assert torch.equal(policy.apply_batch(x, params), expected)  # warm caches


def _device_ctx_of(ctx: _Ctx) -> _Ctx:
    return _Ctx(
        ctx.height, ctx.width, ctx.channels, ctx.interpolation, ctx.fill, kernels_for("meta")
    )


def test_the_device_index_cache_computes_each_key_once_and_is_bounded() -> None:
    cache = _gather.DeviceIndexCache(max_bytes=3 * 10 * 8)  # three indices of 10 pixels
    computed: list[list[int]] = []

    def compute(positions: list[int]) -> torch.Tensor:
        computed.append(positions)
        return torch.stack([torch.full((10,), keys[j], dtype=torch.int64) for j in positions])

    keys = [5, 7, 5, 9, 7]
    rows = cache.rows(keys, torch.device("cpu"), compute)
    assert computed == [[0, 1, 3]]
    assert torch.equal(rows[:, 0], torch.tensor(keys))
    again = cache.rows([9, 9, 9], torch.device("cpu"), compute)
    assert computed == [[0, 1, 3]] and again.shape == (3, 10) and again.stride(0) == 0
    cache.rows([1], torch.device("cpu"), compute)  # a fourth key evicts the oldest (5)
    assert computed[-1] == [0] and cache._bytes <= cache.max_bytes
    cache.rows([5], torch.device("cpu"), compute)
    assert len(computed) == 3 and cache.misses == 5


def test_contrast_mean_is_the_sum_divided_once() -> None:
    """Contrast's mean is the float32 sum divided by the count, as CPU's ``mean``; CUDA's
    ``mean`` multiplies by ``fl(1 / N)`` instead. For a 224 x 224 image whose floored luma sums
    to 3,299,073 the two differ by one ulp, and at factor 1.8 that moves five table entries
    by one level. The kernels write the division on every device, so both routes agree."""
    n = 224 * 224
    x = torch.full((1, 1, 224, 224), 65, dtype=torch.uint8)
    x.view(-1)[: 3_299_073 - 65 * n] = 66  # one channel: the luma is the image
    stats = _color.TableStats(1, 1, n, x.device, lambda: x, lambda: None)
    total = torch.tensor([3_299_073.0])
    divided, multiplied = total / n, total * torch.tensor(1.0 / n, dtype=torch.float32)
    assert not torch.equal(divided, multiplied)  # the two forms differ here
    assert torch.equal(stats.luma_mean(), divided)
    assert torch.equal(stats.luma_mean(), _color._grayscale(x).mean(dim=(1, 2, 3)))
    factor, alpha = torch.tensor([1.8]), torch.tensor([1.0 - 1.8], dtype=torch.float32)
    ours = _color.contrast_lut(stats, factor, alpha)

    class Reciprocal(_color.TableStats):
        def luma_mean(self) -> torch.Tensor:
            return multiplied

    theirs = _color.contrast_lut(
        Reciprocal(1, 1, n, x.device, lambda: x, lambda: None), factor, alpha
    )
    assert int((ours != theirs).sum()) == 5
    with _native.disabled():
        out = apply_op(x, "Contrast", 0.8)
    from torchvision.transforms.v2 import functional as F

    assert torch.equal(out[0], F.adjust_contrast(x[0], 1.8))


def test_sharpness_in_place_writes_no_border_and_keeps_it() -> None:
    x = _images(3, 20, 18, seed=4)
    alpha = torch.tensor([0.5, -1.0, 0.9])
    expected = _color.sharpness(x, alpha, torch.empty_like(x))
    y = x.clone()
    _color.sharpness(y, alpha, y)
    assert torch.equal(y, expected)
    assert torch.equal(y[..., 0, :], x[..., 0, :]) and torch.equal(y[..., :, -1], x[..., :, -1])
