"""``train(cfg)``: the body of ``recipes/train.py``, composable and testable without Hydra's CLI."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ff_lightning.app.checks import (
    check_policy,
    check_run,
    check_stats,
    check_trainer,
    node_keys,
    setup_errors,
    trainer_errors,
)
from ff_lightning.app.meters import ThroughputTracker
from ff_lightning.errors import ConfigError, FFLightningError
from ff_lightning.validation import check_bool

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
    n = data.num_classes
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ConfigError(
            f"`data.num_classes` must be the number of classes (an integer >= 2), got {n!r}; "
            "set it, e.g. data.num_classes=10"
        )
    # The policy and the normalisation are checked before the source, which may generate data.
    check_policy(cfg)
    own = cfg.augment.name == TRANSFORM  # the user's own pipeline (augment/torchvision.yaml, ...)
    if not own:
        check_stats("augment.mean", cfg.augment.mean)
        check_stats("augment.std", cfg.augment.std, positive=True)
    with setup_errors(node_keys(cfg, "data.source"), "data.source"):
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
    if own:
        return _own_pipeline(cfg, train_set, val_set)
    check_bool("augment.hflip", aug.hflip)
    if data.get("views") is not None:
        return _views_datamodule(cfg, train_set, val_set)
    with setup_errors(DATAMODULE_KEYS):
        return FusionDataModule(
            train_set,
            val_set,
            policy=aug.name,
            policy_kwargs={
                **OmegaConf.to_container(aug.kwargs, resolve=True),
                **{k: aug.get(k) for k in ("interpolation", "fill") if aug.get(k) is not None},
            }
            if aug.name != "none"
            else None,
            image_size=data.image_size,
            batch_size=data.batch_size,
            num_workers=data.num_workers,
            seed=cfg.seed,
            crop_scale=_seq(data.crop_scale),
            hflip=aug.hflip,
            val_crop_fraction=data.val_crop_fraction,
            mean=_seq(aug.mean),
            std=_seq(aug.std),
            random_erasing=aug.random_erasing,
            mixup_alpha=aug.mixup_alpha,
            cutmix_alpha=aug.cutmix_alpha,
            num_classes=data.num_classes,
            device_decode=data.get("device_decode", "auto"),
        )


#: ``augment.name`` of the configs that hand over the user's own transform (``augment.transform``).
TRANSFORM = "transform"


def instantiate_transforms(cfg: DictConfig) -> dict[str, Any]:
    """``augment.transform`` / ``val_transform`` / ``batch_transform`` instantiated (a missing
    package or a bad argument is one error naming the key)."""
    out: dict[str, Any] = {}
    for key in ("transform", "val_transform", "batch_transform"):
        node = cfg.augment.get(key)
        if node is None:
            continue
        with setup_errors({}, f"augment.{key}"):
            out[key] = instantiate(node)
    return out


def _own_pipeline(cfg: DictConfig, train_set: Any, val_set: Any) -> Any:
    from ff_lightning.frontends.datamodule import FusionDataModule

    data = cfg.data
    with setup_errors({**DATAMODULE_KEYS, "transform": "augment.transform"}):
        return FusionDataModule(
            train_set,
            val_set,
            **instantiate_transforms(cfg),
            batch_size=data.batch_size,
            num_workers=data.num_workers,
            seed=cfg.seed,
            val_crop_fraction=data.val_crop_fraction,
            num_classes=data.num_classes,
            device_decode=data.get("device_decode", "auto"),
        )


#: ``FusionDataModule`` argument -> the config key ``build_datamodule`` reads it from.
DATAMODULE_KEYS = {
    "policy": "augment.name",
    "policy_kwargs": "augment.kwargs",
    "interpolation": "augment.interpolation",
    "fill": "augment.fill",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "seed": "seed",
    "crop_scale": "data.crop_scale",
    "hflip": "augment.hflip",
    "val_crop_fraction": "data.val_crop_fraction",
    "mean": "augment.mean",
    "std": "augment.std",
    "random_erasing": "augment.random_erasing",
    "mixup_alpha": "augment.mixup_alpha",
    "cutmix_alpha": "augment.cutmix_alpha",
    "num_classes": "data.num_classes",
    "device_decode": "data.device_decode",
}


def _views_datamodule(cfg: DictConfig, train_set: Any, val_set: Any) -> Any:
    """Multi-view training (``data.views``): the views' transforms decide the augmentation."""
    from ff_lightning.app.views import views_from_config
    from ff_lightning.frontends.datamodule import FusionDataModule

    data = cfg.data
    views = views_from_config(data.views)
    keys = {**DATAMODULE_KEYS, "views": "data.views", "views_format": "data.views_format"}
    with setup_errors(keys):
        return FusionDataModule(
            train_set,
            val_set,
            views=views,
            views_format=data.get("views_format", "list"),
            batch_size=data.batch_size,
            num_workers=data.num_workers,
            seed=cfg.seed,
            val_crop_fraction=data.val_crop_fraction,
            device_decode=data.get("device_decode", "auto"),
        )


def _seq(value: Any) -> Any:
    """A config list as a tuple; anything else as given, so its error shows what was typed."""
    return tuple(value) if isinstance(value, (ListConfig, list, tuple)) else value


def build_model(cfg: DictConfig) -> L.LightningModule:
    """The ``model`` node's LightningModule; a bad value names its ``model.*`` key.

    Its arguments arrive as plain dicts and lists (``_convert_="all"``): the module saves them
    as hyperparameters in every checkpoint, and ``torch.load(weights_only=True)``, with which
    Lightning resumes, refuses OmegaConf containers.
    """
    with setup_errors(node_keys(cfg, "model"), "model"):
        return instantiate(cfg.model, _convert_="all")


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """The ``trainer`` node's Trainer with ``kwargs`` on top; a refused value names its key."""
    check_trainer(cfg.trainer)
    with trainer_errors(cfg.trainer):
        return instantiate(cfg.trainer, **kwargs)


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
    with setup_errors(node_keys(cfg, "logger"), "logger"):
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
    check_run(cfg)
    check_trainer(cfg.trainer)  # build_trainer checks again; here it fails before any data
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.output_dir)

    bars = _progress_bar(cfg.progress_bar)  # before the data: a bad value fails at once
    datamodule = build_datamodule(cfg)
    log.info("%s", datamodule.describe())  # which stage runs where
    model = build_model(cfg)
    fusion = None
    if cfg.get("fusionflow") is not None:
        with setup_errors(node_keys(cfg, "fusionflow"), "fusionflow"):
            fusion = instantiate(cfg.fusionflow, **_report_args(cfg, out_dir))
    tracker = ThroughputTracker()
    callbacks: list[L.Callback] = [tracker, *bars]
    if fusion is not None:
        callbacks.insert(0, fusion)
    logger = build_logger(cfg)
    trainer = build_trainer(
        cfg,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(out_dir),
        enable_progress_bar=cfg.progress_bar != "none",
    )
    with _checkpoint_errors(cfg.get("ckpt_path")):
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
def _checkpoint_errors(ckpt_path: Any) -> Iterator[None]:
    """A checkpoint that cannot be restored into this run, as one error naming ``ckpt_path``.

    ``check_run`` has made sure the file exists and was written by ``torch.save``; what is left
    to fail is the restore itself (a truncated file, another model's weights), which Lightning
    reports with a traceback and a message of many lines. Only errors raised while Lightning
    restores the checkpoint are turned into this message, and one of training: the restored
    one-cycle schedule running out because this run goes further than the one that wrote the
    checkpoint. Other errors of training pass unchanged.
    """
    try:
        yield
    except FFLightningError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.load and load_state_dict raise many types
        if (
            ckpt_path is not None
            and _raised_in(err, "lr_scheduler.py")
            and "Tried to step" in str(err)
        ):
            # The one-cycle schedule restored from the checkpoint ends where the run that
            # wrote it planned to stop; this run goes on past that step.
            raise ConfigError(
                f"`ckpt_path` {str(ckpt_path)!r} was written by a run whose learning-rate "
                f"schedule ends earlier than this one ({err}); resume with that run's "
                "trainer.max_epochs, data.batch_size and limits, or set model.scheduler=none"
            ) from err
        if ckpt_path is None or not _raised_in(err, CHECKPOINT_RESTORE):
            raise
        refused = _WEIGHTS_ONLY.search(str(err))
        if refused:
            raise ConfigError(
                f"`ckpt_path` {str(ckpt_path)!r} cannot be restored into this run: torch.load's "
                f"weights-only mode refuses the {refused.group(1)} it holds (checkpoints this "
                "recipe wrote before its model kept plain hyperparameters hold OmegaConf "
                "containers); start from scratch, or load the file with "
                "torch.load(weights_only=False) yourself if you trust it"
            ) from err
        lines = [ln.strip() for ln in _ANSI.sub("", str(err)).splitlines() if ln.strip()]
        what = ": ".join(ln.rstrip(":. ") for ln in lines[:2]) or type(err).__name__
        if len(lines) > 2:
            what += f" (and {len(lines) - 2} more lines)"
        raise ConfigError(
            f"`ckpt_path` {str(ckpt_path)!r} cannot be restored into this run: {what}; resume "
            "with the model and data settings of the run that wrote it, or drop ckpt_path"
        ) from err


_WEIGHTS_ONLY = re.compile(r"Weights only load failed.*?Unsupported global: GLOBAL ([\w.]+)", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes in torch.load's messages

#: The Lightning module that restores ``ckpt_path`` (loads the file, then the states).
CHECKPOINT_RESTORE = "checkpoint_connector.py"


def _raised_in(err: BaseException, filename: str) -> bool:
    """Whether ``err`` passed through a frame of a file named ``filename``."""
    tb = err.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).name == filename:
            return True
        tb = tb.tb_next
    return False


def _as_dict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else {"value": str(obj)}
