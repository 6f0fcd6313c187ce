"""The Hydra configs compose, every group instantiates, bad values fail clearly, and a short fit works."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from ff_lightning.errors import ConfigError, DatasetNotFoundError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = str(ROOT / "configs")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=False)
    return cfg


def _small(tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"data.source.root={tmp_path / 'data'}",
        "+data.source.train_per_class=8",
        "+data.source.val_per_class=4",
        "data.source_size=48",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.enable_checkpointing=false",
        "progress_bar=none",
        f"output_dir={tmp_path / 'run'}",
        *extra,
    ]


def test_groups_have_the_documented_options() -> None:
    assert _options("data") == ["cifar10", "imagefolder", "synthetic"]
    assert _options("model") == [
        "deit_tiny",
        "dino",
        "resnet18",
        "resnet50",
        "simclr",
        "simple_cnn",
        "vit_b_16",
    ]
    assert _options("augment") == [
        "augmix",
        "autoaugment",
        "deepaa",
        "none",
        "randaugment",
        "timm_rand_m9_mstd05_inc1",
        "torchvision",
        "trivialaugment",
    ]
    assert _options("fusionflow") == ["auto", "fixed", "gpu", "off"]
    assert _options("trainer") == ["cpu", "gpu"]
    assert _options("logger") == ["csv", "none", "tensorboard"]


@pytest.mark.parametrize("model", ["simple_cnn", "resnet18", "resnet50", "vit_b_16", "deit_tiny"])
def test_every_model_config_instantiates_and_runs_forward(model: str) -> None:
    import torch

    cfg = _compose([f"model={model}"])
    net = instantiate(cfg.model)
    assert isinstance(net, L.LightningModule)
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size))
    assert out.shape == (1, cfg.data.num_classes)


@pytest.mark.parametrize("mode", ["auto", "off", "gpu", "fixed"])
def test_every_fusionflow_config_instantiates(mode: str) -> None:
    from ff_lightning import FusionFlow

    cb = instantiate(_compose([f"fusionflow={mode}"]).fusionflow)
    assert isinstance(cb, FusionFlow) and cb.mode == mode
    assert cb.ratio == {"off": 0.0, "gpu": 1.0, "fixed": 0.5, "auto": 0.0}[mode]


@pytest.mark.parametrize("trainer", ["cpu", "gpu"])
def test_trainer_configs_compose(trainer: str) -> None:
    cfg = _compose([f"trainer={trainer}"])
    assert cfg.trainer._target_ == "lightning.Trainer"
    if trainer == "cpu":
        t = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
        assert isinstance(t, L.Trainer) and t.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "none"])
def test_every_logger_config_instantiates(logger: str, tmp_path: Path) -> None:
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger

    from ff_lightning.app.train import build_logger

    cfg = _compose([f"logger={logger}", f"output_dir={tmp_path}"])
    if logger == "none":
        assert build_logger(cfg) is False
    elif logger == "csv":
        built = build_logger(cfg)
        assert isinstance(built, CSVLogger) and built.log_dir.startswith(str(tmp_path / "logs"))
    elif importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        assert isinstance(build_logger(cfg), TensorBoardLogger)
    else:
        with pytest.raises(
            ConfigError, match=r"^`logger=tensorboard` needs the tensorboard package: pip install"
        ):
            build_logger(cfg)


@pytest.mark.parametrize(
    "augment", ["randaugment", "trivialaugment", "autoaugment", "augmix", "none"]
)
def test_every_augment_config_builds_a_datamodule(augment: str, tmp_path: Path) -> None:
    from ff_lightning.app.train import build_datamodule

    cfg = _compose(_small(tmp_path, f"augment={augment}"))
    dm = build_datamodule(cfg)
    assert dm.policy.name == augment
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (16, 3, 48, 48)


def test_data_configs_need_a_root_and_say_so(tmp_path: Path) -> None:
    from ff_lightning.app.train import build_datamodule

    for data in ("imagefolder", "cifar10"):
        cfg = _compose([f"data={data}", "data.num_classes=10"])
        with pytest.raises(
            ConfigError, match=r"`data.root` is required.*data.root=/path/to/dataset"
        ):
            build_datamodule(cfg)
    cfg = _compose(["data=cifar10", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        build_datamodule(cfg)


def test_bad_override_values_fail_with_clear_errors(tmp_path: Path) -> None:
    from ff_lightning.app.train import build_datamodule, train

    with pytest.raises(
        ConfigError,
        match=r"`data.num_classes` is 7 but the training set has 10 classes.*data.num_classes=10",
    ):
        build_datamodule(
            _compose(_small(tmp_path, "data.num_classes=7", "data.source.num_classes=10"))
        )
    with pytest.raises(ConfigError, match=r"^`data.batch_size` must be an integer >= 1, got 0"):
        build_datamodule(_compose(_small(tmp_path, "data.batch_size=0")))
    with pytest.raises(
        ConfigError,
        match=r"^`fusionflow.mode` must be one of \('auto', 'off', 'gpu', 'fixed'\), got 'fast'",
    ):
        train(_compose(_small(tmp_path, "fusionflow.mode=fast")))
    with pytest.raises(ConfigError, match=r"^`model.arch` must be one of"):
        train(_compose(_small(tmp_path, "model.arch=resnet1000")))
    with pytest.raises(ConfigError, match=r"`progress_bar` must be one of"):
        train(_compose(_small(tmp_path, "progress_bar=fancy")))


def test_short_fit_writes_metrics_json(tmp_path: Path) -> None:
    from ff_lightning.app.train import train

    cfg = _compose(
        _small(tmp_path, "fusionflow=fixed", "fusionflow.ratio=0.5", "trainer.log_every_n_steps=1")
    )
    metrics = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("val_acc", "train_samples_per_sec", "offload_ratio", "epochs"):
        assert key in written
    assert 0.0 <= written["val_acc"] <= 1.0
    assert written["train_samples_per_sec"] > 0
    assert written["offload_ratio"] == 0.5
    assert written["epochs"] == 1
    assert written["train_samples"] == 3 * 16
    assert math.isfinite(written["train_loss"])  # the epoch mean (no per-step sync for the bar)
    header = next((tmp_path / "run" / "logs").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "train_loss_step" in header.split(",")
    report = json.loads((tmp_path / "run" / "fusionflow_report.json").read_text())
    assert report["steps"] == written["global_step"] == 3 and report["mode"] == "fixed"
    assert metrics["val_acc"] == written["val_acc"]


def test_short_fit_without_a_logger(tmp_path: Path) -> None:
    from ff_lightning.app.train import train

    metrics = train(_compose(_small(tmp_path, "logger=none", "fusionflow=off", "report=false")))
    assert metrics["train_samples"] == 3 * 16
    assert not (tmp_path / "run" / "logs").exists()
    assert not (tmp_path / "run" / "fusionflow_report.json").exists()


def test_recipe_cli_reports_missing_root_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "train.py"),
            "data=cifar10",
            f"data.root={tmp_path / 'missing'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout, not an installed copy
    )
    assert proc.returncode == 2
    assert "cifar-10-batches-py" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_override_of_unknown_group_option_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="Could not find 'model/resnet9000'"):
        _compose(["model=resnet9000"])
    cfg = _compose(["trainer.max_epochs=1"])
    with open_dict(cfg):
        assert cfg.trainer.max_epochs == 1


@pytest.mark.parametrize("augment", ["torchvision", "timm_rand_m9_mstd05_inc1"])
def test_the_users_own_pipeline_configs_compile(tmp_path: Path, augment: str) -> None:
    pytest.importorskip("timm")
    from ff_lightning.app.train import build_datamodule
    from ff_lightning.pipeline.stages import DeviceTail, RoutedStage, WorkerGeometry

    cfg = _compose(_small(tmp_path, f"augment={augment}"))
    dm = build_datamodule(cfg)
    kinds = [type(s) for s in dm.pipeline.stages]
    assert kinds == [WorkerGeometry, RoutedStage, DeviceTail]  # nothing left in the workers
    dm.set_ratio(0.5)
    x, y = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape[1:] == (3, cfg.data.image_size, cfg.data.image_size) and x.is_floating_point()


def test_deepaa_needs_its_policy_file(tmp_path: Path) -> None:
    from ff_lightning.app.train import build_datamodule

    with pytest.raises(ConfigError, match=r"`augment.kwargs.policy_file` is required"):
        build_datamodule(_compose(_small(tmp_path, "augment=deepaa")))


def test_the_deit_experiment_composes_with_mixup_and_erasing(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from ff_lightning.app.train import build_datamodule

    cfg = _compose(_small(tmp_path, "experiment=deit_small_cpu"))
    assert cfg.model.arch == "deit_tiny" and cfg.augment.batch_transform.mixup_alpha == 0.8
    tail = build_datamodule(cfg).pipeline.tail
    assert tail.mix.cutmix_alpha == 1.0 and tail.erasing.p == 0.25
