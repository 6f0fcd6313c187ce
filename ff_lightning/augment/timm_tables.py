"""timm's augmentation tables as data: RandAugment op sets and weights, AutoAugment policies,
AugMix's op set (``timm.data.auto_augment``, timm 1.0, Apache-2.0).

The tests compare every table here with the one timm builds, op by op.
"""

from __future__ import annotations

__all__ = [
    "AA_POLICIES",
    "AUGMIX_OPS",
    "LEVEL_DENOM",
    "RAND_OPS",
    "RAND_OPS_INCREASING",
    "RAND_SETS",
    "TIMM_DEFAULT_FILL",
    "TIMM_DEFAULT_TRANSLATE_CONST",
]

#: timm's magnitude scale: level ``m`` is ``m / LEVEL_DENOM`` of an op's range.
LEVEL_DENOM = 10.0
TIMM_DEFAULT_FILL = (128, 128, 128)
TIMM_DEFAULT_TRANSLATE_CONST = 250

_BASE = ("AutoContrast", "Equalize", "Invert", "Rotate")
_GEOMETRY = ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

#: ``rand-*`` without ``inc1`` (timm's ``_RAND_TRANSFORMS``) and with it.
RAND_OPS: tuple[str, ...] = (
    *_BASE,
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    *_GEOMETRY,
)
RAND_OPS_INCREASING: tuple[str, ...] = (
    *_BASE,
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    *_GEOMETRY,
)

#: The ``t<name>`` op sets: a tuple (uniform choice, with replacement) or a dict of weights
#: (choice without replacement, each pick proportional to the remaining weights).
RAND_SETS: dict[str, tuple[str, ...] | dict[str, float]] = {
    "3a": ("SolarizeIncreasing", "Desaturate", "GaussianBlur"),
    "3aw": {
        "SolarizeIncreasing": 6,
        "Desaturate": 6,
        "GaussianBlur": 6,
        "Rotate": 3,
        "ShearX": 2,
        "ShearY": 2,
        "PosterizeIncreasing": 1,
        "AutoContrast": 1,
        "ColorIncreasing": 1,
        "SharpnessIncreasing": 1,
        "ContrastIncreasing": 1,
        "BrightnessIncreasing": 1,
        "Equalize": 1,
        "Invert": 1,
    },
    "weights": {
        "Rotate": 3,
        "ShearX": 2,
        "ShearY": 2,
        "TranslateXRel": 1,
        "TranslateYRel": 1,
        "ColorIncreasing": 0.25,
        "SharpnessIncreasing": 0.25,
        "AutoContrast": 0.25,
        "SolarizeIncreasing": 0.05,
        "SolarizeAdd": 0.05,
        "ContrastIncreasing": 0.05,
        "BrightnessIncreasing": 0.05,
        "Equalize": 0.05,
        "PosterizeIncreasing": 0.05,
        "Invert": 0.05,
    },
}

#: AugMix's ops (timm's ``_AUGMIX_TRANSFORMS``), each applied with probability 1.
AUGMIX_OPS: tuple[str, ...] = (
    "AutoContrast",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "Equalize",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)

SubPolicy = tuple[tuple[str, float, float], ...]

# ImageNet "v0" (TPU EfficientNet): ((op, probability, magnitude), ...) per sub-policy.
_V0: tuple[SubPolicy, ...] = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

# ImageNet policy of the AutoAugment paper ("original").
_ORIGINAL: tuple[SubPolicy, ...] = (
    (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)


def _rename(policy: tuple[SubPolicy, ...], old: str, new: str) -> tuple[SubPolicy, ...]:
    return tuple(tuple((new if op == old else op, p, m) for op, p, m in sub) for sub in policy)


#: timm's AutoAugment policies by name; the ``r`` variants use the "research" Posterize whose
#: bits removed grow with the magnitude.
AA_POLICIES: dict[str, tuple[SubPolicy, ...]] = {
    "original": _ORIGINAL,
    "originalr": _rename(_ORIGINAL, "PosterizeOriginal", "PosterizeIncreasing"),
    "v0": _V0,
    "v0r": _rename(_V0, "Posterize", "PosterizeIncreasing"),
    "3a": (
        (("Solarize", 1.0, 5),),
        (("Desaturate", 1.0, 10),),
        (("GaussianBlurRand", 1.0, 10),),
    ),
}
