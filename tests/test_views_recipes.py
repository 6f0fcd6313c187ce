"""The multi-view recipes: ``experiment=dino_cpu`` and ``experiment=simclr_cpu`` compose, build
their views from ``data.views`` and train one (short) epoch; the SSL losses and the k-NN probe;
a bad ``data.views`` entry names its key; the loader benchmark's short run."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ff_lightning.app.ssl import SelfSupervised, dino_loss, knn_accuracy, nt_xent
from ff_lightning.app.train import build_datamodule, train
from ff_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = str(ROOT / "configs")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def _small(tmp_path: Path, experiment: str, *extra: str) -> list[str]:
    return [
        f"experiment={experiment}",
        f"data.source.root={tmp_path / 'data'}",
        "+data.source.train_per_class=8",
        "+data.source.val_per_class=4",
        "data.source_size=48",
        "data.batch_size=16",
        "data.num_workers=0",
        "model.width=4",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.enable_checkpointing=false",
        "logger=none",
        "progress_bar=none",
        "report=false",
        f"output_dir={tmp_path / 'run'}",
        *extra,
    ]


def test_experiments_list_their_views() -> None:
    dino = _compose("experiment=dino_cpu")
    assert [(v.name, v.count) for v in dino.data.views] == [
        ("global_crops", 1),
        ("global_crops", 1),
        ("local_crops", 4),
    ]
    assert dino.model.method == "dino"
    simclr = _compose("experiment=simclr_cpu")
    assert [v.count for v in simclr.data.views] == [2] and simclr.model.method == "simclr"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["dino_cpu", "simclr_cpu"])
def test_recipe_trains_one_epoch(tmp_path: Path, experiment: str) -> None:
    cfg = _compose(*_small(tmp_path, experiment, "fusionflow=fixed", "fusionflow.ratio=0.5"))
    metrics = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["epochs"] == 1 and written["global_step"] == 3
    assert math.isfinite(written["train_loss"]) and 0.0 <= written["val_acc"] <= 1.0
    assert metrics["train_samples"] == 3 * 16 and metrics["offload_ratio"] == 0.5


def test_datamodule_from_the_dino_config(tmp_path: Path) -> None:
    dm = build_datamodule(_compose(*_small(tmp_path, "dino_cpu")))
    assert [(g.name, g.count, g.size) for g in dm.pipeline.views] == [
        ("global_crops", 1, 64),
        ("global_crops", 1, 64),
        ("local_crops", 4, 32),
    ]
    assert "RandomSolarize" in dm.pipeline.views[1].routed.describe()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.views.0.count=0", r"`data.views` group 0 \('global_crops'\): `count` must"),
        ("+data.views.0.size=3", r"`data.views\[0\]` must have the keys `transform` and `count`"),
        ("data.views_format=tuple", r"`data.views_format` must be one of"),
        (
            "data.views.0.transform._target_=torchvision.transforms.v2.Nothing",
            r"`data.views\[0\].transform` could not be built",
        ),
    ],
)
def test_bad_views_config_names_the_key(tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_datamodule(_compose(*_small(tmp_path, "dino_cpu", override)))


# ---------------------------------------------------------------- the losses
def test_nt_xent_prefers_matching_views() -> None:
    z = torch.randn(8, 16)
    aligned = nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.2)
    shuffled = nt_xent(z, z[torch.randperm(8, generator=torch.Generator().manual_seed(1))], 0.2)
    assert float(aligned) < float(shuffled)


def test_dino_loss_skips_same_view_pairs_and_is_zero_for_agreeing_views() -> None:
    t = torch.tensor([[10.0, 0.0, 0.0]]).repeat(4, 1)
    center = torch.zeros(1, 3)
    low = dino_loss([t, t, t], [t, t], center, 0.1, 0.04)
    assert float(low) < 1e-3
    other = torch.tensor([[0.0, 10.0, 0.0]]).repeat(4, 1)
    assert float(dino_loss([t, other], [t, other], center, 0.1, 0.04)) > 10


def test_knn_accuracy_of_separated_classes() -> None:
    labels = torch.arange(3).repeat_interleave(5)
    feats = torch.nn.functional.one_hot(labels, 3).float() + 0.01 * torch.randn(15, 3)
    feats = torch.nn.functional.normalize(feats, dim=1)
    assert float(knn_accuracy(feats, labels, k=3)) == 1.0


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_dino_module_takes_list_and_dict_views() -> None:
    model = SelfSupervised(method="dino", width=4, hidden_dim=16, proj_dim=8, out_dim=32)
    twin = copy.deepcopy(model)  # a step moves the centre: compare two equal models
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [
        torch.randn(4, 3, 16, 16) for _ in range(3)
    ]
    targets = torch.zeros(4, dtype=torch.long)
    a = model.training_step((views, targets), 0)
    crops = {"global_crops": torch.cat(views[:2]), "local_crops": torch.cat(views[2:])}
    b = twin.training_step((crops, targets), 0)
    assert torch.isfinite(a) and torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="`method` must be one of"):
        SelfSupervised(method="byol")


# ---------------------------------------------------------------- the benchmark
@pytest.mark.slow
def test_views_benchmark_short_run(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bv", ROOT / "recipes" / "benchmark_views.py")
    bv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bv)
    out = tmp_path / "bv.json"
    report = bv.main(
        [
            "--rounds", "1", "--batches", "1", "--batch-size", "4", "--global-size", "32",
            "--local-size", "16", "--n-local", "2", "--source-size", "48",
            "--train-per-class", "4", "--workers", "0", "--memory", "--out", str(out),
        ]
    )  # fmt: skip
    # with lightly installed, "all" also runs lightly's own SimCLRTransform / DINOTransform
    expected = {"dino", "simclr"} | (
        {"simclr_lightly", "dino_lightly"} if bv._has_lightly() else set()
    )
    assert json.loads(out.read_text())["cases"].keys() == expected
    for name, case in report["cases"].items():
        baseline = "lightly" if name.endswith("_lightly") else "torchvision"
        assert case[f"ours_over_{baseline}"] > 0
        assert case["memory"]["per_pixel_ratio"] > 0
