"""``train(cfg)``: the body of ``recipes/train.py``, composable and testable without Hydra's CLI."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ff_lightning.app.meters import ThroughputTracker
from ff_lightning.errors import ConfigError, FFLightningError

log = logging.getLogger("ff_lightning")

PROGRESS_BARS = ("rich", "tqdm", "none")


def _require(cfg: DictConfig, key: str, hint: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(f"`{key}` is required but was not set; {hint}") from None


def build_datamodule(cfg: DictConfig) -> Any:
    """Instantiate the train/val sources and wrap them in a ``FusionDataModule``."""
    from ff_lightning.frontends.datamodule import FusionDataModule

    data = cfg.data
    if "root" in data.keys():  # `in` alone is False for a missing (???) value
        _require(
            cfg,
            "data.root",
            f"add `data.root=/path/to/dataset` to the command line (data={data.source.kind})",
        )
    _require(cfg, "data.num_classes", "add `data.num_classes=N` (the number of class folders)")
    if data.num_classes is None or isinstance(data.num_classes, bool):
        raise ConfigError(
            f"`data.num_classes` must be the number of classes (an integer >= 2), got "
            f"{data.num_classes!r}; set it, e.g. data.num_classes=10"
        )
    with _setup_errors():
        train_set = instantiate(data.source, split="train")
        val_set = instantiate(data.source, split="val")
    classes = getattr(train_set, "classes", None)
    if classes is not None and len(classes) != int(data.num_classes):
        raise ConfigError(
            f"`data.num_classes` is {data.num_classes} but the training set has {len(classes)} classes "
            f"({', '.join(map(str, list(classes)[:5]))}{', ...' if len(classes) > 5 else ''}); "
            f"set data.num_classes={len(classes)}"
        )
    aug = cfg.augment
    return FusionDataModule(
        train_set,
        val_set,
        policy=aug.name,
        policy_kwargs={
            **OmegaConf.to_container(aug.kwargs, resolve=True),
            "interpolation": aug.interpolation,
            "fill": aug.fill,
        }
        if aug.name != "none"
        else None,
        image_size=data.image_size,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        seed=cfg.seed,
        crop_scale=tuple(data.crop_scale),
        hflip=aug.hflip,
        val_crop_fraction=data.val_crop_fraction,
        mean=tuple(aug.mean),
        std=tuple(aug.std),
        random_erasing=aug.random_erasing,
        mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha,
        num_classes=data.num_classes,
        device_decode=data.get("device_decode", "auto"),
    )


def _report_args(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """The end-of-fit report goes into the run directory; the top-level ``report`` key turns it
    on or off unless the ``fusionflow`` node sets ``report`` itself."""
    args: dict[str, Any] = {"report_dir": str(out_dir)}
    if "report" not in cfg.fusionflow:
        args["report"] = bool(cfg.get("report", True))
    return args


def build_logger(cfg: DictConfig) -> Any:
    """The Trainer's logger from the ``logger`` group (``False``: ``logger=none``)."""
    node = cfg.get("logger")
    if node is None or node.get("_target_") is None:
        return False
    target = str(node._target_)
    if target.endswith("TensorBoardLogger") and not (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        raise ConfigError(
            "`logger=tensorboard` needs the tensorboard package: pip install tensorboard "
            "(or use logger=csv)"
        )
    with _setup_errors():
        return instantiate(node)


def _progress_bar(kind: str) -> list[L.Callback]:
    if kind not in PROGRESS_BARS:
        raise ConfigError(f"`progress_bar` must be one of {PROGRESS_BARS}, got {kind!r}")
    if kind == "rich":
        from lightning.pytorch.callbacks import RichProgressBar

        return [RichProgressBar(leave=True)]
    if kind == "tqdm":
        from lightning.pytorch.callbacks import TQDMProgressBar

        return [TQDMProgressBar()]
    return []


def _print_summary(metrics: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="ff_lightning run summary", show_header=False)
        for key in (
            "val_acc",
            "train_samples_per_sec",
            "offload_ratio",
            "epochs",
            "fusionflow_mode",
            "wall_seconds",
        ):
            if key in metrics:
                v = metrics[key]
                table.add_row(key, f"{v:.4g}" if isinstance(v, float) else str(v))
        Console().print(table)
    except Exception:  # pragma: no cover - rich is a dependency; keep the summary best-effort
        print(json.dumps(metrics, indent=2))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model and return (and write) the run's metrics."""
    t_start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    with _setup_errors():
        datamodule = build_datamodule(cfg)
        model = instantiate(cfg.model)
        fusion = (
            instantiate(cfg.fusionflow, **_report_args(cfg, out_dir))
            if cfg.get("fusionflow") is not None
            else None
        )
    tracker = ThroughputTracker()
    callbacks: list[L.Callback] = [tracker, *_progress_bar(cfg.progress_bar)]
    if fusion is not None:
        callbacks.insert(0, fusion)
    logger = build_logger(cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(out_dir),
        enable_progress_bar=cfg.progress_bar != "none",
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    logged = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if getattr(v, "numel", lambda: 1)() == 1
    }
    metrics: dict[str, Any] = {
        "val_acc": logged.get("val_acc", float("nan")),
        "val_loss": logged.get("val_loss", float("nan")),
        "train_loss": logged.get("train_loss_epoch", logged.get("train_loss", float("nan"))),
        "train_samples_per_sec": tracker.meter.samples_per_sec,
        "train_samples": tracker.meter.samples,
        "train_seconds": tracker.meter.seconds,
        "per_epoch": tracker.meter.epochs,
        "offload_ratio": float(fusion.ratio) if fusion is not None else 0.0,
        "fusionflow_mode": fusion.mode if fusion is not None else "off",
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "wall_seconds": time.perf_counter() - t_start,
    }
    if fusion is not None:
        metrics["fusionflow_history"] = [
            d if isinstance(d, dict) else _as_dict(d) for d in fusion.history
        ]
    if trainer.world_size > 1:
        # Under DDP each rank counted its own shard: report the job's total throughput.
        import torch

        t = torch.tensor([float(tracker.meter.samples)], device=trainer.strategy.root_device)
        total = float(trainer.strategy.reduce(t, reduce_op="sum").item())
        metrics["train_samples"] = int(total)
        metrics["train_samples_per_sec"] = total / max(tracker.meter.seconds, 1e-9)
    if trainer.is_global_zero:
        with open(out_dir / "metrics.json", "w") as f:
            json.dump(metrics, f, indent=2, default=str)
        _print_summary(metrics)
        log.info("metrics written to %s", out_dir / "metrics.json")
    return metrics


@contextlib.contextmanager
def _setup_errors() -> Iterator[None]:
    """Turn setup errors (bad config values, missing data) into one clear ``ConfigError``.

    Hydra wraps exceptions raised by ``_target_`` calls in ``InstantiationException``; unwrap
    them so the user sees our message (which names the bad value and the fix), not a traceback.
    """
    try:
        yield
    except FFLightningError:
        raise
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, FFLightningError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
            raise ConfigError(str(cause)) from cause
        raise
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from err


def _as_dict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else {"value": str(obj)}
