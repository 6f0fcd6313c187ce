"""Self-supervised models for the multi-view recipes: SimCLR and DINO on a small backbone.

:class:`SelfSupervised` receives what a multi-view :class:`~ff_lightning.FusionDataModule`
hands its ``training_step``: ``(views, targets)`` with ``views`` a list of ``[B, C, S_v, S_v]``
tensors (the targets are not used for training). Both losses are written here with torch:

- ``simclr``: a projection MLP and the NT-Xent loss over the first two views (every other view
  of the batch is a negative), temperature ``temperature``;
- ``dino``: a student (backbone + DINO head) on every view and a teacher (an exponential moving
  average of the student, momentum ``teacher_momentum``) on the global views (those of the first
  view's size); the cross-entropy between the centred, sharpened teacher outputs
  (``teacher_temperature``) and the student's (``temperature``) over every pair of different
  views, the centre an average of the teacher's outputs (``center_momentum``).

Validation reports ``val_acc``: the leave-one-out weighted k-NN accuracy (``knn_k`` neighbours,
cosine similarity, as DINO's k-NN evaluation weighs them) of the validation set's backbone
features (the teacher's for DINO), a cheap measure of what the features learned. Everything
starts from random weights (nothing is downloaded).
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ff_lightning.app.models import SimpleCNN
from ff_lightning.validation import check_choice, check_float, check_int

__all__ = ["METHODS", "SelfSupervised", "dino_loss", "nt_xent"]

METHODS = ("simclr", "dino")
ARCHS = ("simple_cnn", "resnet18")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two batches of projections ``[B, D]`` (row ``i`` of each are
    the two views of sample ``i``; the other ``2B - 2`` rows are its negatives)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own positive
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, target)


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """DINO's loss: the mean over pairs (teacher view ``t``, student view ``s``, ``s != t``) of
    the cross-entropy between the centred, sharpened teacher distribution and the student's."""
    targets = [F.softmax((t - center) / teacher_temperature, dim=-1).detach() for t in teacher]
    logs = [F.log_softmax(s / temperature, dim=-1) for s in student]
    total, pairs = student[0].new_zeros(()), 0
    for i, q in enumerate(targets):
        for j, lp in enumerate(logs):
            if i == j:
                continue  # the same view seen by both networks
            total = total + torch.sum(-q * lp, dim=-1).mean()
            pairs += 1
    return total / max(pairs, 1)


def _backbone(arch: str, width: int) -> tuple[nn.Module, int]:
    if arch == "simple_cnn":
        net = SimpleCNN(num_classes=2, width=width)
        return net.features, 8 * width
    import torchvision.models as tvm

    net = tvm.resnet18(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def _mlp(din: int, hidden: int, dout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(din, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dout),
    )


class _DinoHead(nn.Module):
    """DINO's head: an MLP to a bottleneck, L2 normalisation, a weight-normalised linear layer
    to ``out_dim`` prototypes."""

    def __init__(self, din: int, hidden: int, bottleneck: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(din, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


class SelfSupervised(L.LightningModule):
    """SimCLR or DINO on a small backbone (see the module docstring).

    Args:
        method: ``"simclr"`` or ``"dino"``.
        arch: ``"simple_cnn"`` (``width`` channels in its first stage) or ``"resnet18"``.
        hidden_dim, proj_dim: the projection MLP's hidden and output sizes (DINO: the head's
            hidden size and bottleneck).
        out_dim: DINO's prototypes.
        lr, weight_decay: AdamW's, with a cosine schedule over the run (``scheduler="none"``:
            constant).
        temperature: NT-Xent's temperature, or DINO's student temperature.
        teacher_temperature, teacher_momentum, center_momentum: DINO's.
        knn_k: neighbours of the validation k-NN.
    """

    def __init__(
        self,
        method: str = "simclr",
        arch: str = "simple_cnn",
        width: int = 16,
        hidden_dim: int = 256,
        proj_dim: int = 64,
        out_dim: int = 512,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        temperature: float = 0.2,
        teacher_temperature: float = 0.04,
        teacher_momentum: float = 0.99,
        center_momentum: float = 0.9,
        knn_k: int = 20,
        scheduler: str = "cosine",
    ) -> None:
        super().__init__()
        check_choice("method", method, METHODS)
        check_choice("arch", arch, ARCHS)
        check_choice("scheduler", scheduler, ("cosine", "none"))
        for name, value in (("width", width), ("hidden_dim", hidden_dim), ("proj_dim", proj_dim)):
            check_int(name, value, 1)
        check_int("out_dim", out_dim, 1)
        check_int("knn_k", knn_k, 1)
        check_float("lr", lr, 0.0, low_open=True)
        check_float("weight_decay", weight_decay, 0.0)
        check_float("temperature", temperature, 0.0, low_open=True)
        check_float("teacher_temperature", teacher_temperature, 0.0, low_open=True)
        check_float("teacher_momentum", teacher_momentum, 0.0, 1.0)
        check_float("center_momentum", center_momentum, 0.0, 1.0)
        self.save_hyperparameters()
        self.backbone, dim = _backbone(arch, width)
        if method == "simclr":
            self.head: nn.Module = _mlp(dim, hidden_dim, proj_dim)
        else:
            self.head = _DinoHead(dim, hidden_dim, proj_dim, out_dim)
            self.teacher = nn.Sequential(copy.deepcopy(self.backbone), copy.deepcopy(self.head))
            self.teacher.requires_grad_(False)
            self.register_buffer("center", torch.zeros(1, out_dim))
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[B, D]``."""
        return self.backbone(x)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views, targets = batch
        b = int(targets.shape[0])
        if isinstance(views, dict):  # views_format="dict": each group's views along the batch
            views = [v for x in views.values() for v in x.split(b)]
        loss = self._simclr(views) if self.hparams.method == "simclr" else self._dino(views)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=b)
        self.log("train_loss_step", loss, on_step=True, on_epoch=False, batch_size=b)
        return loss

    def _simclr(self, views: list[torch.Tensor]) -> torch.Tensor:
        if len(views) < 2 or views[0].shape != views[1].shape:
            raise ValueError(
                f"simclr needs two views of one size first, got shapes {[tuple(v.shape) for v in views]}"
            )
        z = self.head(self.backbone(torch.cat(views[:2])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.hparams.temperature)

    def _dino(self, views: list[torch.Tensor]) -> torch.Tensor:
        hp = self.hparams
        size = views[0].shape[-1]
        n_global = next((i for i, v in enumerate(views) if v.shape[-1] != size), len(views))
        # One forward per resolution (views of one size share a batch), as DINO's MultiCrop.
        student: list[torch.Tensor] = []
        start = 0
        while start < len(views):
            stop = start
            while stop < len(views) and views[stop].shape == views[start].shape:
                stop += 1
            out = self.head(self.backbone(torch.cat(views[start:stop])))
            student += list(out.chunk(stop - start))
            start = stop
        with torch.no_grad():
            teacher = list(self.teacher(torch.cat(views[:n_global])).chunk(n_global))
        loss = dino_loss(student, teacher, self.center, hp.temperature, hp.teacher_temperature)
        with torch.no_grad():
            mean = torch.cat(teacher).mean(dim=0, keepdim=True)
            self.center.mul_(hp.center_momentum).add_(mean, alpha=1 - hp.center_momentum)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.hparams.method != "dino":
            return
        # The teacher follows the student after each optimizer step (exponential average).
        m = self.hparams.teacher_momentum
        student = list(self.backbone.parameters()) + list(self.head.parameters())
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), student, strict=True):
                t.mul_(m).add_(s.detach(), alpha=1 - m)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        net = self.teacher[0] if self.hparams.method == "dino" else self.backbone
        self._val.append((F.normalize(net(x), dim=1).float(), y))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        feats = torch.cat([f for f, _ in self._val])
        labels = torch.cat([y for _, y in self._val])
        self._val = []
        acc = knn_accuracy(feats, labels, self.hparams.knn_k)
        self.log("val_acc", acc, prog_bar=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none" or self._trainer is None:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def knn_accuracy(
    feats: torch.Tensor, labels: torch.Tensor, k: int, tau: float = 0.07
) -> torch.Tensor:
    """Leave-one-out weighted k-NN accuracy of L2-normalised features ``[N, D]``: each sample
    is classified by its ``k`` most similar others, each voting ``exp(similarity / tau)``."""
    n = feats.shape[0]
    if n < 2:
        return feats.new_tensor(float("nan"))
    sim = feats @ feats.T
    sim.fill_diagonal_(float("-inf"))
    top, idx = sim.topk(min(k, n - 1), dim=1)
    classes = int(labels.max()) + 1
    votes = torch.zeros(n, classes, device=feats.device)
    votes.scatter_add_(1, labels[idx], (top / tau).exp())
    return (votes.argmax(dim=1) == labels).float().mean()
