"""Batched geometric warps with torchvision's exact coordinate conventions.

torchvision's ``affine_image``/``rotate_image`` build the inverse affine matrix in float64
Python arithmetic, cast it to float32, turn it into a sampling grid (pixel centres, image
centre at the origin, ``align_corners=False``) and call ``grid_sample``. Here the matrix is
built for ``B`` samples at once with the same float64 formula, the grids of all samples are
computed together with the same float32 rounding, and:

- ``nearest``: ``grid_sample`` runs once on a one-channel image of pixel indices, which
  yields exactly the source pixel torchvision's ``grid_sample`` would pick (same kernel, same
  rounding, on every device); the uint8 pixels are then gathered with that index. No float
  copy of the image is made.
- ``bilinear``: ``grid_sample`` runs on the float image, with torchvision's fill handling.
- integer translations are a pure shift for both modes (torchvision's grid lands on pixel
  centres up to float error far below the rounding step), done with a gather.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import grid_sample

from ff_lightning.augment._device import h2d

__all__ = ["atan", "degrees", "inverse_affine", "shift", "warp"]

# Integers up to this are exact in float32; see `_nearest_index`.
_FLOAT32_EXACT_INT = 1 << 24


def _libm(name: str, values: Tensor) -> Tensor:
    """``math.<name>`` of each value: libm's result, as torchvision's Python floats get.

    torch's vectorised float64 ``atan``/``tan`` can differ from libm by one ulp; scaled by
    half the image size, that can flip a float32 rounding tie in the matrix's translation
    entry and so one bilinear output level. On CPU the few per-sample values are computed
    with :mod:`math` (parameters only, about 0.1 us each); elsewhere with torch.
    """
    if values.device.type != "cpu":
        return getattr(torch, name)(values)
    fn = getattr(math, name)
    return torch.tensor([fn(v) for v in values.tolist()], dtype=torch.float64)


def atan(values: Tensor) -> Tensor:
    """``math.atan``, elementwise (see :func:`_libm`)."""
    return _libm("atan", values)


def degrees(values: Tensor) -> Tensor:
    """``math.degrees``, elementwise (same constant, same rounding)."""
    return values * (180.0 / math.pi)


def inverse_affine(
    angle: Tensor,
    shear_x: Tensor,
    shear_y: Tensor,
    center_x: float,
    center_y: float,
) -> Tensor:
    """Inverse affine matrices ``[B, 6]`` (float64), as torchvision's ``_get_inverse_affine_matrix``.

    ``angle``, ``shear_x``, ``shear_y`` are float64 ``[B]`` in degrees; the centre is in
    torchvision's centred pixel coordinates; scale is 1 and translation 0 (translations
    use :func:`shift`).
    """
    to_rad = math.pi / 180.0  # math.radians' constant
    rot = angle * to_rad
    sx = shear_x * to_rad
    sy = shear_y * to_rad
    cos_sy = _libm("cos", sy)
    tan_sx = _libm("tan", sx)
    rot_minus_sy = rot - sy
    sin_rot, cos_rot = _libm("sin", rot), _libm("cos", rot)
    a = _libm("cos", rot_minus_sy) / cos_sy
    b = -(a * tan_sx + sin_rot)
    c = _libm("sin", rot_minus_sy) / cos_sy
    d = cos_rot - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = center_x - m0 * center_x - m1 * center_y
    m5 = center_y - m3 * center_x - m4 * center_y
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1)


def _grid(matrix: Tensor, height: int, width: int, device: torch.device) -> Tensor:
    """Sampling grids ``[B, H, W, 2]`` (float32), bit-identical to torchvision's ``_affine_grid``."""
    bsz = matrix.shape[0]
    theta = h2d(matrix.to(torch.float32), device).view(bsz, 2, 3)
    scale = h2d(torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32), device)
    rescaled = theta.transpose(1, 2).div(scale)  # [B, 3, 2]
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=device)
    if device.type != "cpu":
        # torchvision multiplies the [x, y, 1] base grid by theta with bmm; do the same so
        # that the device's GEMM rounding (fused or not) is reproduced too.
        base = torch.empty(height, width, 3, dtype=torch.float32, device=device)
        base[..., 0].copy_(xs)
        base[..., 1].copy_(ys.unsqueeze(-1))
        base[..., 2].fill_(1.0)
        grid = base.view(1, height * width, 3).expand(bsz, -1, -1).bmm(rescaled)
        return grid.view(bsz, height, width, 2)
    # On CPU that bmm evaluates (x * t0 + y * t1) + t2 without fused multiply-adds; the
    # same expression on separable planes is bit-identical and several times faster.
    xs = xs.view(1, 1, width)
    ys = ys.view(1, height, 1)
    planes = []
    for k in range(2):
        t0, t1, t2 = (rescaled[:, j, k].view(bsz, 1, 1) for j in range(3))
        planes.append((xs * t0 + ys * t1) + t2)
    return torch.stack(planes, dim=-1)


def _gather(
    images: Tensor, index: Tensor, valid: Tensor, fill: list[float] | None, out: Tensor
) -> Tensor:
    """``out[b, c, p] = images[b, c, index[b, p]]`` where ``valid[b, p]`` (uint8 0/1), else fill."""
    bsz, ch, height, width = images.shape
    npix = height * width
    flat_out = out.view(bsz, ch, npix)
    index = index.reshape(bsz, 1, npix).expand(bsz, ch, npix)
    torch.gather(images.view(bsz, ch, npix), 2, index, out=flat_out)
    # uint8 arithmetic instead of torch.where, which is not vectorised for uint8 on CPU.
    valid = valid.reshape(bsz, 1, npix)
    flat_out.mul_(valid)
    fill_u8 = _fill_u8(fill, ch)
    if any(fill_u8):
        fill_t = h2d(torch.tensor(fill_u8, dtype=torch.uint8), images.device)
        flat_out.add_((1 - valid) * fill_t.view(1, ch, 1))
    return out


def _fill_u8(fill: list[float] | None, channels: int) -> list[int]:
    """The fill colour as torchvision lands it in uint8 for ``nearest`` (clamped, rounded)."""
    values = [0.0] if fill is None else fill
    t = torch.tensor(values, dtype=torch.float32).clamp_(0, 255).round_()
    return t.to(torch.uint8).expand(channels).tolist()


def _nearest_index(grid: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The source pixel (int64 ``[B, H*W]``) and inside flag (uint8 0/1) nearest-mode
    ``grid_sample`` picks for every output pixel.

    ``grid_sample`` runs on an image whose pixels hold ``1 + their index`` (0 marks
    "outside"), so the pick is exactly torchvision's, with the device's own kernel. Indices
    must be exact in float32; beyond 2**24 pixels the row and column are sampled apart.
    """
    bsz = grid.shape[0]
    device = grid.device
    flat_grid = grid.view(1, bsz * height, width, 2)  # one source image serves every sample
    if height * width < _FLOAT32_EXACT_INT:
        iota = torch.arange(1, height * width + 1, dtype=torch.float32, device=device)
        src = grid_sample(
            iota.view(1, 1, height, width),
            flat_grid,
            mode="nearest",
            padding_mode="zeros",
            align_corners=False,
        ).view(bsz, height * width)
        valid = src.clamp(max=1.0).to(torch.uint8)
        return src.sub_(1.0).clamp_(min=0.0).to(torch.int64), valid
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    coords = torch.stack(
        [rows.view(height, 1).expand(height, width), cols.view(1, width).expand(height, width)]
    )
    src = grid_sample(
        coords.unsqueeze(0), flat_grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    src = src.view(2, bsz, height * width)
    valid = src[0].clamp(max=1.0).to(torch.uint8)
    row, col = src.sub_(1.0).clamp_(min=0.0).to(torch.int64).unbind(0)
    return row.mul_(width).add_(col), valid


def warp(
    images: Tensor, matrix: Tensor, interpolation: str, fill: list[float] | None, out: Tensor
) -> Tensor:
    """Warp uint8 ``images`` ``[B, C, H, W]`` by per-sample inverse matrices ``[B, 6]`` into ``out``."""
    bsz, ch, height, width = images.shape
    device = images.device
    grid = _grid(matrix, height, width, device)
    if interpolation == "nearest":
        index, valid = _nearest_index(grid, height, width)
        return _gather(images, index, valid, fill, out)

    img = images.to(torch.float32)
    if fill is not None:
        # torchvision appends a ones-channel to know how much of each output pixel came
        # from inside the image, then blends the fill colour in by that amount.
        ones = torch.ones(bsz, 1, height, width, dtype=torch.float32, device=device)
        img = torch.cat((img, ones), dim=1)
    res = grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if fill is not None:
        res, mask = res[:, :ch], res[:, ch:]
        fill_t = h2d(torch.tensor(fill, dtype=torch.float32).clamp_(0, 255), device)
        fill_t = fill_t.expand(ch).view(1, ch, 1, 1)
        res = res.sub(fill_t).mul_(mask).add_(fill_t)
    # Values are in [0, 255]: float -> int16 -> uint8 rounds like torchvision's float -> uint8
    # after round_(), and is several times faster on CPU.
    return out.copy_(res.round_().to(torch.int16))


def shift(images: Tensor, tx: Tensor, ty: Tensor, fill: list[float] | None, out: Tensor) -> Tensor:
    """Translate each image by integer ``(tx[b], ty[b])`` pixels (int64 ``[B]``) into ``out``."""
    bsz, ch, height, width = images.shape
    device = images.device
    tx = h2d(tx, device).view(bsz, 1, 1)
    ty = h2d(ty, device).view(bsz, 1, 1)
    sx = torch.arange(width, device=device).view(1, 1, width) - tx  # [B, 1, W]
    sy = torch.arange(height, device=device).view(1, height, 1) - ty  # [B, H, 1]
    valid = ((sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)).to(torch.uint8)
    index = sy.clamp_(0, height - 1) * width + sx.clamp_(0, width - 1)
    return _gather(images, index, valid, fill, out)
