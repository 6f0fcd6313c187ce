"""Batched geometric warps with torchvision's exact coordinate conventions.

torchvision's ``affine_image``/``rotate_image`` build the inverse affine matrix in float64
Python arithmetic, cast it to float32, turn it into a sampling grid (pixel centres, image
centre at the origin, ``align_corners=False``) and call ``grid_sample``. Here the matrix is
built for ``B`` samples at once with the same float64 formula, the grids of all samples come
from one ``bmm``, and:

- ``nearest``: ``grid_sample`` runs once on a one-channel image of pixel indices, which
  yields exactly the source pixel torchvision's ``grid_sample`` would pick (same kernel, same
  rounding, on every device); the uint8 pixels are then gathered with that index. No float
  copy of the image is made.
- ``bilinear``: ``grid_sample`` runs on the float image, with torchvision's fill handling.
- integer translations are a pure shift for both modes (torchvision's grid lands on pixel
  centres up to float error far below the rounding step), done with a gather.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import grid_sample

__all__ = ["inverse_affine", "shift", "warp"]


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
    rot = torch.deg2rad(angle)
    sx = torch.deg2rad(shear_x)
    sy = torch.deg2rad(shear_y)
    cos_sy = torch.cos(sy)
    tan_sx = torch.tan(sx)
    rot_minus_sy = rot - sy
    a = torch.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot_minus_sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = center_x - m0 * center_x - m1 * center_y
    m5 = center_y - m3 * center_x - m4 * center_y
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1)


def _grid(matrix: Tensor, height: int, width: int, device: torch.device) -> Tensor:
    """Sampling grids ``[B, H, W, 2]`` (float32) of torchvision's ``_affine_grid``."""
    bsz = matrix.shape[0]
    theta = matrix.to(torch.float32).to(device).view(bsz, 2, 3)
    base = torch.empty(height, width, 3, dtype=torch.float32, device=device)
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=device)
    base[..., 0].copy_(xs)
    base[..., 1].copy_(ys.unsqueeze(-1))
    base[..., 2].fill_(1.0)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32, device=device)
    rescaled = theta.transpose(1, 2).div(scale)  # [B, 3, 2]
    grid = base.view(1, height * width, 3).expand(bsz, -1, -1).bmm(rescaled)
    return grid.view(bsz, height, width, 2)


def _gather(images: Tensor, index: Tensor, valid: Tensor, fill: Tensor) -> Tensor:
    """``out[b, c, p] = images[b, c, index[b, p]]`` where ``valid[b, p]``, else ``fill[c]``."""
    bsz, ch, height, width = images.shape
    flat = images.reshape(bsz, ch, height * width)
    index = index.reshape(bsz, 1, height * width).expand(bsz, ch, height * width)
    out = torch.gather(flat, 2, index)
    out = torch.where(valid.reshape(bsz, 1, height * width), out, fill.view(1, ch, 1))
    return out.view(bsz, ch, height, width)


def _fill_u8(fill: list[float] | None, channels: int, device: torch.device) -> Tensor:
    values = [0.0] if fill is None else fill
    t = torch.tensor(values, dtype=torch.float32, device=device).clamp_(0, 255).round_()
    return t.to(torch.uint8).expand(channels).contiguous()


def warp(images: Tensor, matrix: Tensor, interpolation: str, fill: list[float] | None) -> Tensor:
    """Warp uint8 ``images`` ``[B, C, H, W]`` by per-sample inverse matrices ``[B, 6]``."""
    bsz, ch, height, width = images.shape
    device = images.device
    grid = _grid(matrix, height, width, device)
    if interpolation == "nearest":
        # grid_sample on an image of (1 + pixel index): 0 marks "outside", and the picked
        # value is exactly the pixel torchvision's grid_sample would pick.
        iota = torch.arange(1, height * width + 1, dtype=torch.float32, device=device)
        src = grid_sample(
            iota.view(1, 1, height, width),
            grid.view(1, bsz * height, width, 2),
            mode="nearest",
            padding_mode="zeros",
            align_corners=False,
        )
        index = src.view(bsz, height * width).to(torch.int64)
        valid = index > 0
        index = index.sub_(1).clamp_(min=0)
        return _gather(images, index, valid, _fill_u8(fill, ch, device))

    img = images.to(torch.float32)
    if fill is not None:
        # torchvision appends a ones-channel to know how much of each output pixel came
        # from inside the image, then blends the fill colour in by that amount.
        ones = torch.ones(bsz, 1, height, width, dtype=torch.float32, device=device)
        img = torch.cat((img, ones), dim=1)
    out = grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if fill is not None:
        out, mask = out[:, :ch], out[:, ch:]
        fill_t = torch.tensor(fill, dtype=torch.float32, device=device).clamp_(0, 255)
        fill_t = fill_t.expand(ch).view(1, ch, 1, 1)
        out = out.sub(fill_t).mul_(mask).add_(fill_t)
    return out.round_().to(torch.uint8)


def shift(images: Tensor, tx: Tensor, ty: Tensor, fill: list[float] | None) -> Tensor:
    """Translate each image by integer ``(tx[b], ty[b])`` pixels (int64 ``[B]``), filling."""
    bsz, ch, height, width = images.shape
    device = images.device
    tx = tx.to(device).view(bsz, 1, 1)
    ty = ty.to(device).view(bsz, 1, 1)
    sx = torch.arange(width, device=device).view(1, 1, width) - tx  # [B, 1, W]
    sy = torch.arange(height, device=device).view(1, height, 1) - ty  # [B, H, 1]
    valid = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
    index = sy.clamp_(0, height - 1) * width + sx.clamp_(0, width - 1)
    return _gather(images, index, valid, _fill_u8(fill, ch, device))
