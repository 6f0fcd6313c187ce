"""timm's ops: from a drawn magnitude level to the Pillow call timm makes (``AugmentOp``).

timm's ``AugmentOp`` clips its magnitude to ``[0, mmax]``, turns it into the op's argument with
a ``LEVEL_TO_ARG`` function (random negation for signed ops) and calls a Pillow function with
``fillcolor=hparams["img_mean"]`` and ``resample`` (geometric ops). :func:`timm_call` does the
same with the values the policy drew, returning a :mod:`~ff_lightning.augment.pil_ops` call.
All arithmetic is Python float64, in timm's order, so an argument here equals timm's exactly.

One deliberate difference: Pillow 13 rejects ``posterize`` with fewer than 1 bit (timm's
Posterize at level < 2.5, PosterizeIncreasing at level 10 raise ``ValueError`` there); here
0 bits or fewer give a black image, as Pillow gave before it added that check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ff_lightning.augment import pil_warp
from ff_lightning.augment.pil_ops import OP_ID, Call
from ff_lightning.augment.timm_tables import LEVEL_DENOM

__all__ = ["TIMM_OPS", "TimmOp", "timm_call"]


@dataclass(frozen=True)
class TimmOp:
    """What a timm op draws and which Pillow op it runs (``kind``, for costs and grouping)."""

    signed: bool = False  # _randomly_negate in its LEVEL_TO_ARG
    geometric: bool = False  # takes `resample` and `fillcolor`
    aux: bool = False  # draws one more uniform when applied (GaussianBlurRand)
    kind: str = "Identity"


def _op(kind: str, *, signed: bool = False, geometric: bool = False, aux: bool = False) -> TimmOp:
    return TimmOp(signed, geometric, aux, kind)


#: Every op name timm's ``NAME_TO_OP`` knows.
TIMM_OPS: dict[str, TimmOp] = {
    "AutoContrast": _op("AutoContrast"),
    "Equalize": _op("Equalize"),
    "Invert": _op("Invert"),
    "Rotate": _op("Affine", signed=True, geometric=True),
    "Posterize": _op("Posterize"),
    "PosterizeIncreasing": _op("Posterize"),
    "PosterizeOriginal": _op("Posterize"),
    "Solarize": _op("Solarize"),
    "SolarizeIncreasing": _op("Solarize"),
    "SolarizeAdd": _op("SolarizeAdd"),
    "Color": _op("Color"),
    "ColorIncreasing": _op("Color", signed=True),
    "Contrast": _op("Contrast"),
    "ContrastIncreasing": _op("Contrast", signed=True),
    "Brightness": _op("Brightness"),
    "BrightnessIncreasing": _op("Brightness", signed=True),
    "Sharpness": _op("Sharpness"),
    "SharpnessIncreasing": _op("Sharpness", signed=True),
    "ShearX": _op("Affine", signed=True, geometric=True),
    "ShearY": _op("Affine", signed=True, geometric=True),
    "TranslateX": _op("Affine", signed=True, geometric=True),
    "TranslateY": _op("Affine", signed=True, geometric=True),
    "TranslateXRel": _op("Affine", signed=True, geometric=True),
    "TranslateYRel": _op("Affine", signed=True, geometric=True),
    "Desaturate": _op("Color"),
    "GaussianBlur": _op("GaussianBlur"),
    "GaussianBlurRand": _op("GaussianBlur", aux=True),
}

_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")


def _minmax(level: float, low: float, high: float) -> float:
    value = low + (high - low) * (level / LEVEL_DENOM)
    return max(low, min(high, value))


def timm_call(
    name: str,
    level: float,
    sign: float,
    resample: int,
    aux: float,
    hparams: Mapping[str, object],
    height: int,
    width: int,
) -> Call:
    """The Pillow call timm's op ``name`` makes at the clipped magnitude ``level``.

    ``sign``: ``-1.0`` where timm's ``_randomly_negate`` negates (ignored by unsigned ops);
    ``resample``: Pillow id for geometric ops; ``aux``: the extra uniform of GaussianBlurRand;
    ``hparams``: ``translate_const``, ``translate_pct`` (timm's defaults apply).
    """
    frac = level / LEVEL_DENOM
    neg = sign < 0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return OP_ID[name], (), 0
    if name.startswith("Posterize"):
        bits = int(frac * 4)
        if name == "PosterizeIncreasing":
            bits = 4 - bits
        elif name == "PosterizeOriginal":
            bits += 4
        return OP_ID["Posterize"], (bits,), 0
    if name.startswith("Solarize"):
        if name == "SolarizeAdd":
            return OP_ID["SolarizeAdd"], (min(128, int(frac * 110)), 128), 0
        threshold = min(256, int(frac * 256))
        return (
            OP_ID["Solarize"],
            (256 - threshold if name.endswith("Increasing") else threshold,),
            0,
        )
    if name in _ENHANCE:
        return OP_ID[name], (frac * 1.8 + 0.1,), 0
    if name.endswith("Increasing") and name[: -len("Increasing")] in _ENHANCE:
        step = frac * 0.9
        return OP_ID[name[: -len("Increasing")]], (max(0.1, 1.0 + (-step if neg else step)),), 0
    if name == "Desaturate":
        factor = _minmax(level, 0.5, 1.0)
        return OP_ID["Color"], (min(1.0, max(0.0, 1.0 - factor)),), 0
    if name == "GaussianBlur":
        return OP_ID["GaussianBlur"], (_minmax(level, 0.1, 2.0),), 0
    if name == "GaussianBlurRand":
        high = 2.0 * _minmax(level, 0.0, 1.0)
        return OP_ID["GaussianBlur"], (0.1 + (high - 0.1) * aux,), 0
    return OP_ID["Affine"], _geometry(name, frac, neg, hparams, height, width), resample


def _geometry(name: str, frac: float, neg: bool, hparams, height: int, width: int):
    def signed(v: float) -> float:
        return -v if neg else v

    if name == "Rotate":
        return pil_warp.rotate(signed(frac * 30.0), width, height)
    if name in ("ShearX", "ShearY"):
        return pil_warp.shear(signed(frac * 0.3), 0 if name == "ShearX" else 1)
    if name in ("TranslateX", "TranslateY"):
        pixels = signed(frac * float(hparams["translate_const"]))  # type: ignore[arg-type]
    else:
        pct = signed(frac * float(hparams.get("translate_pct", 0.45)))  # type: ignore[arg-type]
        pixels = pct * (width if name == "TranslateXRel" else height)
    if name.startswith("TranslateX"):
        return pil_warp.translate(pixels, 0.0)
    return pil_warp.translate(0.0, pixels)
