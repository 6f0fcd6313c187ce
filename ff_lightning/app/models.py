"""Image classifiers for the recipes: a small CPU-friendly CNN and torchvision architectures.

All start from random weights (nothing can be downloaded where this runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ff_lightning.validation import check_bool, check_choice, check_float, check_int

ARCHS = ("simple_cnn", "resnet18", "resnet50", "vit_b_16", "deit_tiny")


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SimpleCNN(nn.Module):
    """A small VGG-style network: a strided stem, four stages, global average pooling."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        w = check_int("width", width, 1)
        self.features = nn.Sequential(
            _conv_bn(3, w, 2),
            _conv_bn(w, w, 1),
            _conv_bn(w, 2 * w, 2),
            _conv_bn(2 * w, 2 * w, 1),
            _conv_bn(2 * w, 4 * w, 2),
            _conv_bn(4 * w, 4 * w, 1),
            _conv_bn(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_backbone(arch: str, num_classes: int, image_size: int = 224, **kwargs: Any) -> nn.Module:
    """Build ``arch`` with random initialisation and ``num_classes`` outputs."""
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {ARCHS}, got {arch!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}")
    check_int("image_size", image_size, 1)
    try:
        return _backbone(arch, num_classes, image_size, **kwargs)
    except TypeError as err:  # an argument the architecture does not take
        raise ValueError(f"`arch_kwargs` do not fit arch {arch!r}: {err}") from None


def _backbone(arch: str, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    if arch == "simple_cnn":
        return SimpleCNN(num_classes, **kwargs)
    import torchvision.models as tvm

    if arch == "resnet18":
        return tvm.resnet18(weights=None, num_classes=num_classes, **kwargs)
    if arch == "resnet50":
        return tvm.resnet50(weights=None, num_classes=num_classes, **kwargs)
    if image_size % 16 != 0:
        raise ValueError(
            f"{arch} needs `image_size` divisible by its patch size 16, got {image_size}; "
            "set data.image_size=224 (or 96, 128, ...)"
        )
    if arch == "deit_tiny":
        # DeiT-Ti's shape (Touvron et al. 2021): 192 wide, 3 heads, MLP 768, 12 blocks by
        # default (`num_layers` makes a shallower one for CPU runs).
        shape = dict(patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
        shape.update(kwargs)
        return tvm.VisionTransformer(image_size=image_size, num_classes=num_classes, **shape)
    return tvm.vit_b_16(weights=None, num_classes=num_classes, image_size=image_size, **kwargs)


class ImageClassifier(L.LightningModule):
    """Cross-entropy classifier; accepts hard (``long [B]``) or soft (``float [B, C]``) targets."""

    def __init__(
        self,
        arch: str = "simple_cnn",
        num_classes: int = 10,
        image_size: int = 224,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        label_smoothing: float = 0.0,
        scheduler: str = "cosine",
        compile: bool = False,
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("optimizer", optimizer, ("adamw", "sgd"))
        check_choice("scheduler", scheduler, ("cosine", "none"))
        check_float("lr", lr, 0.0, low_open=True)
        check_float("weight_decay", weight_decay, 0.0)
        check_float("momentum", momentum, 0.0)
        check_float("label_smoothing", label_smoothing, 0.0, 1.0)
        check_bool("compile", compile)
        if arch_kwargs is not None and not isinstance(arch_kwargs, Mapping):
            raise ValueError(
                f"`arch_kwargs` must be a mapping of the architecture's arguments, got "
                f"{arch_kwargs!r}"
            )
        self.save_hyperparameters()
        self.net = build_backbone(arch, num_classes, image_size, **(arch_kwargs or {}))
        if compile:
            self.net = torch.compile(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        hard = y.argmax(dim=1) if y.ndim == 2 else y
        acc = (logits.argmax(dim=1) == hard).float().mean()
        # The progress bar turns its metrics into Python numbers at every refresh, a CUDA sync
        # per step for a per-step value; the epoch mean is accumulated on the device and read
        # once per epoch. The per-step curve goes to the logger only, which reads it every
        # `log_every_n_steps` steps.
        self.log(
            f"{stage}_loss",
            loss,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=x.shape[0],
        )
        if stage == "train":
            self.log("train_loss_step", loss, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log(
            f"{stage}_acc",
            acc,
            prog_bar=stage != "train",
            on_step=False,
            on_epoch=True,
            batch_size=x.shape[0],
        )
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(
                self.parameters(),
                lr=hp.lr,
                momentum=hp.momentum,
                weight_decay=hp.weight_decay,
                nesterov=True,
            )
        if hp.scheduler == "none":
            return opt
        total = (
            max(1, int(self.trainer.estimated_stepping_batches))
            if self._trainer is not None
            else 1000
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=hp.lr,
            total_steps=total,
            pct_start=0.15,
            anneal_strategy="cos",
            div_factor=10.0,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LoaderOnly(L.LightningModule):
    """No model: each step reads its batch and computes nothing, so the benchmark measures the
    data pipeline alone (what bounds a job whose device computes fast)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))  # something for the optimiser to hold

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0]
        # One element read: the batch (and its device work) is in hand, nothing is computed.
        return self.scale * images.flatten()[0].float()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)
