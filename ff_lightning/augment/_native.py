"""Native CPU loops (``_native.c``) for the table ops, their histograms and nearest warps.

The C file is compiled on first use with the system C compiler (``$CC``, else ``cc``/``gcc``)
into a per-user cache (``$FF_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/ff_lightning``, else
``~/.cache/ff_lightning``), about a second, once per machine and source version, and loaded
with :mod:`ctypes`. No torch headers and no install-time build are involved. DataLoader
workers load the same file.

Without a compiler, when the build fails, or with ``FF_LIGHTNING_NATIVE=0``, :func:`lib`
returns ``None`` and every caller takes the torch kernels (one warning says why). Results are
the same either way: the Python side computes every table and source index with torch, the
loops only look values up (tests compare both routes on every op).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "color",
    "disabled",
    "fused",
    "gather",
    "hist",
    "lib",
    "luma_sum",
    "normalize",
    "lut_apply",
    "sharpness",
]

_SOURCE = Path(__file__).with_name("_native.c")
_FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared")
_ENV = "FF_LIGHTNING_NATIVE"

_state: dict[str, object] = {"tried": False, "lib": None, "off": False, "fused": None}


def _cache_dir() -> Path:
    env = os.environ.get("FF_LIGHTNING_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ff_lightning"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(path: Path | None = None) -> ctypes.CDLL:
    """Compile ``path`` (default: ``_native.c``; unless cached) and load the library; raises
    with the reason on failure."""
    path = _SOURCE if path is None else path
    source = path.read_bytes()
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc)")
    tag = hashlib.sha256(
        source + repr((_FLAGS, cc, platform.machine(), sys.platform)).encode()
    ).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "ff_lightning"):
        target = folder / f"ff_{path.stem.lstrip('_')}-{tag}{suffix}"
        if target.exists():
            return ctypes.CDLL(str(target))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Build under a unique name, then rename: concurrent workers never load half a file.
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=suffix)
            os.close(fd)
        except OSError:
            continue  # unwritable cache: try the next folder
        try:
            done = subprocess.run(
                [cc, *_FLAGS, "-o", tmp, str(path)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode != 0:
                raise RuntimeError(f"`{cc}` failed: {done.stderr.strip()[-500:]}")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return ctypes.CDLL(str(target))
    raise RuntimeError(f"no writable cache folder (tried {_cache_dir()} and the temp folder)")


def _declare(so: ctypes.CDLL) -> ctypes.CDLL:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    so.ff_lut_apply.argtypes = [p, p, i64, p, i64, i64, p]
    so.ff_hist.argtypes = [p, i64, p, i64, i64, p]
    so.ff_gather.argtypes = [p, p, i64, p, i64, i64, p, p, p]
    so.ff_luma_sum.argtypes = [p, i64, p, i64, i64, p]
    so.ff_color.argtypes = [p, p, i64, p, i64, p, p]
    so.ff_sharpness.argtypes = [p, p, i64, p, i64, i64, i64, p, p]
    so.ff_equalize_luts.argtypes = [p, i64, i64, p]
    so.ff_autocontrast_luts.argtypes = [p, i64, p]
    so.ff_contrast_luts.argtypes = [p, p, p, i64, i64, p]
    so.ff_normalize.argtypes = [p, p, i64, i64, i64, p, p]
    native = (so.ff_lut_apply, so.ff_hist, so.ff_gather, so.ff_luma_sum, so.ff_color)
    tables = (so.ff_equalize_luts, so.ff_autocontrast_luts, so.ff_contrast_luts)
    for fn in (*native, *tables, so.ff_sharpness, so.ff_normalize):
        fn.restype = None
    so.ff_has_fma.argtypes = []
    so.ff_has_fma.restype = ctypes.c_int
    return so


def lib() -> ctypes.CDLL | None:
    """The loaded library, or ``None`` (disabled, or it could not be built: warned once)."""
    if _state["off"]:
        return None
    if not _state["tried"]:
        _state["tried"] = True
        if os.environ.get(_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
            return None
        try:
            _state["lib"] = _declare(_build())
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            warnings.warn(
                f"ff_lightning: native CPU kernels unavailable ({exc}); using the torch "
                f"kernels (same results, slower on CPU). Set {_ENV}=0 to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
    return _state["lib"]  # type: ignore[return-value]


def fused() -> bool:
    """Whether the float loops (luma, Color) match torch's kernels here: the library is loaded,
    the CPU has FMA and AVX2, and torch's CPU kernels are its AVX2 or AVX-512 ones, whose
    ``add_(x, alpha=)`` is one fused multiply-add per element (its default kernels are not)."""
    so = lib()
    if so is None:
        return False
    if _state["fused"] is None:
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
        _state["fused"] = bool(so.ff_has_fma()) and capability.upper().startswith(
            ("AVX2", "AVX512")
        )
    return bool(_state["fused"])


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the torch kernels inside the block (tests compare both routes)."""
    before = _state["off"]
    _state["off"] = True
    try:
        yield
    finally:
        _state["off"] = before


def _check(images: Tensor) -> None:
    if images.device.type != "cpu" or images.dtype != torch.uint8 or not images.is_contiguous():
        raise ValueError("native kernels take contiguous uint8 CPU images")


def _rows_ptr(rows: Tensor | None) -> int | None:
    if rows is None:
        return None
    assert rows.dtype == torch.int64 and rows.is_contiguous() and rows.device.type == "cpu"
    return rows.data_ptr()


def lut_apply(src: Tensor, dst: Tensor, rows: Tensor | None, luts: Tensor) -> None:
    """``dst[rows[j], c] = luts[j, c][src[rows[j], c]]`` (``rows`` None: ``j`` itself)."""
    so = lib()
    assert so is not None
    _check(src)
    _check(dst)
    bsz, ch = src.shape[:2]
    n = bsz if rows is None else rows.shape[0]
    luts = luts.contiguous()
    assert luts.shape == (n, ch, 256) and luts.dtype == torch.uint8
    so.ff_lut_apply(
        src.data_ptr(), dst.data_ptr(), n, _rows_ptr(rows), ch, src[0, 0].numel(), luts.data_ptr()
    )


def hist(src: Tensor, rows: Tensor | None) -> Tensor:
    """int64 ``[n, C, 256]``: each channel's histogram of the images ``src[rows]``."""
    so = lib()
    assert so is not None
    _check(src)
    bsz, ch = src.shape[:2]
    n = bsz if rows is None else rows.shape[0]
    out = torch.empty(n, ch, 256, dtype=torch.int64)
    so.ff_hist(src.data_ptr(), n, _rows_ptr(rows), ch, src[0, 0].numel(), out.data_ptr())
    return out


def gather(
    src: Tensor, dst: Tensor, rows: Sequence[int], index: Sequence[Tensor], fill: Tensor
) -> None:
    """Nearest warp: ``dst[b, c, p] = (fill[c], *src[b, c])[index[j][p]]`` for ``b = rows[j]``.

    ``index[j]``: int32 with ``H * W`` entries in ``[0, H * W]`` (0: the fill colour), as
    ``ff_lightning.augment._geometry.source_index`` computes them. ``dst`` may be ``src``.
    """
    so = lib()
    assert so is not None
    _check(src)
    _check(dst)
    ch = src.shape[1]
    npix = src[0, 0].numel()
    n = len(rows)
    for ix in index:
        assert ix.dtype == torch.int32 and ix.is_contiguous() and ix.numel() == npix
    rows_t = torch.tensor(list(rows), dtype=torch.int64)
    ptrs = (ctypes.c_void_p * n)(*(ix.data_ptr() for ix in index))
    fill_u8 = fill.to(torch.uint8).contiguous()
    assert fill_u8.numel() == ch
    scratch = torch.empty(ch * (npix + 1), dtype=torch.uint8)
    so.ff_gather(
        src.data_ptr(),
        dst.data_ptr(),
        n,
        rows_t.data_ptr(),
        ch,
        npix,
        ptrs,
        fill_u8.data_ptr(),
        scratch.data_ptr(),
    )


def luma_sum(src: Tensor, rows: Tensor | None) -> Tensor:
    """int64 ``[n]``: the sum of each image's floored luma (one channel: of its values); needs
    :func:`fused`."""
    so = lib()
    assert so is not None and fused()
    _check(src)
    bsz, ch = src.shape[:2]
    n = bsz if rows is None else rows.shape[0]
    out = torch.empty(n, dtype=torch.int64)
    so.ff_luma_sum(src.data_ptr(), n, _rows_ptr(rows), ch, src[0, 0].numel(), out.data_ptr())
    return out


def color(src: Tensor, dst: Tensor, rows: Tensor | None, ratio: Tensor, alpha: Tensor) -> None:
    """``adjust_saturation`` of 3-channel ``src[rows]`` into ``dst[rows]`` (float32 ``ratio``,
    ``alpha``: one per row); needs :func:`fused`."""
    so = lib()
    assert so is not None and fused()
    _check(src)
    _check(dst)
    bsz, ch = src.shape[:2]
    assert ch == 3
    n = bsz if rows is None else rows.shape[0]
    ratio = ratio.to(torch.float32).contiguous()
    alpha = alpha.to(torch.float32).contiguous()
    assert ratio.numel() == n and alpha.numel() == n
    so.ff_color(
        src.data_ptr(),
        dst.data_ptr(),
        n,
        _rows_ptr(rows),
        src[0, 0].numel(),
        ratio.data_ptr(),
        alpha.data_ptr(),
    )


def sharpness(src: Tensor, dst: Tensor, rows: Tensor | None, alpha: Tensor) -> None:
    """``adjust_sharpness`` of ``src[rows]`` into ``dst[rows]`` (float32 ``alpha = 1 - factor``,
    one per row; borders kept); needs :func:`fused`."""
    so = lib()
    assert so is not None and fused()
    _check(src)
    _check(dst)
    bsz, ch, height, width = src.shape
    n = bsz if rows is None else rows.shape[0]
    alpha = alpha.to(torch.float32).contiguous()
    assert alpha.numel() == n
    scratch = torch.empty(height * width, dtype=torch.uint8)
    so.ff_sharpness(
        src.data_ptr(),
        dst.data_ptr(),
        n,
        _rows_ptr(rows),
        ch,
        height,
        width,
        alpha.data_ptr(),
        scratch.data_ptr(),
    )


def equalize_luts(hist: Tensor, pixels: int) -> Tensor:
    """uint8 ``[..., 256]``: PIL's equalisation table of each int64 histogram row."""
    so = lib()
    assert so is not None
    hist = hist.contiguous()
    assert hist.dtype == torch.int64 and hist.device.type == "cpu"
    out = torch.empty(hist.shape, dtype=torch.uint8)
    so.ff_equalize_luts(hist.data_ptr(), hist.numel() // 256, pixels, out.data_ptr())
    return out


def autocontrast_luts(hist: Tensor) -> Tensor:
    """uint8 ``[..., 256]``: AutoContrast's table of each int64 histogram row."""
    so = lib()
    assert so is not None
    hist = hist.contiguous()
    assert hist.dtype == torch.int64 and hist.device.type == "cpu"
    out = torch.empty(hist.shape, dtype=torch.uint8)
    so.ff_autocontrast_luts(hist.data_ptr(), hist.numel() // 256, out.data_ptr())
    return out


def contrast_luts(mean: Tensor, factor: Tensor, alpha: Tensor, channels: int) -> Tensor:
    """uint8 ``[n, C, 256]``: Contrast's table per sample (float32 ``[n]`` inputs); needs
    :func:`fused`."""
    so = lib()
    assert so is not None and fused()
    mean, factor, alpha = (t.to(torch.float32).contiguous().view(-1) for t in (mean, factor, alpha))
    n = mean.numel()
    assert factor.numel() == n and alpha.numel() == n
    out = torch.empty(n, channels, 256, dtype=torch.uint8)
    so.ff_contrast_luts(
        mean.data_ptr(), factor.data_ptr(), alpha.data_ptr(), n, channels, out.data_ptr()
    )
    return out


def normalize(images: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """float32 ``images * scale + shift`` per channel (one fused multiply-add, as torch's
    ``addcmul(shift, images, scale)``), in one pass; needs :func:`fused`."""
    so = lib()
    assert so is not None and fused()
    _check(images)
    bsz, ch = images.shape[:2]
    scale = scale.to(torch.float32).contiguous().view(-1)
    shift = shift.to(torch.float32).contiguous().view(-1)
    assert scale.numel() == ch and shift.numel() == ch
    out = torch.empty(images.shape, dtype=torch.float32)
    so.ff_normalize(
        images.data_ptr(),
        out.data_ptr(),
        bsz,
        ch,
        images[0, 0].numel(),
        scale.data_ptr(),
        shift.data_ptr(),
    )
    return out
