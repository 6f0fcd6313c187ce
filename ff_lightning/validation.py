"""One place for argument checks: each helper raises :class:`ConfigError` naming the key
(:func:`check_images`, for the batched kernels' image argument, a ``ValueError``).

Messages follow one pattern: the key in backticks, what is allowed, what was given, and
(where there is one) how to fix it, e.g. ``"`ratio` must be a number in [0, 1], got '0.5'"``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ff_lightning.errors import ConfigError

__all__ = [
    "check_bool",
    "check_choice",
    "check_float",
    "check_images",
    "check_int",
    "check_pair",
    "check_probability",
]


def _hint(fix: str | None) -> str:
    return f"; {fix}" if fix else ""


def check_int(
    name: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    *,
    fix: str | None = None,
) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (bools, floats and strings are rejected; NumPy
    integers are ints)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            rng = f" in [{low}, {high}]"
        elif low is not None:
            rng = f" >= {low}"
        elif high is not None:
            rng = f" <= {high}"
        else:
            rng = ""
        raise ConfigError(f"`{name}` must be an integer{rng}, got {value!r}{_hint(fix)}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    fix: str | None = None,
) -> float:
    """``value`` as a finite ``float`` in the given interval; strings and bools are rejected."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    ok = ok and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            rng = f" in {lo}, {hi}"
        elif low is not None:
            rng = f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            rng = f" {'<' if high_open else '<='} {high:g}"
        else:
            rng = ""
        raise ConfigError(f"`{name}` must be a number{rng}, got {value!r}{_hint(fix)}")
    return v


def check_probability(name: str, value: Any, *, fix: str | None = None) -> float:
    """A probability in ``[0, 1]``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"`{name}` must be a probability in [0, 1], got {value!r}{_hint(fix)}")
    return float(value)


def check_bool(name: str, value: Any, *, fix: str | None = None) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"`{name}` must be true or false, got {value!r}{_hint(fix)}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any], *, fix: str | None = None) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"`{name}` must be one of {choices}, got {value!r}{_hint(fix)}")
    return value


def check_pair(
    name: str, value: Any, low: float, high: float | None = None, *, fix: str | None = None
) -> tuple[float, float]:
    """A pair ``(a, b)`` with ``low <= a <= b`` (and ``b <= high`` when given)."""
    try:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | Iterable):
            raise TypeError
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"`{name}` must be a pair (low, high), got {value!r}{_hint(fix)}"
        ) from None
    if not (low <= a <= b) or (high is not None and b > high):
        upper = f" and high <= {high}" if high is not None else ""
        raise ConfigError(
            f"`{name}` must satisfy {low} <= low <= high{upper}, got {value!r}{_hint(fix)}"
        )
    return a, b


def check_images(images: object, ndim: int = 4) -> Tensor:
    """``images`` if it is a uint8 tensor ``[B, C, H, W]`` (``ndim`` 4) or ``[C, H, W]`` (3),
    ``C`` = 1 or 3; else a ``ValueError`` saying what was given."""
    ok = (
        isinstance(images, Tensor)
        and images.dtype == torch.uint8
        and images.ndim == ndim
        and images.shape[-3] in (1, 3)
    )
    if not ok:
        shape = "[B, C, H, W]" if ndim == 4 else "[C, H, W]"
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise ValueError(
            f"`images` must be a uint8 tensor shaped {shape} with C = 1 or 3, got {got}"
        )
    return images  # type: ignore[return-value]
