"""Build step of ff-lightning: the native CPU loops, compiled when the package is built.

Everything else about the package is in ``pyproject.toml``. The C files of
``ff_lightning/augment/`` (``_native.c``, ``_pil_warp.c``, ``_pil_filters.c``) become one
``ff_lightning/augment/_ff_native<ext-suffix>``, a plain shared library that
``ff_lightning.augment._native`` loads with ctypes (it is not a Python module: it has no
``PyInit`` entry, and uses neither Python's nor torch's headers). A wheel carries it, so the
training machine needs no compiler. When no compiler is present at build time the package still
installs: the loops are then compiled on first use where a compiler exists, else the torch
kernels run (the package says which in one warning).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Plain ISO C, no fast-math: the loops must give the torch kernels' results bit for bit.
_FLAGS = ["/O2"] if sys.platform == "win32" else ["-O3", "-std=c99"]
# One library from these files, in this order (ff_lightning/augment/_native_load.py's SOURCES).
_SOURCES = [f"ff_lightning/augment/{n}" for n in ("_native.c", "_pil_warp.c", "_pil_filters.c")]
# The sources' hash, built into the library: the loader skips a packaged library that is older
# than the sources beside it (an editable checkout whose C files changed since the install).
_HERE = Path(__file__).parent
_TAG = hashlib.sha256(b"".join((_HERE / s).read_bytes() for s in _SOURCES)).hexdigest()[:16]


class NativeLoops(build_ext):
    """build_ext for a ctypes library: no ``PyInit`` export, and a failed build is not fatal."""

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return list(ext.export_symbols or [])  # not a Python module: nothing to export

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # no compiler at all (setuptools' platform errors)
            self._skip(err)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:  # the compiler failed
            self._skip(err)

    @staticmethod
    def _skip(err: BaseException) -> None:
        print(
            f"warning: ff-lightning's native CPU loops were not built ({err}); they will be "
            "compiled on first use where a C compiler exists, else the torch kernels run",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Extension(
            "ff_lightning.augment._ff_native",
            sources=_SOURCES,
            extra_compile_args=_FLAGS,
            define_macros=[("FF_SOURCE_TAG", f'"{_TAG}"')],
        )
    ],
    cmdclass={"build_ext": NativeLoops},
)
