"""The kernel table: registration per (operation, device type, backend), one choice per call."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ff_lightning.augment import _native, dispatch
from ff_lightning.augment.dispatch import kernels_for, register_kernel
from ff_lightning.augment.functional import REGISTRY, _context

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private copy of the table, so that test registrations do not leak."""
    monkeypatch.setattr(dispatch, "_TABLE", dict(dispatch._TABLE))
    monkeypatch.setattr(dispatch, "_RESOLVED", {})


def test_every_op_of_the_registry_resolves_on_every_device() -> None:
    names = {op.run for op in REGISTRY.values() if isinstance(op.run, str)}
    names |= {op.lut for op in REGISTRY.values() if isinstance(op.lut, str)}
    names |= {"lut.group", "affine.nearest", "affine.bilinear", "normalize"}
    for device in ("cpu", "cuda", "meta"):
        kernels = kernels_for(device)
        for name in sorted(names):
            assert callable(kernels[name]), (device, name)
    for name in sorted(names):  # accelerators get torch kernels only
        assert kernels_for("cuda").choose(name).backend == "torch"


def test_one_line_registration_and_backend_preference(table: None) -> None:
    calls: list[str] = []
    register_kernel("Blur", "any", "torch", lambda x: calls.append("torch"))
    register_kernel("Blur", "cpu", "native", lambda x: calls.append("native"))
    register_kernel("Blur", "cuda", "torch", lambda x: calls.append("cuda"))
    kernels_for("cuda")["Blur"](None)
    kernels_for("meta")["Blur"](None)
    kernels_for("cpu")["Blur"](None)
    with _native.disabled():
        kernels_for("cpu")["Blur"](None)
    expected_cpu = "native" if _native.lib() is not None else "torch"
    assert calls == ["cuda", "torch", expected_cpu, "torch"]


def test_a_decorator_registers_too_and_replaces_a_triple(table: None) -> None:
    @register_kernel("Blur", "any", "torch")
    def first(x: int) -> int:
        return x + 1

    assert kernels_for("cpu")["Blur"](1) == 2
    register_kernel("Blur", "any", "torch", lambda x: x + 10)  # a resolution made before is stale
    assert kernels_for("cpu")["Blur"](1) == 11
    assert [k.op for k in dispatch.registered("Blur")] == ["Blur"]


def test_float_loops_need_the_fused_check(table: None, monkeypatch: pytest.MonkeyPatch) -> None:
    if _native.lib() is None:
        pytest.skip("no native kernels here")
    register_kernel("Mix", "any", "torch", lambda: "torch")
    register_kernel("Mix", "cpu", "native", lambda: "native", float_loops=True)
    register_kernel("Table", "any", "torch", lambda: "torch")
    register_kernel("Table", "cpu", "native", lambda: "native")
    monkeypatch.setitem(_native._state, "fused", False)  # e.g. torch's default CPU kernels
    k = kernels_for("cpu")
    assert k.backend == "native"
    assert k["Mix"]() == "torch" and k["Table"]() == "native"
    monkeypatch.setitem(_native._state, "fused", True)
    assert kernels_for("cpu")["Mix"]() == "native"


def test_the_call_context_carries_the_resolved_kernels() -> None:
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    ctx = _context(x, "nearest", 0)
    assert ctx.kernels is kernels_for("cpu")
    assert ctx.native is (_native.lib() is not None)
    with _native.disabled():
        off = _context(x, "nearest", 0)
    assert off.kernels.backend == "torch" and not off.native
    assert off.kernels.choose("lut.group").backend == "torch"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "any", "torch"), r"`op` must be a non-empty string, got ''"),
        (("Blur", "any", "cuda"), r"`backend` must be one of \('native', 'torch'\), got 'cuda'"),
        (("Blur", "cuda", "native"), r"`device_type` of a native kernel must be 'cpu', got 'cuda'"),
    ],
)
def test_bad_registrations_say_what_is_allowed(table: None, args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_kernel(*args, lambda: None)


def test_an_unknown_operation_names_itself() -> None:
    with pytest.raises(KeyError, match="no kernel for 'Nope' on 'cpu'"):
        kernels_for("cpu")["Nope"]
    assert kernels_for("cpu").get("Nope") is None


def test_no_kernel_reads_the_native_flags() -> None:
    """The availability checks are read in one place, the table's resolution; kernels call
    the native loops only from kernels registered as native."""
    # The table, and the ctypes wrappers that load the library they wrap.
    allowed = {"dispatch.py", "_native.py", "_native_ops.py", "_pil_native.py"}
    pattern = re.compile(r"_native\.(lib|fused)\(|\bctx\.native\b|stats\.native")
    offenders = []
    for path in sorted((ROOT / "ff_lightning").rglob("*.py")):
        if path.name in allowed:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
