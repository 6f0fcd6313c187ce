"""The benchmark's modes and the DataModule each one trains from.

- ``torchvision``: the stock pipeline (:class:`~ff_lightning.app.stock.StockDataModule`) on the
  same source, the yardstick users already run: the keyword regime's torchvision pipeline, or,
  with an ``augment`` config that hands over the user's own transform (``augment=torchvision``,
  ``augment=timm_rand_m9_mstd05_inc1``), that transform unchanged;
- ``timm``: the same as ``torchvision`` for a timm transform (a name for the report);
- ``off``, ``gpu``, a fixed ratio, ``auto``: :class:`~ff_lightning.FusionDataModule` driven by
  :class:`~ff_lightning.FusionFlow` in that mode;
- ``ceiling``: batches augmented and normalised beforehand, already on the device (compute
  alone: no mode can beat it).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from ff_lightning.errors import ConfigError
from ff_lightning.pipeline.pipeline import move_to_device

#: Named modes of ``benchmark.modes`` (a number in [0, 1] is a fixed ratio).
MODES = ("torchvision", "timm", "off", "gpu", "auto", "ceiling")
#: Suffixes that run a FusionFlow mode with a data setting changed for that run only.
VARIANTS = {"+decode": True, "-decode": False}  # data.device_decode


def parse_mode(mode: Any) -> tuple[str, float | None]:
    """``(mode, ratio)`` of one ``benchmark.modes`` entry; the ratio only for a fixed one."""
    if mode is False:
        return "off", None  # YAML 1.1 reads an unquoted `off` as false
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        if not 0.0 <= float(mode) <= 1.0:
            raise ConfigError(f"a fixed ratio in `benchmark.modes` must be in [0, 1], got {mode!r}")
        return "fixed", float(mode)
    if mode in MODES:
        return str(mode), None
    if isinstance(mode, str):
        for suffix in VARIANTS:
            base = mode.removesuffix(suffix)
            if mode.endswith(suffix) and base in ("off", "gpu", "auto"):
                return mode, None
    raise ConfigError(
        f"`benchmark.modes` entries must be one of {MODES}, one of 'off', 'gpu', 'auto' with "
        f"{tuple(VARIANTS)} (device decode on/off for that run), or a ratio in [0, 1], "
        f"got {mode!r}"
    )


def split_variant(mode: str) -> tuple[str, bool | None]:
    """``("auto", True)`` for ``"auto+decode"``: the FusionFlow mode and its device_decode."""
    for suffix, decode in VARIANTS.items():
        if mode.endswith(suffix):
            return mode.removesuffix(suffix), decode
    return mode, None


def label(mode: str, ratio: float | None) -> str:
    """The name a mode carries in ``benchmark.json``: ``fixed:0.25`` for a fixed ratio."""
    return f"fixed:{ratio:g}" if mode == "fixed" else mode


# --------------------------------------------------------------------------- torchvision


def stock_datamodule(cfg: DictConfig) -> Any:
    """The stock pipeline on the configured job: same source, sizes, policy, loader settings."""
    from ff_lightning.app.stock import StockDataModule
    from ff_lightning.app.train import build_datamodule

    # Our DataModule is built first for its source (checked as `recipes/train.py` checks it)
    # and its loader settings, so both pipelines read the same data the same way.
    ours = build_datamodule(cfg)
    aug = cfg.augment
    if aug.name == "transform":  # the user's own transform, run unchanged in the same workers
        from ff_lightning.app.train import instantiate_transforms

        own = instantiate_transforms(cfg)
        return StockDataModule(
            ours.train_dataset,
            batch_size=cfg.data.batch_size,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed,
            transform=own["transform"],
            batch_transform=own.get("batch_transform"),
            pin_memory=getattr(ours, "pin_memory", None),
            persistent_workers=getattr(ours, "persistent_workers", True),
            prefetch_factor=getattr(ours, "prefetch_factor", 2),
            drop_last=getattr(ours, "drop_last", False),
        )
    policy_kwargs = None
    if aug.name != "none":
        policy_kwargs = {
            **OmegaConf.to_container(aug.kwargs, resolve=True),
            "interpolation": aug.interpolation,
            "fill": aug.fill,
        }
    return StockDataModule(
        ours.train_dataset,
        image_size=cfg.data.image_size,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        crop_scale=tuple(cfg.data.crop_scale),
        crop_ratio=tuple(getattr(ours, "crop_ratio", (3 / 4, 4 / 3))),
        hflip=aug.hflip,
        policy=aug.name,
        policy_kwargs=policy_kwargs,
        mean=tuple(aug.mean),
        std=tuple(aug.std),
        pin_memory=getattr(ours, "pin_memory", None),
        persistent_workers=getattr(ours, "persistent_workers", True),
        prefetch_factor=getattr(ours, "prefetch_factor", 2),
        drop_last=getattr(ours, "drop_last", False),
    )


# --------------------------------------------------------------------------- ceiling


def device_stage(dm: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One loader batch through a DataModule's transfer: ``(float images, targets)`` on
    ``device`` (ours: the pipeline's transfer; the stock one: its Lightning hook)."""
    pipeline = getattr(dm, "pipeline", None)
    if pipeline is None:  # a DataModule without a pipeline: its Lightning hook
        return dm.on_after_batch_transfer(move_to_device(batch, device), 0)
    return pipeline.transfer(batch, device)


def ceiling_batches(
    cfg: DictConfig, n: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training batches of our pipeline, augmented and normalised, resident on ``device``."""
    from ff_lightning.app.train import build_datamodule

    dm = build_datamodule(cfg)
    dm.set_num_workers(0)
    batches = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i >= n:
            break
        x, y = device_stage(dm, batch, device)
        batches.append((x.contiguous(), y))
    return batches


class CeilingDataModule(L.LightningDataModule):
    """Replays batches that were augmented and normalised beforehand, already on the device."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> None:
        super().__init__()
        self.batches = batches
        self.steps = steps

    def train_dataloader(self) -> Any:
        batches, steps = self.batches, self.steps

        class _Replay:
            def __len__(self) -> int:
                return steps

            def __iter__(self):  # noqa: ANN204
                for i in range(steps):
                    yield batches[i % len(batches)]

        return _Replay()

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # already resident: the ceiling pays no transfer
