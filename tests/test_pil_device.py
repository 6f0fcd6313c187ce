"""The Pillow-semantics policies' device path, checked without a device (``meta``) and on CUDA.

On ``meta`` images (no storage: any host read of a device value raises) every policy must run,
with at most one host-to-device copy per applied op slot (AugMix: one more, its weights). On a
CUDA device (tests marked ``cuda``) the result must equal the CPU route's bytes, without a
stream synchronisation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ff_lightning.augment import _device, build_policy, timm_augmix
from ff_lightning.augment.deepaa import DeepAA

HP = {"translate_const": 20, "img_mean": (124, 116, 104)}


def _policy_file(tmp_path):
    names = ["Identity:(0.0,,1.0", "Rotate:(-30.0,,30.0", "TranslateX:(-0.45,,0.45"]
    names += ["Equalize:(0.0,,1.0", "Contrast:(0.1,,1.9", "RandFlip:(0.0,,1.0"]
    names += ["RandCutout60:(0.0,,1.0", "RandResizeCrop_imagenet:(0.0,,1.0", "RandCrop:(0.0,,1.0"]
    ops = np.arange(9, dtype=np.int32)[:, None]
    mags = np.array([6, 2, 10, 6, 3, 6, 6, 6, 6], np.int32)[:, None]
    probs = np.full((3, 9), 1 / 9, np.float32)
    path = tmp_path / "p.npz"
    np.savez(path, policy_probs=probs, ops=ops, mags=mags, op_names=np.array(names), l_mags=13)
    return path


def _policies(tmp_path):
    return [
        build_policy("timm_randaugment", config="rand-m9-mstd0.5-inc1", hparams=dict(HP)),
        build_policy("timm_randaugment", config="rand-n3-m9-t3aw", hparams=dict(HP)),
        build_policy("timm_autoaugment", config="original", hparams=dict(HP)),
        build_policy("timm_augmix", config="augmix-m3-w3", hparams=dict(HP)),
        build_policy("timm_augmix", config="augmix-m3-w2-b1", hparams=dict(HP)),
        DeepAA(_policy_file(tmp_path), "paper"),
    ]


def _images(b: int, h: int = 40, w: int = 36) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("index", range(6))
def test_meta_device_path_one_copy_per_slot(index, tmp_path, monkeypatch):
    pol = _policies(tmp_path)[index]
    copies = []
    real = _device.h2d

    def counting(t, device):
        copies.append(tuple(t.shape))
        return real(t, device)

    monkeypatch.setattr(_device, "h2d", counting)
    monkeypatch.setattr(timm_augmix, "h2d", counting)
    rec = pol.sample(torch.arange(24), 0, 0)
    x = torch.empty(24, 3, 40, 36, dtype=torch.uint8, device="meta")
    out = pol.apply_batch(x, rec)
    assert out.device.type == "meta" and out.shape == x.shape
    slots = int(rec.applied.any(0).sum())
    extra = 1 if pol.num_weights else 0
    assert 0 < len(copies) <= slots + extra


@pytest.mark.cuda
@pytest.mark.parametrize("index", range(6))
def test_cuda_equals_cpu_without_synchronising(index, tmp_path):
    pol = _policies(tmp_path)[index]
    x = _images(32, 64, 56)
    rec = pol.sample(torch.arange(32), 0, 0)
    cpu = pol.apply_batch(x, rec)
    pol.apply_batch(x.cuda(), rec)  # warm-up: allocator and pinned-memory pools
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pol.apply_batch(x.cuda(), rec)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out.cpu(), cpu)
