"""How one op slot of a batch is cut into vectorised calls ("groups").

Every distinct op of a slot used to be its own group: a row selection, a handful of small
kernels and a scatter back, with the parameters prepared by a dozen torch calls on tiny
tensors. On a CPU that fixed cost (0.3-1 ms per group on the 2-core development machine) is
paid once per op whatever the group's size, and RandAugment spreads 64 samples over 14 ops:
at 96 px most of ``apply_batch``'s time was that fixed cost. Now:

- the planning runs on Python lists, and each op's parameters are prepared once per distinct
  magnitude (cached: a policy's magnitudes come from a few bins);
- **one lookup-table group** takes Contrast, AutoContrast and Equalize: tables built on the
  256 possible values from each image's statistics, applied in one gather;
- **one affine group** (ShearX, ShearY, Rotate) and **one shift group** (TranslateX,
  TranslateY): ops that share a kernel whose parameters are per-sample rows run as one call
  with the rows concatenated;
- with the torch kernels, Brightness, Posterize, Solarize, Invert, Color and Sharpness stay
  one group each (their direct kernels cost less per pixel than torch's table gather; measured
  with ``recipes/benchmark_augment.py --vs-pil`` at 96 and 224 px);
- where the table lookup is native (host images with the native loops: the kernel table,
  :mod:`ff_lightning.augment.dispatch`, gives a native ``"lut.group"``), every op with a table
  (the seven colour-table ops) is one group: statistics, tables and the lookup are native,
  straight on the batch rows (no selection or scatter), and Color and Sharpness run their
  native loops.

Every sample's result is the one its op alone gives (the tests compare both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ff_lightning.augment import _color
from ff_lightning.augment.dispatch import register_kernel
from ff_lightning.augment.registry import REGISTRY, OpDef, _Ctx, _rows, _select

__all__ = ["LUT_CHUNK_ELEMENTS", "Group", "plan_groups"]

#: Pixel values (n*C*H*W) per lookup-table pass on CPU: the pass's int32 index and the
#: selected rows stay cache-resident.
LUT_CHUNK_ELEMENTS = 1 << 20


class Group:
    """One vectorised call over the samples ``idx`` (host int64; ``None``: every sample, in
    order). ``tensors`` are its host parameters; they travel to the device in the call's one
    packed copy and come back to :meth:`run` in the same order."""

    def __init__(self, idx: Tensor | None, tensors: Sequence[Tensor]) -> None:
        self.idx = idx
        self.tensors = list(tensors)

    def run(
        self, ctx: _Ctx, src: Tensor, dst: Tensor, idx_dev: Tensor | None, params: list[Tensor]
    ) -> None:
        raise NotImplementedError


def _kernel(ctx: _Ctx, ref: Any) -> Any:
    """An op's runner or table builder: looked up in the call's kernel table by name, or
    the callable itself."""
    return ctx.kernels[ref] if isinstance(ref, str) else ref


class _OpGroup(Group):
    """The samples of one op (or of a family of ops sharing its runner)."""

    def __init__(self, op: OpDef, idx: Tensor | None, tensors: Sequence[Tensor]) -> None:
        super().__init__(idx, tensors)
        self.op = op

    def run(self, ctx, src, dst, idx_dev, params) -> None:
        assert self.op.run is not None
        run = _kernel(ctx, self.op.run)
        run(ctx, src, dst, self.idx, idx_dev, tuple(params), tuple(self.tensors))


Member = tuple[OpDef, "Tensor | None", list[float]]  # op, its samples (None: all), magnitudes

_PREPARED: dict[tuple, tuple[Tensor, ...]] = {}
_PREPARED_MAX = 4096


def _prepared(op: OpDef, ctx: _Ctx, value: float) -> tuple[Tensor, ...]:
    """``op.prepare`` of one magnitude (rows of 1), cached: a policy's magnitudes come from a
    few bins, and a per-sample prepare is a dozen torch calls on tiny tensors."""
    fill = None if ctx.fill is None else tuple(ctx.fill)
    key = (op.name, ctx.height, ctx.width, ctx.channels, ctx.interpolation, fill, value)
    hit = _PREPARED.get(key)
    if hit is None:
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.clear()
        hit = op.prepare(torch.tensor([value], dtype=torch.float64), ctx)
        _PREPARED[key] = hit
    return hit


def _prepare(members: Sequence[Member], ctx: _Ctx) -> list[Tensor]:
    """``prepare`` of every member's magnitudes, in order: per-sample tensors with one row per
    sample, then the shared ones (the fill colour: the first member's cached tensors, which
    runners only read). The members share a runner, so their prepared tensors line up."""
    per: list[tuple[Tensor, ...]] = []
    for op, _, mags in members:
        distinct = {v: _prepared(op, ctx, v) for v in dict.fromkeys(mags)}
        per.extend(distinct[v] for v in mags)
    op = members[0][0]
    k = len(per[0]) if op.per_sample is None else op.per_sample
    # New tensors every call (``cat`` never aliases its input): kernels get rows they may
    # own, never the cached ones.
    return [*(torch.cat([p[j] for p in per]) for j in range(k)), *per[0][k:]]


def _samples(members: Sequence[Member]) -> Tensor | None:
    """The members' samples, in order (one member may cover every sample: ``None``)."""
    if len(members) == 1:
        return members[0][1]
    return torch.cat([m_idx for _, m_idx, _ in members])  # several ops: never None


class _LutGroup(Group):
    """The table-mapped ops of a slot: tables ``[n, C, 256]`` per op, one gather for all."""

    def __init__(self, members: list[Member], ctx: _Ctx) -> None:
        # Equalize first: its histogram reads the index rows from offset 0.
        members = sorted(members, key=lambda e: e[0].name != "Equalize")
        self.spans: list[tuple[OpDef, int, int, int]] = []
        tensors: list[Tensor] = []
        start = 0
        for member in members:
            op, mags = member[0], member[2]
            prepared = _prepare([member], ctx)
            self.spans.append((op, start, start + len(mags), len(prepared)))
            tensors.extend(prepared)
            start += len(mags)
        super().__init__(_samples(members), tensors)

    def run(self, ctx, src, dst, idx_dev, params) -> None:
        ctx.kernels["lut.group"](self, ctx, src, dst, idx_dev, params)

    def _tables(self, ctx, params, lo: int, hi: int, channels: int, stats) -> Tensor:
        """uint8 ``[hi - lo, C, 256]``: the tables of samples ``lo:hi``, each op's builder
        called once on its rows, joined in one ``cat``; ``stats(a, b)``: the
        :class:`~ff_lightning.augment._color.TableStats` of ``a:b``."""
        parts: list[Tensor] = []
        pos = 0
        for op, start, stop, count in self.spans:
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                assert op.lut is not None
                own = tuple(p[a - start : b - start] for p in params[pos : pos + count])
                table = _kernel(ctx, op.lut)(stats(a, b), *own)  # [b - a, 1 or C, 256]
                parts.append(table.expand(b - a, channels, 256))
            pos += count
        if len(parts) == 1:
            return parts[0].contiguous()
        return torch.cat(parts)


@register_kernel("lut.group", "cpu", "native")
def _lut_group_native(group: _LutGroup, ctx, src, dst, idx_dev, params) -> None:
    """Host images, native loops: statistics and the lookup straight on the batch rows (no
    row selection, no index pass, no scatter back)."""
    n = src.shape[0] if group.idx is None else group.idx.shape[0]
    ch, npix = src.shape[1], src[0, 0].numel()
    rows = group.idx
    hist, luma_sum = ctx.kernels["hist"], ctx.kernels.get("luma_sum")

    def stats(a: int, b: int) -> _color.TableStats:
        sub = torch.arange(a, b) if rows is None else rows[a:b]  # batch rows of a:b
        return _color.TableStats(
            b - a,
            ch,
            npix,
            src.device,
            images=lambda: src[a:b] if rows is None else _select(src, sub),
            hist=lambda: hist(src, sub),
            luma_sum=None if luma_sum is None else (lambda: luma_sum(src, sub)),
        )

    luts = group._tables(ctx, params, 0, n, ch, stats)
    ctx.kernels["lut.apply"](src, dst, rows, luts)


@register_kernel("lut.group", "any", "torch")
def _lut_group_torch(group: _LutGroup, ctx, src, dst, idx_dev, params) -> None:
    """Torch kernels: per chunk, an index pass, the tables, one gather (cache-sized chunks on
    CPU, the whole group elsewhere)."""
    n = src.shape[0] if group.idx is None else group.idx.shape[0]
    per = n
    if src.device.type == "cpu":  # cache-sized chunks (see the runners' `_dense`)
        per = max(1, LUT_CHUNK_ELEMENTS // src[0].numel())
    for start in range(0, n, per):
        _lut_chunk(group, ctx, src, dst, idx_dev, params, start, min(start + per, n))


def _lut_chunk(group: _LutGroup, ctx, src, dst, idx_dev, params, lo: int, hi: int) -> None:
    """Samples ``lo:hi`` of the group: their tables, then one gather."""
    if group.idx is None:
        part = src[lo:hi]
    else:
        part = _select(src, idx_dev[lo:hi])
    ch, npix = part.shape[1], part[0, 0].numel()
    index = _color.lut_index(part)  # [(hi - lo) * C, H * W] int32, rows offset by 256

    def stats(a: int, b: int) -> _color.TableStats:
        rows = slice((a - lo) * ch, (b - lo) * ch)
        return _color.TableStats(
            b - a,
            ch,
            npix,
            src.device,
            images=lambda: part[a - lo : b - lo],
            hist=lambda: _color.histograms(index[rows], rows.start, rows.stop - rows.start),
        )

    luts = group._tables(ctx, params, lo, hi, ch, stats)
    if group.idx is None:
        _color.apply_luts(luts, index, dst[lo:hi])
    else:
        mapped = _color.apply_luts(luts, index, torch.empty_like(part))
        _rows(dst).index_copy_(0, idx_dev[lo:hi], _rows(mapped))


def _family_group(members: list[Member], ctx: _Ctx) -> Group:
    """One group for ops sharing a runner: per-sample rows concatenated, shared tensors once."""
    return _OpGroup(members[0][0], _samples(members), _prepare(members, ctx))


def plan_groups(ids: Tensor, m: Tensor, names: Sequence[str], ctx: _Ctx) -> list[Group]:
    """The groups that apply ``names[ids[i]]`` with magnitude ``m[i]`` to every sample ``i``.

    ``ids``/``m`` are host tensors; the planning itself runs on Python lists (a torch call
    on a tiny tensor costs microseconds, and a slot has dozens). Samples on which their op is
    exactly the identity are left out when they are many (the caller copies what no group
    covers).
    """
    batch = ids.shape[0]
    values = m.tolist()
    members: dict[int, list[int]] = {}
    for i, k in enumerate(ids.tolist()):
        members.setdefault(k, []).append(i)
    # Ops with a direct kernel join the table group where the lookup is native (cheaper per
    # pixel than their direct kernels); with torch's gather they keep their own kernels.
    tables_first = ctx.kernels.is_native("lut.group")
    luts: list[Member] = []
    families: dict[str, list[Member]] = {}
    groups: list[Group] = []
    for k, rows in members.items():
        op = REGISTRY[names[k]]
        if op.kind == "identity":
            continue
        if op.noop is not None:
            active = [i for i in rows if not op.noop(values[i])]
            if not active:
                continue
            if 2 * len(active) <= len(rows):  # few active: restrict the group to them
                rows = active
        mags = [values[i] for i in rows]
        idx = None if len(rows) == batch else torch.tensor(rows, dtype=torch.int64)
        if op.lut is not None and (op.run is None or tables_first):
            luts.append((op, idx, mags))
        elif op.family is not None:
            families.setdefault(op.family, []).append((op, idx, mags))
        else:
            groups.append(_family_group([(op, idx, mags)], ctx))
    if luts:
        groups.append(_LutGroup(luts, ctx))
    groups.extend(_family_group(members, ctx) for members in families.values())
    return groups
