"""DeepAA (Deep AutoAugment, ICLR 2022) from a policy file the user supplies.

The published policy is data, saved by DeepAA's search as ``.npz``: ``policy_probs`` ``[K, N]``
(one probability vector per layer: 5 layers for ImageNet, 6 for CIFAR, ``N`` = 139 entries),
``ops`` and ``mags`` ``[N]`` or ``[N, 1]`` (each entry's op index and magnitude bin, bins
``0 .. l_mags - 1``), ``op_names`` (``"ShearX:(-0.3,,0.3)"``: the op and its value range), and
``l_ops``/``l_mags``. No policy file ships with ff_lightning (the published one has no licence).

Each image draws one entry per layer (``Categorical(policy_probs[layer])``) and applies its op
at ``value = bin / (l_mags - 1) * (high - low) + low`` (float32, as DeepAA's loader), with
DeepAA's Pillow semantics: ShearX/Y, TranslateX/Y (a fraction of the side) and Rotate negated
with probability 1/2 (its ``random_mirror``), nearest resampling and black fill; Solarize at a
float threshold; Posterize ``max(1, int(value))`` bits; the enhance ops at factor ``value``.

Variants:

- ``"fusionflow"`` (the FusionFlow system's): the crop, flip and cutout entries (``RandCrop``,
  ``RandResizeCrop_imagenet``, ``RandFlip``, ``RandCutout``, ``RandCutout60``) are dropped and
  each layer renormalised over what remains; they are left to the worker geometry.
- ``"paper"``: every entry kept, applied at the fixed crop size the pipeline hands the policy:
  flip and cutout per sample (16 px at ``(125, 123, 114)``, or 60 px inside the central 256 px
  for ``RandCutout60``), ``RandCrop`` as a shift of up to 4 px with that colour, and
  ``RandResizeCrop_imagenet`` as a per-sample affine resample (bicubic) of a random box of the
  current image back to its size. **Deviation from the paper:** DeepAA crops the *full-resolution*
  image in its first layer (ImageNet) and resizes with Pillow's ``resize`` (a = -0.5, with
  antialiasing when shrinking); here that crop is taken from the already cropped fixed-size
  image and resampled with Pillow's affine bicubic (a = -1, always an enlargement). Like
  DeepAA's loader, the random resized crop makes one try, then falls back to the central crop.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ff_lightning.augment import pil_warp, rng
from ff_lightning.augment.op_record import OpRecord
from ff_lightning.augment.pil_ops import OP_ID, Call
from ff_lightning.augment.pil_policy import PilPolicy, check_stream
from ff_lightning.errors import ConfigError

__all__ = ["DEEPAA_OPS", "DeepAA", "load_policy_file"]

_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_COLOUR = ("AutoContrast", "Invert", "Equalize", "Solarize", "Posterize")
_ENHANCE = ("Contrast", "Color", "Brightness", "Sharpness")
#: Ops the FusionFlow variant drops (geometry the workers do).
GEOMETRY_OPS = ("RandFlip", "RandCutout", "RandCutout60", "RandCrop", "RandResizeCrop_imagenet")
DEEPAA_OPS = ("Identity", *_GEOMETRIC, *_COLOUR, *_ENHANCE, *GEOMETRY_OPS)
_VARIANTS = ("fusionflow", "paper")
_MEAN_FILL = (125, 123, 114)  # DeepAA's cutout and crop padding colour
_AUX = 4  # uniforms per slot: flip, cutout / crop position, random resized crop


def _bad(path: Path, array: str, expected: str, got: object) -> ConfigError:
    return ConfigError(f"DeepAA policy file '{path}': `{array}` must be {expected}, got {got}")


def _parse_name(path: Path, text: str) -> tuple[str, float, float]:
    match = re.fullmatch(
        r"\s*([A-Za-z0-9_]+):\(\s*([-+0-9.eE]+)\s*,,\s*([-+0-9.eE]+)\s*\)?\s*", text
    )
    if match is None:
        raise _bad(path, "op_names", "entries like 'ShearX:(-0.3,,0.3)'", repr(text))
    name = match.group(1)
    if name not in DEEPAA_OPS:
        raise _bad(path, "op_names", f"DeepAA ops {DEEPAA_OPS}", f"unknown op {name!r}")
    try:
        low, high = float(match.group(2)), float(match.group(3))
    except ValueError:
        raise _bad(path, "op_names", "numeric ranges", repr(text)) from None
    return name, low, high


def load_policy_file(path: str | os.PathLike) -> dict[str, object]:
    """Read and check a DeepAA ``.npz``: ``probs`` float64 ``[K, N]``, ``ops``/``mags`` int64
    ``[N]``, ``names`` (op, low, high) per op, ``l_mags``. Any problem is a ``ConfigError``
    naming the file, the array and what was expected."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"`policy_file` must be an existing DeepAA .npz file, got '{p}'")
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"`policy_file` '{p}' is not a readable .npz file ({exc})") from None
    with data:
        missing = [k for k in ("policy_probs", "ops", "mags", "op_names") if k not in data.files]
        if missing:
            raise _bad(
                p, missing[0], "present (DeepAA saves policy_probs, ops, mags, op_names)", "nothing"
            )
        probs = np.asarray(data["policy_probs"])
        ops, mags = np.asarray(data["ops"]), np.asarray(data["mags"])
        raw_names = np.asarray(data["op_names"])
        l_mags = int(np.asarray(data["l_mags"])) if "l_mags" in data.files else 13
        l_ops = int(np.asarray(data["l_ops"])) if "l_ops" in data.files else len(raw_names)
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 1 or probs.dtype.kind != "f":
        raise _bad(
            p, "policy_probs", "a float array [layers, entries]", f"{probs.dtype} {probs.shape}"
        )
    n = probs.shape[1]
    for name, arr in (("ops", ops), ("mags", mags)):
        if (
            arr.dtype.kind not in "iu"
            or arr.size != n
            or arr.ndim not in (1, 2)
            or arr.shape[0] != n
        ):
            raise _bad(
                p,
                name,
                f"integers shaped [{n}] or [{n}, 1] (one per entry)",
                f"{arr.dtype} {arr.shape}",
            )
    if raw_names.ndim != 1 or raw_names.dtype.kind not in "UO" or l_ops != len(raw_names):
        raise _bad(
            p, "op_names", f"{l_ops} strings (l_ops)", f"{raw_names.dtype} {raw_names.shape}"
        )
    if l_mags < 2:
        raise _bad(p, "l_mags", "an integer >= 2", l_mags)
    ops, mags = ops.reshape(n).astype(np.int64), mags.reshape(n).astype(np.int64)
    if ops.min() < 0 or ops.max() >= len(raw_names):
        raise _bad(
            p, "ops", f"op indices in [0, {len(raw_names) - 1}]", f"[{ops.min()}, {ops.max()}]"
        )
    if mags.min() < 0 or mags.max() >= l_mags:
        raise _bad(p, "mags", f"bins in [0, {l_mags - 1}]", f"[{mags.min()}, {mags.max()}]")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise _bad(p, "policy_probs", "finite and non-negative", "negative or non-finite values")
    sums = probs.sum(1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-4)
    if bad.size:
        raise _bad(
            p,
            "policy_probs",
            "rows that sum to 1",
            f"layer {int(bad[0])} sums to {sums[bad[0]]:.6g}",
        )
    names = [_parse_name(p, str(s)) for s in raw_names]
    return {
        "probs": probs.astype(np.float64),
        "ops": ops,
        "mags": mags,
        "names": names,
        "l_mags": l_mags,
    }


class DeepAA(PilPolicy):
    """DeepAA's policy from ``policy_file`` (see the module docstring for both variants).

    Draws per sample and layer: the entry, the mirror sign, then 4 uniforms (flip, cutout and
    crop positions, random resized crop). ``bins`` holds each layer's magnitude bin, ``levels``
    its fraction ``bin / (l_mags - 1)``.
    """

    name = "deepaa"
    aux_per_slot = _AUX

    def __init__(
        self,
        policy_file: str | os.PathLike,
        variant: str = "fusionflow",
        *,
        stream: int = rng.STREAM_POLICY,
    ) -> None:
        if variant not in _VARIANTS:
            raise ConfigError(f"`variant` must be one of {_VARIANTS}, got {variant!r}")
        self.policy_file, self.variant = str(policy_file), variant
        self.stream = check_stream(stream)
        data = load_policy_file(policy_file)
        self.op_table: list[tuple[str, float, float]] = data["names"]  # type: ignore[assignment]
        self.l_mags = int(data["l_mags"])  # type: ignore[arg-type]
        probs = torch.from_numpy(data["probs"])  # type: ignore[arg-type]
        self.entry_ops = torch.from_numpy(data["ops"])  # type: ignore[arg-type]
        self.entry_mags = torch.from_numpy(data["mags"])  # type: ignore[arg-type]
        if variant == "fusionflow":
            keep = torch.tensor([self.op_table[k][0] not in GEOMETRY_OPS for k in data["ops"]])  # type: ignore[union-attr]
            probs = probs * keep
            mass = probs.sum(1, keepdim=True)
            if bool((mass <= 0).any()):
                layer = int((mass <= 0).nonzero()[0, 0])
                raise ConfigError(
                    f"DeepAA policy file '{policy_file}': `policy_probs` layer {layer} has no "
                    f"probability left once the crop, flip and cutout entries are dropped"
                )
            probs = probs / mass
        self.probs = probs
        self.num_slots = probs.shape[0]
        self.fill = (0, 0, 0)
        self.op_names = tuple(n for n, _, _ in self.op_table)
        geometric = [
            n in _GEOMETRIC or n in ("RandCrop", "RandResizeCrop_imagenet") for n in self.op_names
        ]
        self._cost, self._geometric = self.kind_cost(
            [self._kind(n) for n in self.op_names], geometric
        )

    @staticmethod
    def _kind(name: str) -> str:
        return {"RandFlip": "Flip", "RandCutout": "Cutout", "RandCutout60": "Cutout"}.get(
            name, name
        )

    def sample(self, indices: Tensor | Sequence[int], epoch: int, seed: int) -> OpRecord:
        k = self.num_slots
        b = rng.bits(seed, epoch, indices, self.stream, k * (2 + _AUX))
        u = rng.bits_to_uniform(b, torch.float64)
        cdf = self.probs.cumsum(1)
        entry = torch.stack(
            [torch.searchsorted(cdf[j], u[:, j].contiguous(), right=True) for j in range(k)], 1
        ).clamp(max=cdf.shape[1] - 1)
        op_ids, bins = self.entry_ops[entry], self.entry_mags[entry]
        resample = torch.tensor([3 if n == "RandResizeCrop_imagenet" else 0 for n in self.op_names])
        return OpRecord(
            op_ids=op_ids,
            bins=bins,
            signs=torch.where(u[:, k : 2 * k] > 0.5, -1.0, 1.0).to(torch.float32),
            applied=torch.ones_like(op_ids, dtype=torch.bool),
            weights=torch.zeros(len(op_ids), 0),
            levels=bins.to(torch.float64) / (self.l_mags - 1),
            resample=resample[op_ids],
            aux=u[:, 2 * k :].contiguous(),
        )

    def calls(self, record: OpRecord, slot: int, height: int, width: int) -> list[Call]:
        ops = record.op_ids[:, slot].tolist()
        bins = record.bins[:, slot].tolist()
        signs = record.signs[:, slot].tolist()
        aux = record.aux[:, slot * _AUX : (slot + 1) * _AUX].tolist()
        return [
            self._call(ops[i], bins[i], signs[i] < 0, aux[i], height, width)
            for i in range(len(ops))
        ]

    def _call(
        self, op: int, mag: int, neg: bool, aux: list[float], height: int, width: int
    ) -> Call:
        name, low, high = self.op_table[op]
        f32 = np.float32
        # DeepAA's loader: level = float32(bin) / (l_mags - 1); value = level * (high - low) + low
        value = f32(f32(mag) / f32(self.l_mags - 1)) * f32(high - low) + f32(low)
        if name in _GEOMETRIC and neg:
            value = -value
        if name in ("ShearX", "ShearY"):
            return OP_ID["Affine"], pil_warp.shear(float(value), 0 if name == "ShearX" else 1), 0
        if name in ("TranslateX", "TranslateY"):
            pixels = float(value * f32(width if name == "TranslateX" else height))
            tx, ty = (pixels, 0.0) if name == "TranslateX" else (0.0, pixels)
            return OP_ID["Affine"], pil_warp.translate(tx, ty), 0
        if name == "Rotate":
            return OP_ID["Affine"], pil_warp.rotate(float(value % f32(360.0)), width, height), 0
        if name == "Solarize":
            return OP_ID["Solarize"], (float(value),), 0
        if name == "Posterize":
            return OP_ID["Posterize"], (max(1, int(value)),), 0
        if name in _ENHANCE:
            return OP_ID[name], (float(value),), 0
        if name in ("AutoContrast", "Invert", "Equalize"):
            return OP_ID[name], (), 0
        return self._geometry_call(name, aux, height, width)

    def _geometry_call(self, name: str, aux: list[float], height: int, width: int) -> Call:
        if name == "RandFlip":
            return (OP_ID["Flip"] if aux[0] > 0.5 else OP_ID["Identity"]), (), 0
        if name in ("RandCutout", "RandCutout60"):
            half = 8 if name == "RandCutout" else 30
            lo_x, hi_x, lo_y, hi_y = 0, width, 0, height
            if name == "RandCutout60":  # centres within the central 256 px
                lo_x, hi_x = max(0, width // 2 - 128), min(width, width // 2 + 128)
                lo_y, hi_y = max(0, height // 2 - 128), min(height, height // 2 + 128)
            x = lo_x + (hi_x - lo_x) * aux[0]
            y = lo_y + (hi_y - lo_y) * aux[1]
            box = [
                int(min(s, max(0, v + d)))
                for v, s, d in (
                    (x, width, -half),
                    (y, height, -half),
                    (x, width, half),
                    (y, height, half),
                )
            ]
            return OP_ID["Cutout"], (*box, *_MEAN_FILL), 0
        if name == "RandCrop":  # pad 4 with the mean colour, crop back: a shift of -4..4 px
            top, left = math.floor(aux[0] * 9), math.floor(aux[1] * 9)
            return OP_ID["Affine"], (*pil_warp.translate(left - 4.0, top - 4.0), *_MEAN_FILL), 0
        if name == "RandResizeCrop_imagenet":
            left, top, w, h = _resized_crop_box(aux, width, height)
            return OP_ID["Affine"], pil_warp.crop_resize(left, top, w, h, width, height), 3
        return OP_ID["Identity"], (), 0

    def op_cost(self, op_ids: Tensor, resample: Tensor) -> Tensor:
        return self.table_cost(op_ids, resample, self._cost, self._geometric)

    def _extra_repr(self) -> str:
        return (
            f"policy_file={self.policy_file!r}, variant={self.variant!r}, layers={self.num_slots}"
        )


def _resized_crop_box(aux: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """DeepAA's ``RandResizeCrop_imagenet`` box ``(left, top, w, h)``: scale (0.08, 1), ratio
    (3/4, 4/3), one try (its fallback sits inside the loop), then the central crop."""
    area = float(width * height)
    target = area * (0.08 + (1.0 - 0.08) * aux[0])
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    ratio = math.exp(lo + (hi - lo) * aux[1])
    w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
    if 0 < w <= width and 0 < h <= height:
        return math.floor(aux[3] * (width - w + 1)), math.floor(aux[2] * (height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif in_ratio > 4 / 3:
        w, h = round(height * (4 / 3)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h
