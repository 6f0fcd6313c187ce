"""Where the native loops' library comes from: the wheel, a first-use build, or nowhere.

In order:

1. **Packaged.** ``pip install`` (or a wheel) compiles ``_native.c`` into
   ``ff_lightning/augment/_ff_native<ext-suffix>`` (``setup.py``), so a training machine needs no
   compiler.
2. **Built on first use.** A source checkout without the packaged file compiles ``_native.c``
   with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``; about a second) into a
   per-user cache (``$FF_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/ff_lightning``, else
   ``~/.cache/ff_lightning``), once per machine and source version; when that folder is not
   writable, into a private folder under the temp directory.
3. **None.** The torch kernels run (same results, slower on CPU).

:func:`load` returns the library (or ``None``) and one line saying which backend runs and why;
:mod:`ff_lightning.augment._native` warns once when it falls back to the torch kernels (a
process started by one that warned already stays quiet: the flag travels in the environment).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.machinery
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "ENV",
    "FLAGS",
    "PACKAGED_STEM",
    "SOURCE",
    "SOURCES",
    "cache_dir",
    "load",
    "packaged_library",
]

#: The C files of the one native library (setup.py builds the same list, in this order).
SOURCES = tuple(
    Path(__file__).with_name(name) for name in ("_native.c", "_pil_warp.c", "_pil_filters.c")
)
SOURCE = SOURCES[0]
#: Plain ISO C: no fast-math, no contraction beyond what the code asks for (the loops must give
#: the torch kernels' results bit for bit).
FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared")
ENV = "FF_LIGHTNING_NATIVE"
PACKAGED_STEM = "_ff_native"
WARNED_ENV = "FF_LIGHTNING_NATIVE_WARNED"


class BuildError(RuntimeError):
    """The library could not be built or loaded; the message says why and what to do."""


def packaged_library() -> Path | None:
    """The library the package was installed with, if any."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{PACKAGED_STEM}{suffix}"
        if path.is_file():
            return path
    return None


def cache_dir() -> Path:
    env = os.environ.get("FF_LIGHTNING_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ff_lightning"


def _private_temp() -> Path:
    # Not `<tmp>/ff_lightning`: a folder of the package's name in a directory Python starts in
    # would shadow the installed package.
    user = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return Path(tempfile.gettempdir()) / f"ff-lightning-native-{user}"


def _compiler() -> str:
    cc = os.environ.get("CC")
    if cc:
        if shutil.which(cc) is None:
            raise BuildError(
                f"$CC={cc!r} is not an executable on PATH; point CC to a C compiler or unset it"
            )
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    raise BuildError("no C compiler found (install gcc, or set $CC)")


def _folders() -> list[Path]:
    """Where a first-use build may go: the cache, else a private temp folder."""
    folders = []
    cache = cache_dir()
    if cache.exists() and not cache.is_dir():
        raise BuildError(
            f"FF_LIGHTNING_CACHE={str(cache)!r} is a file, not a folder; point it to a folder "
            "(it is created if missing) or unset it"
        )
    folders.append(cache)
    folders.append(_private_temp())
    return folders


def _open(path: Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(path))


def _sources() -> tuple[Path, ...]:
    # A test may point SOURCE at another file: then it alone is built.
    return SOURCES if SOURCE == SOURCES[0] else (SOURCE,)


def source_tag() -> str:
    """The hash of the C sources a packaged library must have been built from."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16]


def _built_from(so: ctypes.CDLL) -> str:
    fn = getattr(so, "ff_source_tag", None)
    if fn is None:
        return ""
    fn.restype = ctypes.c_char_p
    return (fn() or b"").decode()


def _build() -> tuple[ctypes.CDLL, Path]:
    """Compile (unless a good build is cached) and load; raises :class:`BuildError`."""
    sources = _sources()
    source = b"".join(p.read_bytes() for p in sources)
    cc = _compiler()
    tag = hashlib.sha256(
        source + repr((FLAGS, cc, platform.machine(), sys.platform)).encode()
    ).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    tried = []
    for folder in _folders():
        target = folder / f"ff_native-{tag}{suffix}"
        if target.exists():
            try:
                return _open(target), target
            except OSError:
                # A corrupt or truncated cached build (a killed compile, a full disk): rebuild.
                with contextlib.suppress(OSError):
                    target.unlink()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Build under a unique name, then rename: concurrent workers never load half a file.
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=suffix)
            os.close(fd)
        except OSError as err:
            tried.append(f"{folder} ({err.strerror or err})")
            continue  # unwritable: try the next folder
        try:
            done = subprocess.run(
                [cc, *FLAGS, "-o", tmp, *map(str, sources)],
                capture_output=True,
                text=True,
                timeout=180,
            )
            if done.returncode != 0:
                names = ", ".join(p.name for p in sources)
                raise BuildError(f"`{cc}` failed to build {names}: {done.stderr.strip()[-400:]}")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return _open(target), target
    raise BuildError(f"no writable folder for the build (tried {', '.join(tried)})")


def load() -> tuple[ctypes.CDLL | None, str]:
    """The library and which backend runs, in words (``None``: the torch kernels)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"torch kernels ({ENV}=0)"
    notes = []
    packaged = packaged_library()
    if packaged is not None:
        try:
            so = _open(packaged)
        except OSError as err:
            notes.append(f"the packaged {packaged.name} did not load ({err})")
        else:
            if not all(p.is_file() for p in SOURCES) or _built_from(so) == source_tag():
                return so, f"native loops (packaged: {packaged.name})"
            notes.append(
                f"the packaged {packaged.name} predates its C sources (reinstall to rebuild it)"
            )
    try:
        so, path = _build()
    except (BuildError, OSError, subprocess.SubprocessError) as err:
        notes.append(str(err))
        why = "; ".join(notes)
        return None, (
            f"torch kernels (same results, 2-3x slower on CPU): no native library: {why}. "
            "Install ff-lightning from a wheel or with a C compiler present to get the native "
            f"loops; set {ENV}=0 to choose the torch kernels deliberately"
        )
    built = "built on first use" if not notes else f"built on first use; {'; '.join(notes)}"
    return so, f"native loops ({built}: {path})"
