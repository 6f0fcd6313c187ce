"""The augment package's readiness for accelerators, checked on CPU (and on CUDA when present).

- one op registry; warps immune to TF32 matmuls and to an enclosing autocast;
- the device path (exercised on the ``meta`` device) makes one host-to-device copy per op
  slot and never clones the batch; normalize caches its constants;
- RandomErasing's random noise is drawn from a seeded generator (keyed per sample when the
  stage gives dataset indices).
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ff_lightning.augment import (
    RandomErasing,
    _device,
    _geometry,
    batch_ops,
    build_policy,
    normalization,
)
from ff_lightning.augment import functional as functional
from ff_lightning.augment.functional import OPS, REGISTRY, apply_op
from ff_lightning.augment.policies import tv_apply

pytestmark = pytest.mark.usefixtures("single_thread")


def _images(b: int = 6, h: int = 30, w: int = 38, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


class _CountOps(TorchDispatchMode):
    """Counts aten ops that touch a tensor on the ``meta`` device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = tree_flatten((args, kwargs, out))[0]
        if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in flat):
            self.ops[str(func.overloadpacket)] += 1
        return out


# ---------------------------------------------------------------- registry
def test_one_registry_names_kinds_costs_and_references():
    assert OPS == tuple(REGISTRY)
    assert OPS[0] == "Identity" and len(OPS) == 15
    kinds = {name: op.kind for name, op in REGISTRY.items()}
    assert {n for n, k in kinds.items() if k == "geometric"} == {
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
    }
    assert set(kinds.values()) == {"identity", "geometric", "colour"}
    assert REGISTRY["Identity"].cost == 0 and all(op.cost > 0 for op in list(REGISTRY.values())[1:])
    img = _images(1)[0]
    for name in OPS:
        expected = REGISTRY[name].reference(img, 0.3, "nearest", 0)
        assert torch.equal(tv_apply(img, name, 0.3, "nearest", 0), expected), name
    with pytest.raises(ValueError, match="'Blur' is not an auto-augment op"):
        tv_apply(img, "Blur", 0.0, "nearest", 0)
    pol = build_policy("randaugment")
    p = pol.sample(torch.arange(20), 0, 0)
    costs = torch.tensor([REGISTRY[n].cost for n in pol.op_names])
    assert torch.equal(pol.estimate_cost(p), costs[p.op_ids].sum(1))


# ---------------------------------------------------------------- precision immunity
@pytest.mark.parametrize("op", ["Rotate", "ShearX", "ShearY", "TranslateY"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_warps_ignore_autocast_and_matmul_precision(op, interpolation):
    x = _images(8)
    mags = torch.linspace(-0.9, 0.9, 8) * (30.0 if op in ("Rotate", "TranslateY") else 1.0)
    plain = apply_op(x, op, mags, interpolation=interpolation, fill=(10, 20, 30))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        high = apply_op(x, op, mags, interpolation=interpolation, fill=(10, 20, 30))
    finally:
        torch.set_float32_matmul_precision(before)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = apply_op(x, op, mags, interpolation=interpolation, fill=(10, 20, 30))
    assert torch.equal(high, plain) and torch.equal(auto, plain)


def test_grid_is_float32_under_autocast():
    m = torch.tensor([0.3, -0.2], dtype=torch.float64)
    z = torch.zeros_like(m)
    factors = _geometry.grid_factors(_geometry.inverse_affine(m * 50, z, z, 0.0, 0.0), 20, 24)
    terms = _geometry.grid_terms(factors, 20, 24)
    plain = _geometry.grid(*terms)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = _geometry.grid(*terms)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)


@pytest.mark.parametrize("size", [(30, 38), (37, 29), (64, 64)])
def test_elementwise_source_index_matches_cpu_grid_sample(size):
    """What every non-CPU device computes picks the pixel CPU grid_sample picks."""
    h, w = size
    angles = torch.cat([torch.linspace(-135, 135, 37), torch.tensor([90.0, 180.0, 45.0])])
    shears = torch.linspace(-0.99, 0.99, 23, dtype=torch.float64)
    za, zs = torch.zeros(len(angles), dtype=torch.float64), torch.zeros_like(shears)
    deg = _geometry.degrees(_geometry.atan(shears))
    for matrix in (
        _geometry.inverse_affine(-torch.remainder(angles.double(), 360.0), za, za, 0.0, 0.0),
        _geometry.inverse_affine(zs, deg, zs, -0.5 * w, -0.5 * h),
        _geometry.inverse_affine(zs, zs, deg, -0.5 * w, -0.5 * h),
    ):
        g = _geometry.grid(*_geometry.grid_terms(_geometry.grid_factors(matrix, h, w), h, w))
        expected = _geometry.source_index(g, h, w)
        assert torch.equal(_geometry.source_index_elementwise(g, h, w), expected)


# ---------------------------------------------------------------- copies and launches
@pytest.mark.parametrize(("name", "kwargs"), [("randaugment", {"num_ops": 3}), ("augmix", {})])
def test_device_path_one_copy_per_slot_and_no_batch_clone(name, kwargs, monkeypatch):
    copies = []
    real = _device.h2d

    def counting(t, device):
        copies.append(tuple(t.shape))
        return real(t, device)

    monkeypatch.setattr(_device, "h2d", counting)
    pol = build_policy(name, **kwargs)
    p = pol.sample(torch.arange(48), 0, 0)
    x = torch.empty(48, 3, 40, 32, dtype=torch.uint8, device="meta")
    with _CountOps() as counter:
        out = pol.apply_batch(x, p)
    assert out.device.type == "meta" and out.shape == x.shape
    applied_slots = int(p.applied.any(0).sum())
    assert 0 < len(copies) <= applied_slots
    assert all(len(shape) == 1 for shape in copies)  # one packed byte buffer each
    assert counter.ops["aten.clone"] == 0


def test_normalize_copies_its_constants_once(monkeypatch):
    calls = []
    real = normalization.h2d
    monkeypatch.setattr(normalization, "h2d", lambda t, d: calls.append(1) or real(t, d))
    x = _images(2)
    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.61)
    first = batch_ops.normalize(x, mean, std)
    again = batch_ops.normalize(x, list(mean), torch.tensor(std, dtype=torch.float64))
    assert torch.equal(first, again) and len(calls) == 1
    ref = (x.double() / 255 - torch.tensor(mean).double().view(3, 1, 1)) / torch.tensor(
        std
    ).double().view(3, 1, 1)
    assert torch.allclose(first.double(), ref, atol=1e-5)


def test_random_erasing_noise_is_seeded():
    x = torch.zeros(6, 3, 24, 24)
    er = RandomErasing(p=1.0, value="random")
    a, b, c = er(x, generator=4), er(x, generator=4), er(x, generator=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != 0).any()
    # the boxes are drawn as before: same generator, same boxes as the sampler gives
    boxes = er.sample(6, 24, 24, torch.Generator().manual_seed(4))
    area = (a != 0).any(1).flatten(1).sum(1)
    assert torch.equal(area, boxes[:, 2] * boxes[:, 3])


def test_in_place_slots_keep_route_independence():
    pol = build_policy("randaugment", num_ops=4)
    x = _images(16, 33, 41, seed=3)
    keep = x.clone()
    p = pol.sample(torch.arange(16), 2, 9)
    y = pol.apply_batch(x, p)
    assert torch.equal(x, keep)  # the input is never written
    assert torch.equal(y, torch.stack([pol.apply_one(x[i], p[i]) for i in range(16)]))
    out = functional.apply_ops_grouped(x.clone(), p.op_ids[:, 0], torch.zeros(16))
    assert out.shape == x.shape


# ---------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("op", ["Rotate", "ShearX", "ShearY", "TranslateX"])
def test_cuda_nearest_warp_equals_cpu_under_tf32_and_autocast(op):
    x = _images(16, 64, 56)
    mags = torch.linspace(-0.99, 0.99, 16) * (90.0 if op in ("Rotate", "TranslateX") else 1.0)
    cpu = apply_op(x, op, mags, fill=(1, 2, 3))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        high = apply_op(x.cuda(), op, mags, fill=(1, 2, 3)).cpu()
    finally:
        torch.set_float32_matmul_precision(before)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        auto = apply_op(x.cuda(), op, mags, fill=(1, 2, 3)).cpu()
    assert torch.equal(high, cpu) and torch.equal(auto, cpu)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment", "augmix"])
def test_cuda_apply_batch_does_not_synchronise(name):
    pol = build_policy(name)
    x = _images(32, 64, 64).cuda()
    p = pol.sample(torch.arange(32), 0, 0)
    pol.apply_batch(x, p)  # warm-up: allocator and pinned-memory pools
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pol.apply_batch(x, pol.sample(torch.arange(32), 1, 0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda"


@pytest.mark.cuda
def test_cuda_normalize_does_not_synchronise():
    x = _images(8).cuda()
    batch_ops.normalize(x)  # warm-up: the constants are copied once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = batch_ops.normalize(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.allclose(out.cpu(), batch_ops.normalize(x.cpu()), atol=1e-6)
