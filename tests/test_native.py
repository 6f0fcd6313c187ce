"""The native CPU loops (``ff_lightning.augment._native``) against the torch kernels.

The other augmentation tests compare whatever route runs here (native where a compiler is
present) with torchvision; these compare the two routes with each other, bit for bit, on
every op, on shapes that hit the loops' vector tails, on one and three channels, on subsets
of rows and in place, and check the fallbacks.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ff_lightning.augment import _native, _native_load, build_policy
from ff_lightning.augment.functional import OPS, apply_op, apply_ops_grouped

needs_native = pytest.mark.skipif(_native.lib() is None, reason="no native kernels here")


def _images(batch: int, ch: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, ch, h, w), dtype=torch.uint8, generator=g)
    if batch > 2:
        x[0] = x[0] // 4 + 100  # narrow range: AutoContrast and Equalize do something
        x[1] = 77  # one value: flat channels, Equalize's single bin
        x[2, :, : h // 2] = 255  # bright half: Contrast's mean, Solarize
    return x


def _magnitudes(op: str, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1
    if op == "Posterize":
        return torch.randint(0, 9, (batch,), generator=g).double()
    if op == "Solarize":
        return m.abs() * 1.1
    if op in ("TranslateX", "TranslateY", "Rotate"):
        return m * 40
    return m * 0.9


def _both(fn):
    native = fn()
    with _native.disabled():
        reference = fn()
    return native, reference


SHAPES = [(6, 3, 37, 53), (5, 1, 20, 31), (4, 3, 2, 2), (3, 3, 1, 17), (4, 3, 96, 96)]


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", OPS)
def test_every_op_matches_the_torch_kernels(op: str, shape: tuple[int, ...]) -> None:
    x = _images(*shape, seed=len(op))
    m = _magnitudes(op, shape[0], seed=shape[-1])
    fill = [10, 200, 30] if shape[1] == 3 else 7
    native, reference = _both(lambda: apply_op(x, op, m, fill=fill))
    assert torch.equal(native, reference), op


@needs_native
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape", [(24, 3, 29, 41), (16, 1, 33, 18)], ids=["rgb", "gray"])
def test_mixed_slots_on_row_subsets_match(shape: tuple[int, ...], in_place: bool) -> None:
    # Every op in one call: the native table group takes rows scattered over the batch.
    x = _images(*shape, seed=3)
    ids = torch.arange(shape[0]) % len(OPS)
    m = torch.rand(shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def run() -> torch.Tensor:
        src = x.clone()
        return apply_ops_grouped(src, ids, m, out=src if in_place else None).clone()

    native, reference = _both(run)
    assert torch.equal(native, reference)


@needs_native
def test_contrast_on_large_images_takes_the_exact_mean() -> None:
    # 255 * 300 * 300 > 2**24: the float32 mean is no longer an exact integer sum, so the
    # native integer sum is not used there; both routes still agree.
    x = _images(3, 3, 300, 300, seed=9)
    m = torch.tensor([0.5, -0.4, 0.9], dtype=torch.float64)
    native, reference = _both(lambda: apply_op(x, "Contrast", m))
    assert torch.equal(native, reference)


@needs_native
@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment", "augmix"])
def test_policies_match_the_torch_kernels(name: str) -> None:
    policy = build_policy(name)
    x = _images(32, 3, 40, 36, seed=11)
    params = policy.sample(torch.arange(32), 0, 0)
    native, reference = _both(lambda: policy.apply_batch(x, params))
    assert torch.equal(native, reference)


@needs_native
def test_native_loops_on_their_own() -> None:
    x = _images(5, 3, 13, 11, seed=5)
    rows = torch.tensor([4, 0, 2])
    counts = _native.hist(x, rows)
    for j, b in enumerate(rows.tolist()):
        for c in range(3):
            expected = torch.bincount(x[b, c].reshape(-1).long(), minlength=256)
            assert torch.equal(counts[j, c], expected)
    luts = torch.randint(0, 256, (3, 3, 256), dtype=torch.uint8)
    out = x.clone()
    _native.lut_apply(x, out, rows, luts)
    for j, b in enumerate(rows.tolist()):
        for c in range(3):
            assert torch.equal(out[b, c], luts[j, c][x[b, c].long()])
    for b in (1, 3):  # rows not listed are untouched
        assert torch.equal(out[b], x[b])


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_LIGHTNING_NATIVE", "0")
    monkeypatch.setattr(
        _native, "_state", {"tried": False, "lib": None, "off": False, "fused": None}
    )
    assert _native.lib() is None
    assert not _native.fused()
    x = _images(4, 3, 12, 12, seed=1)
    with _native.disabled():
        expected = apply_op(x, "Equalize", 0.0)
    assert torch.equal(apply_op(x, "Equalize", 0.0), expected)  # the torch kernels ran


def test_no_compiler_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FF_LIGHTNING_NATIVE", raising=False)
    monkeypatch.delenv(_native_load.WARNED_ENV, raising=False)
    monkeypatch.setattr(
        _native, "_state", {"tried": False, "lib": None, "off": False, "fused": None, "how": ""}
    )
    monkeypatch.setattr(_native_load, "packaged_library", lambda: None)

    def no_compiler() -> str:
        raise _native_load.BuildError("no C compiler found (install gcc, or set $CC)")

    monkeypatch.setattr(_native_load, "_compiler", no_compiler)
    with pytest.warns(RuntimeWarning, match=r"runs the torch kernels .*no C compiler found"):
        assert _native.lib() is None
    assert _native.backend().startswith("torch kernels")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call says nothing
        assert _native.lib() is None


def test_a_failing_build_names_the_compiler_error(monkeypatch, tmp_path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(_native_load, "SOURCE", bad)
    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(tmp_path / "cache"))
    try:
        _native_load._compiler()
    except _native_load.BuildError:
        pytest.skip("no C compiler here")
    with pytest.raises(_native_load.BuildError, match="failed to build bad.c"):
        _native_load._build()
    assert not list((tmp_path / "cache").glob("*"))  # no half-written library left behind


@needs_native
def test_the_build_is_cached_per_source(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(tmp_path))
    _native_load._build()
    built = list(tmp_path.glob("ff_native-*"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    _native_load._build()  # loads the cached file, compiles nothing
    assert list(tmp_path.glob("ff_native-*")) == built
    assert built[0].stat().st_mtime_ns == stamp


@needs_native
def test_autocontrast_tables_for_every_value_range() -> None:
    # Every (lo, hi) pair a channel can have, each a ramp clamped to [lo, hi]: the native
    # table (float32 division by (hi - lo) / 255) against torch's, and Equalize on the same.
    lo, hi = torch.triu_indices(256, 256)  # every lo <= hi
    n = (lo.numel() + 2) // 3
    pad = 3 * n - lo.numel()
    lo, hi = torch.cat([lo, lo[:pad]]), torch.cat([hi, hi[:pad]])
    ramp = torch.arange(256).view(1, 256)
    rows = torch.minimum(torch.maximum(ramp, lo.view(-1, 1)), hi.view(-1, 1))
    x = rows.to(torch.uint8).view(n, 3, 1, 256)
    for op in ("AutoContrast", "Equalize"):
        native, reference = _both(lambda op=op: apply_op(x, op, 0.0))
        assert torch.equal(native, reference), op
