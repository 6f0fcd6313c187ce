"""The Pillow-semantics kernels against Pillow itself, native loops against torch, device path.

Every op of ``pil_ops`` applied to a batch (each sample its own argument) must give, per sample,
the bytes Pillow gives for that image and argument; the native loops and the torch kernels must
give the same bytes; the device path must run without reading a device value (``meta``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ff_lightning.augment import _native, _pil_native, pil_color, pil_warp
from ff_lightning.augment.pil_ops import OP_ID, OPS, apply_slot, is_noop

Image = pytest.importorskip("PIL.Image")
from PIL import ImageDraw, ImageEnhance, ImageFilter, ImageOps  # noqa: E402

FILL = (124, 116, 104)


def _images(b: int = 6, h: int = 37, w: int = 45, seed: int = 0) -> torch.Tensor:
    """Noise on smooth gradients, some images of low contrast (tables then matter)."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w)
    base = 200 * ys + 40 * xs + torch.rand(b, 3, 1, 1, generator=g) * 50
    x = base + torch.randn(b, 3, h, w, generator=g) * 20
    x[::2] = x[::2] * 0.5 + 40
    return x.clamp(0, 255).to(torch.uint8)


def _pil(x: torch.Tensor):
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def _tensor(im) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def _both(fn):
    """``fn()`` with the native loops, then with the torch kernels; both results."""
    native = fn()
    with _native.disabled():
        torch_out = fn()
    return native, torch_out


# ---------------------------------------------------------------- warps
_MATRICES = [
    ("shear x", lambda w, h: pil_warp.shear(0.23, 0)),
    ("shear y", lambda w, h: pil_warp.shear(-0.17, 1)),
    ("translate x", lambda w, h: pil_warp.translate(-7.3, 0.0)),
    ("translate y", lambda w, h: pil_warp.translate(0.0, 12.6)),
    ("translate int", lambda w, h: pil_warp.translate(5.0, -3.0)),
    ("rotate", lambda w, h: pil_warp.rotate(17.3, w, h)),
    ("rotate neg", lambda w, h: pil_warp.rotate(-29.0, w, h)),
    ("rotate 180", lambda w, h: pil_warp.rotate(180.0, w, h)),
    ("crop", lambda w, h: pil_warp.crop_resize(5, 3, 20, 17, w, h)),
]


@pytest.mark.parametrize("mode", [0, 2, 3])
@pytest.mark.parametrize(("size"), [(37, 45), (32, 32)])
def test_affine_matches_pillow(mode, size):
    h, w = size
    x = _images(len(_MATRICES), h, w)
    coef = torch.tensor([m(w, h) for _, m in _MATRICES], dtype=torch.float64)
    fill = torch.tensor(FILL, dtype=torch.uint8)

    def run():
        out = torch.empty_like(x)
        pil_warp.warp(x, out, None, coef, [mode] * len(coef), fill)
        return out

    native, torch_out = _both(run)
    assert torch.equal(native, torch_out)
    for i, (name, m) in enumerate(_MATRICES):
        im = _pil(x[i])
        ref = im.transform(im.size, Image.AFFINE, m(w, h), resample=mode, fillcolor=FILL)
        assert torch.equal(native[i], _tensor(ref)), (name, mode)


@pytest.mark.parametrize("mode", [0, 2, 3])
def test_rotate_matrix_is_pillows(mode):
    x = _images(3)
    for i, deg in enumerate((12.5, -30.0, 90.0)):
        out = torch.empty_like(x[i : i + 1])
        coef = torch.tensor([pil_warp.rotate(deg, 45, 37)], dtype=torch.float64)
        pil_warp.warp(x[i : i + 1], out, None, coef, [mode], torch.tensor(FILL, dtype=torch.uint8))
        ref = _pil(x[i]).rotate(deg, resample=mode, fillcolor=FILL)
        assert torch.equal(out[0], _tensor(ref)), deg


def test_warp_rows_in_place():
    x = _images(5)
    coef = torch.tensor([pil_warp.rotate(20.0, 45, 37)] * 2, dtype=torch.float64)
    rows = torch.tensor([3, 1])
    fill = torch.tensor(FILL, dtype=torch.uint8)
    for native in (True, False):
        y = x.clone()
        if native:
            pil_warp.warp(y, y, rows, coef, [3, 0], fill)
        else:
            with _native.disabled():
                pil_warp.warp(y, y, rows, coef, [3, 0], fill)
        assert torch.equal(y[[0, 2, 4]], x[[0, 2, 4]])
        ref = _tensor(_pil(x[3]).rotate(20.0, resample=3, fillcolor=FILL))
        assert torch.equal(y[3], ref)


# ---------------------------------------------------------------- colour
@pytest.mark.parametrize("factor", [0.0, 0.1, 0.55, 1.0, 1.37, 1.9])
def test_enhance_ops_match_pillow(factor):
    x = _images(4)
    enhance = {
        "Color": ImageEnhance.Color,
        "Sharpness": ImageEnhance.Sharpness,
        "Contrast": ImageEnhance.Contrast,
        "Brightness": ImageEnhance.Brightness,
    }
    for name, cls in enhance.items():
        calls = [(OP_ID[name], (factor,), 0)] * len(x)
        native, torch_out = _both(
            lambda calls=calls: apply_slot(x, torch.empty_like(x), calls, FILL)
        )
        assert torch.equal(native, torch_out), name
        for i in range(len(x)):
            assert torch.equal(native[i], _tensor(cls(_pil(x[i])).enhance(factor))), (name, i)


def test_table_ops_match_pillow():
    x = _images(6)
    cases = [
        ("Posterize", (3,), lambda im: ImageOps.posterize(im, 3)),
        ("Posterize", (1,), lambda im: ImageOps.posterize(im, 1)),
        ("Solarize", (100,), lambda im: ImageOps.solarize(im, 100)),
        ("Solarize", (21.333,), lambda im: ImageOps.solarize(im, 21.333)),
        ("SolarizeAdd", (50, 128), None),
        ("Invert", (), ImageOps.invert),
        ("AutoContrast", (), ImageOps.autocontrast),
        ("Equalize", (), ImageOps.equalize),
    ]
    # one call per sample, all ops in one slot: one table group
    calls = [(OP_ID[n], a, 0) for n, a, _ in cases[: len(x)]]
    native, torch_out = _both(lambda: apply_slot(x, torch.empty_like(x), calls, FILL))
    assert torch.equal(native, torch_out)
    for i, (name, _, ref) in enumerate(cases[: len(x)]):
        if ref is None:  # timm's solarize_add: values below 128 get +50, capped
            v = x[i].to(torch.int32)
            expected = torch.where(v < 128, (v + 50).clamp(max=255), v).to(torch.uint8)
        else:
            expected = _tensor(ref(_pil(x[i])))
        assert torch.equal(native[i], expected), name
    for name, args, ref in cases[len(x) :]:
        calls = [(OP_ID[name], args, 0)] * len(x)
        out = apply_slot(x, torch.empty_like(x), calls, FILL)
        for i in range(len(x)):
            assert torch.equal(out[i], _tensor(ref(_pil(x[i])))), name


def test_posterize_below_one_bit_is_black():
    x = _images(2)
    out = apply_slot(x, torch.empty_like(x), [(OP_ID["Posterize"], (0,), 0)] * 2, FILL)
    assert not out.any()
    out = apply_slot(x, torch.empty_like(x), [(OP_ID["Posterize"], (-1,), 0)] * 2, FILL)
    assert not out.any()


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 1.7, 2.0])
def test_gaussian_blur_matches_pillow(sigma):
    x = _images(3)
    calls = [(OP_ID["GaussianBlur"], (sigma,), 0)] * 3
    out, torch_out = _both(lambda: apply_slot(x, torch.empty_like(x), calls, FILL))
    assert torch.equal(out, torch_out)
    for i in range(3):
        ref = _pil(x[i]).filter(ImageFilter.GaussianBlur(sigma))
        assert torch.equal(out[i], _tensor(ref)), sigma


def test_box_radius_is_pillows_formula():
    # Pillow's _gaussian_blur_radius in float64 for reference: the float32 version stays close
    for sigma in (0.1, 0.7, 2.0, 5.0):
        s2 = sigma * sigma / 3
        big = math.sqrt(12 * s2 + 1)
        small = math.floor((big - 1) / 2)
        a = (2 * small + 1) * (small * (small + 1) - 3 * s2) / (6 * (s2 - (small + 1) ** 2))
        assert pil_color.box_radius(sigma) == pytest.approx(small + a, rel=1e-5)


def test_flip_and_cutout_match_pillow():
    x = _images(4)
    calls = [
        (OP_ID["Flip"], (), 0),
        (OP_ID["Cutout"], (3, 5, 18, 44, 125, 123, 114), 0),
        (OP_ID["Cutout"], (0, 0, 45, 37, 1, 2, 3), 0),
        (OP_ID["Identity"], (), 0),
    ]
    out, torch_out = _both(lambda: apply_slot(x, torch.empty_like(x), calls, FILL))
    assert torch.equal(out, torch_out)
    in_place = x.clone()
    apply_slot(in_place, in_place, calls, FILL)
    assert torch.equal(in_place, out)
    assert torch.equal(out[0], _tensor(ImageOps.mirror(_pil(x[0]))))
    for i in (1, 2):
        im = _pil(x[i]).copy()
        ImageDraw.Draw(im).rectangle(calls[i][1][:4], tuple(calls[i][1][4:]))
        assert torch.equal(out[i], _tensor(im))
    assert torch.equal(out[3], x[3])


# ---------------------------------------------------------------- slots
def test_mixed_slot_in_place_and_noops():
    x = _images(8)
    calls = [
        (OP_ID["Affine"], pil_warp.rotate(10.0, 45, 37), 3),
        (OP_ID["Color"], (1.0,), 0),  # a no-op: skipped
        (OP_ID["Equalize"], (), 0),
        (OP_ID["Affine"], (*pil_warp.translate(3.0, 1.0), 9, 8, 7), 0),  # its own fill
        (OP_ID["Sharpness"], (0.3,), 0),
        (OP_ID["GaussianBlur"], (0.0,), 0),  # a no-op
        (OP_ID["Contrast"], (0.4,), 0),
        (OP_ID["Affine"], pil_warp.IDENTITY, 2),  # a no-op
    ]
    assert [is_noop(OPS[op], a) for op, a, _ in calls] == [0, 1, 0, 0, 0, 1, 0, 1]
    fresh = apply_slot(x, torch.empty_like(x), calls, FILL)
    in_place = x.clone()
    apply_slot(in_place, in_place, calls, FILL)
    assert torch.equal(fresh, in_place)
    with _native.disabled():
        assert torch.equal(apply_slot(x, torch.empty_like(x), calls, FILL), fresh)
    for i in (1, 5, 7):
        assert torch.equal(fresh[i], x[i])
    im = _pil(x[3])
    ref = im.transform(im.size, Image.AFFINE, pil_warp.translate(3.0, 1.0), fillcolor=(9, 8, 7))
    assert torch.equal(fresh[3], _tensor(ref))


def test_one_channel_images():
    x = _images(4)[:, :1].contiguous()
    calls = [
        (OP_ID["Color"], (0.3,), 0),
        (OP_ID["Contrast"], (0.3,), 0),
        (OP_ID["Affine"], pil_warp.rotate(15.0, 45, 37), 2),
        (OP_ID["AutoContrast"], (), 0),
    ]
    native, torch_out = _both(lambda: apply_slot(x, torch.empty_like(x), calls, FILL))
    assert torch.equal(native, torch_out)
    im = Image.fromarray(x[1, 0].numpy())
    assert torch.equal(
        native[1, 0], torch.from_numpy(np.array(ImageEnhance.Contrast(im).enhance(0.3)))
    )
    assert torch.equal(native[0], x[0])  # Color of an "L" image is the image
    rot = Image.fromarray(x[2, 0].numpy()).rotate(15.0, resample=2, fillcolor=FILL[0])
    assert torch.equal(native[2, 0], torch.from_numpy(np.array(rot)))


def test_device_path_reads_no_device_value():
    """The torch path on ``meta`` images (no storage: any host read of a value raises)."""
    x = _images(6).to("meta")
    calls = [
        (OP_ID["Affine"], pil_warp.rotate(10.0, 45, 37), 3),
        (OP_ID["Affine"], pil_warp.translate(3.5, 0.0), 0),
        (OP_ID["Affine"], pil_warp.shear(0.2, 0), 0),
        (OP_ID["Equalize"], (), 0),
        (OP_ID["Contrast"], (0.5,), 0),
        (OP_ID["GaussianBlur"], (1.0,), 0),
    ]
    out = apply_slot(x, torch.empty_like(x), calls, FILL)
    assert out.device.type == "meta" and out.shape == x.shape
    more = [(OP_ID["Color"], (0.5,), 0), (OP_ID["Sharpness"], (1.5,), 0), (OP_ID["Flip"], (), 0)]
    more += [(OP_ID["Cutout"], (1, 1, 5, 5, 0, 0, 0), 0), (OP_ID["AutoContrast"], (), 0)]
    more += [(OP_ID["Posterize"], (3,), 0)]
    apply_slot(out, out, more, FILL)


def test_native_library_loads():
    if _native.lib() is None:
        pytest.skip("no C compiler: the torch kernels run everywhere")
    assert _pil_native.lib() is not None


def test_without_the_native_library_the_torch_kernels_run():
    """The Pillow loops are part of the package's one native library: with it off, the torch
    kernels give the same bytes."""
    x = _images(6)
    calls = [
        (OP_ID["Affine"], pil_warp.rotate(10.0, 45, 37), 3),
        (OP_ID["Contrast"], (0.5,), 0),
        (OP_ID["Color"], (1.5,), 0),
        (OP_ID["Sharpness"], (0.2,), 0),
        (OP_ID["GaussianBlur"], (0.8,), 0),
        (OP_ID["Equalize"], (), 0),
    ]
    expected = apply_slot(x, torch.empty_like(x), calls, FILL)
    with _native.disabled():
        assert _pil_native.lib() is None
        assert torch.equal(apply_slot(x, torch.empty_like(x), calls, FILL), expected)
