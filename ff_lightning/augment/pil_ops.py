"""Pillow-semantics ops as one catalogue, and one op slot of a batch applied in grouped calls.

The timm and DeepAA policies turn each sample's drawn record into one *call* per slot: an op of
:data:`OPS` with the exact arguments Pillow receives (bits, threshold, enhance factor, blur
radius, affine data, ...), plus a resampling id for ``Affine``. :func:`apply_slot` applies a
slot's calls to a batch, every sample its own, with one vectorised group per kind of kernel:

- **tables** (Posterize, Solarize, SolarizeAdd, Invert, Brightness, Contrast, AutoContrast,
  Equalize): per-sample uint8 tables, one lookup for the whole group;
- **Color**, **Sharpness**, **GaussianBlur**, **Affine** (all resampling modes, each sample its
  matrix), **Flip**, **Cutout**: one call each.

Planning reads only host lists; every group's index and parameter tensors travel to the images'
device in ONE pinned copy per slot (:class:`~ff_lightning.augment._device.HostPack`), and no
device value is read back. On host images with the native loops the tables, Color, Sharpness and
Affine run native (same bytes as the torch kernels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ff_lightning.augment import _color, _native, _pil_native, pil_color
from ff_lightning.augment._device import HostPack
from ff_lightning.augment.dispatch import kernels_for
from ff_lightning.augment.pil_warp import IDENTITY, WarpGroup

__all__ = ["COST", "OPS", "OP_ID", "Call", "apply_slot", "is_noop"]

#: Every op a call may name; a call is ``(op_id, args, resample)``.
OPS: tuple[str, ...] = (
    "Identity",
    "Posterize",  # (bits,)
    "Solarize",  # (threshold,)
    "SolarizeAdd",  # (add, threshold)
    "Invert",
    "AutoContrast",
    "Equalize",
    "Brightness",  # (factor,)
    "Contrast",  # (factor,)
    "Color",  # (factor,)
    "Sharpness",  # (factor,)
    "GaussianBlur",  # (sigma,)
    "Affine",  # (a0, .., a5[, r, g, b]): Pillow's affine data (and its own fill); call's resample
    "Flip",  # horizontal mirror
    "Cutout",  # (x0, y0, x1, y1, r, g, b): Pillow's inclusive rectangle and its colour
)
OP_ID: dict[str, int] = {name: i for i, name in enumerate(OPS)}

Call = tuple[int, tuple[float, ...], int]

_PARAM_TABLES = frozenset({"Posterize", "Solarize", "SolarizeAdd", "Invert", "Brightness"})
_STAT_TABLES = frozenset({"AutoContrast", "Equalize", "Contrast"})

#: Rough single-thread CPU time per 224 px image relative to a table op (about 35 us), native
#: loops, measured one op at a time on a batch of 32 on the 2-core development machine (used to
#: route the costliest samples first; ``Affine`` by resampling id 0 / 2 / 3).
COST: dict[str, float] = {
    "Identity": 0.0,
    "Posterize": 1.0,
    "Solarize": 1.0,
    "SolarizeAdd": 1.0,
    "Invert": 1.0,
    "AutoContrast": 3.0,
    "Equalize": 2.3,
    "Brightness": 1.0,
    "Contrast": 2.0,
    "Color": 6.0,
    "Sharpness": 5.0,
    "GaussianBlur": 50.0,
    "Flip": 0.6,
    "Cutout": 0.6,
}
AFFINE_COST: dict[int, float] = {0: 3.5, 2: 20.0, 3: 45.0}


def is_noop(op: str, args: tuple[float, ...]) -> bool:
    """Whether the call leaves every image unchanged (skipped: no kernel runs)."""
    if op == "Identity":
        return True
    if op in ("Brightness", "Contrast", "Color", "Sharpness"):
        return args[0] == 1.0
    if op == "Posterize":
        return args[0] >= 8
    if op == "Solarize":
        return args[0] > 255
    if op == "SolarizeAdd":
        return args[0] == 0 or args[1] <= 0
    if op == "GaussianBlur":
        return args[0] == 0
    if op == "Affine":
        return tuple(args[:6]) == IDENTITY
    return False


class _Group:
    """Rows of one kernel kind: host indices and parameters joined to the slot's pack."""

    def __init__(self, rows: list[int], pack: HostPack) -> None:
        self.rows = torch.tensor(rows, dtype=torch.int64)
        self.slot = pack.add(self.rows)

    def part(self, src: Tensor, on_device: list) -> Tensor:
        return src.index_select(0, on_device[self.slot])

    def put(self, dst: Tensor, on_device: list, out: Tensor) -> None:
        dst.index_copy_(0, on_device[self.slot], out)


class _Tables(_Group):
    def __init__(self, rows, calls, pack, channels: int) -> None:
        super().__init__(rows, pack)
        names = [OPS[op] for op, _, _ in calls]
        n = len(rows)
        host = torch.zeros(n, 1, 256, dtype=torch.uint8)
        for j, (name, (_, args, _)) in enumerate(zip(names, calls, strict=True)):
            if name in _PARAM_TABLES:
                host[j] = pil_color.param_table(name, args)
        self.host = host.expand(n, channels, 256)
        self.table_slot = pack.add(host)
        self.stat: dict[str, tuple[Tensor, int, int | None]] = {}
        for name in _STAT_TABLES:
            pos = [j for j in range(n) if names[j] == name]
            if pos:
                pos_t = torch.tensor(pos, dtype=torch.int64)
                alpha = None
                if name == "Contrast":
                    alpha = pack.add(
                        torch.tensor([calls[j][1][0] for j in pos], dtype=torch.float32)
                    )
                self.stat[name] = (pos_t, pack.add(pos_t), alpha)

    def run(self, src: Tensor, dst: Tensor, on_device: list, native: bool) -> None:
        n, ch, pixels = self.rows.numel(), src.shape[1], src[0, 0].numel()
        if native:
            luts = self.host.clone()
            for name, (pos, _, alpha_slot) in self.stat.items():
                rows = self.rows[pos]
                if name == "Contrast":
                    lsum = _pil_native.luma_sum(src, rows)
                    luts[pos] = pil_color.contrast_tables(lsum, pixels, on_device[alpha_slot])
                    continue
                hist = _native.hist(src, rows)
                luts[pos] = self._hist_table(name, hist, pixels, src.device, True)
            _native.lut_apply(src, dst, self.rows, luts)
            return
        part = self.part(src, on_device)
        index = _color.lut_index(part)
        luts = on_device[self.table_slot].expand(n, ch, 256).clone()
        hist = None
        for name, (_, pos_slot, alpha_slot) in self.stat.items():
            pos = on_device[pos_slot]
            if name == "Contrast":
                lsum = pil_color.luma_sum(part.index_select(0, pos))
                table = pil_color.contrast_tables(lsum, pixels, on_device[alpha_slot])
            else:
                if hist is None:
                    hist = _color.histograms(index, 0, n * ch).view(n, ch, 256)
                table = self._hist_table(name, hist.index_select(0, pos), pixels, src.device, False)
            luts.index_copy_(0, pos, table.expand(-1, ch, 256).contiguous())
        self.put(dst, on_device, _color.apply_luts(luts, index, torch.empty_like(part)))

    @staticmethod
    def _hist_table(name: str, hist: Tensor, pixels: int, device, native: bool) -> Tensor:
        if name == "AutoContrast":
            return pil_color.autocontrast_tables(hist)
        n, ch = hist.shape[:2]
        stats = _color.TableStats(n, ch, pixels, device, images=lambda: None, hist=lambda: hist)
        # Pillow's (and torchvision's) scheme, from the kernel table.
        return kernels_for(device)["Equalize.table"](stats)


class _Direct(_Group):
    """Color, Sharpness and GaussianBlur (native loops on host images)."""

    def __init__(self, name: str, rows, calls, pack) -> None:
        super().__init__(rows, pack)
        self.name = name
        if name == "GaussianBlur":
            weights = [pil_color.box_weights(pil_color.box_radius(a[0])) for _, a, _ in calls]
            self.rmax = max(w[0] for w in weights)
            self.params = torch.tensor(weights, dtype=torch.int64).view(-1, 3)
        else:
            self.params = torch.tensor([a[0] for _, a, _ in calls], dtype=torch.float32)
        self.param_slot = pack.add(self.params)

    def run(self, src: Tensor, dst: Tensor, on_device: list, native: bool) -> None:
        if native and self.name == "Sharpness":
            _pil_native.sharpness(src, dst, self.rows, self.params)
            return
        if native and self.name == "Color" and src.shape[1] == 3:
            _pil_native.color(src, dst, self.rows, self.params)
            return
        if (
            native
            and self.name == "GaussianBlur"
            and _pil_native.box_blur(src, dst, self.rows, self.params)
        ):
            return  # (out of memory in the loop: the torch kernel below)
        part = self.part(src, on_device)
        param = on_device[self.param_slot]
        if self.name == "Color":
            out = pil_color.color(part, param)
        elif self.name == "Sharpness":
            out = pil_color.sharpness(part, param)
        else:
            out = pil_color.gaussian_blur(part, param, self.rmax)
        self.put(dst, on_device, out)


class _Mirror(_Group):
    """Flip (Pillow's ``ImageOps.mirror``) and Cutout (``ImageDraw.rectangle``, inclusive)."""

    def __init__(self, name: str, rows, calls, pack) -> None:
        super().__init__(rows, pack)
        self.name = name
        self.calls = calls
        if name == "Cutout":
            boxes = torch.tensor([a[:4] for _, a, _ in calls], dtype=torch.int64).view(-1, 4)
            colour = torch.tensor([a[4:7] for _, a, _ in calls], dtype=torch.uint8).view(-1, 3)
            self.box_slot, self.colour_slot = pack.add(boxes), pack.add(colour)

    def run(self, src: Tensor, dst: Tensor, on_device: list, native: bool) -> None:
        if native:  # host images: per-row copies and slice fills, no batch-wide pass
            for j, r in enumerate(self.rows.tolist()):
                if self.name == "Flip":
                    dst[r] = src[r].flip(-1)
                    continue
                if dst is not src:
                    dst[r].copy_(src[r])
                self._fill_box(dst[r], self.calls[j][1])
            return
        part = self.part(src, on_device)
        if self.name == "Flip":
            self.put(dst, on_device, part.flip(-1))
            return
        n, ch, height, width = part.shape
        box = on_device[self.box_slot].view(n, 4, 1, 1)
        ys = torch.arange(height, device=part.device).view(1, height, 1)
        xs = torch.arange(width, device=part.device).view(1, 1, width)
        inside = (xs >= box[:, 0]) & (xs <= box[:, 2]) & (ys >= box[:, 1]) & (ys <= box[:, 3])
        colour = on_device[self.colour_slot][:, :ch].view(n, ch, 1, 1)
        self.put(dst, on_device, torch.where(inside.unsqueeze(1), colour, part))

    @staticmethod
    def _fill_box(image: Tensor, args: tuple[float, ...]) -> None:
        x0, y0, x1, y1 = (max(int(v), 0) for v in args[:4])
        for c in range(image.shape[0]):
            image[c, y0 : y1 + 1, x0 : x1 + 1] = int(args[4 + c if image.shape[0] == 3 else 4])


def _fill(values: Sequence[int], channels: int) -> Tensor:
    """uint8 ``[C]``: the fill colour for ``channels`` (one value serves every channel; a
    one-channel image takes the first)."""
    values = list(values)
    return torch.tensor(
        values[:channels] if len(values) >= channels else values * channels, dtype=torch.uint8
    )


def apply_slot(src: Tensor, dst: Tensor, calls: Sequence[Call], fill: Sequence[int]) -> Tensor:
    """``dst[i] = op(calls[i])(src[i])`` for every sample of one op slot; returns ``dst``.

    Args:
        src: contiguous uint8 ``[B, C, H, W]`` on any device.
        dst: contiguous uint8 tensor shaped like ``src`` on its device; may be ``src`` (in
            place). Samples whose call is a no-op are copied (or left, in place).
        calls: ``B`` calls ``(op_id, args, resample)`` (see :data:`OPS`).
        fill: the colour of pixels a warp uncovers (``C`` or 1 values in ``[0, 255]``).
    """
    batch, ch, height, width = src.shape
    # The call's backend, chosen once from the images' device and what is loaded (the kernel
    # table): the native loops on host images, the torch kernels elsewhere.
    native = kernels_for(src.device).backend == "native"
    by_kind: dict[tuple, list[int]] = {}
    for i, (op, args, _) in enumerate(calls):
        name = OPS[op]
        if is_noop(name, args):
            continue
        if name == "Affine":  # one warp group per fill colour (a call may bring its own)
            kind: tuple = (name, tuple(int(v) for v in args[6:9]) or tuple(fill))
        else:
            kind = ("Tables",) if name in _PARAM_TABLES or name in _STAT_TABLES else (name,)
        by_kind.setdefault(kind, []).append(i)
    pack = HostPack()
    groups = []
    covered = 0
    for kind, rows in by_kind.items():
        covered += len(rows)
        sub = [calls[i] for i in rows]
        if kind[0] == "Tables":
            groups.append(_Tables(rows, sub, pack, ch))
        elif kind[0] == "Affine":
            coef = torch.tensor([c[1][:6] for c in sub], dtype=torch.float64).view(-1, 6)
            rows_t = torch.tensor(rows, dtype=torch.int64)
            resample = [c[2] for c in sub]
            fill_slot = pack.add(_fill(kind[1], ch))
            groups.append(
                WarpGroup(rows_t, coef, resample, height, width, src.device, pack, fill_slot)
            )
        elif kind[0] in ("Flip", "Cutout"):
            groups.append(_Mirror(kind[0], rows, sub, pack))
        else:
            groups.append(_Direct(kind[0], rows, sub, pack))
    rest = None
    if dst is not src and covered < batch:
        done = {i for g in by_kind.values() for i in g}
        rest = _Group([i for i in range(batch) if i not in done], pack)
    on_device = pack.to(src.device)  # the one host-to-device copy of this slot
    if rest is not None:
        rest.put(dst, on_device, rest.part(src, on_device))
    for group in groups:
        if isinstance(group, WarpGroup):
            group.run(src, dst, on_device)
        else:
            group.run(src, dst, on_device, native)
    return dst
