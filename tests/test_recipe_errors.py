"""The recipes' bad inputs: each ends in one ``error:`` line naming the key, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from ff_lightning.app.cli import check_command_line
from ff_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = str(ROOT / "configs")
EXPERIMENTS = (
    "('bench_224', 'bench_decode', 'bench_heavy', 'bench_light', 'bench_quick', 'gpu_check')"
)


def _compose(*overrides: str, name: str = "train"):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def _small(tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"data.source.root={tmp_path / 'data'}",
        "+data.source.train_per_class=4",
        "+data.source.val_per_class=2",
        "data.source_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "progress_bar=none",
        "report=false",
        f"output_dir={tmp_path / 'run'}",
        *extra,
    ]


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("recipe", ["train", "benchmark", "plan"])
def test_an_unknown_experiment_is_rejected_with_the_options(recipe: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_command_line(CONFIGS, recipe, ["experiment=bench_quik"])
    assert str(err.value) == (
        f"`experiment` must be one of {EXPERIMENTS}, got 'bench_quik'; "
        "did you mean experiment=bench_quick?"
    )


def test_the_experiment_group_is_not_optional() -> None:
    # With `optional experiment`, Hydra skipped a missing option and composed the base config.
    with pytest.raises(MissingConfigException, match="experiment/bench_quik"):
        _compose("experiment=bench_quik")
    with pytest.raises(MissingConfigException, match="experiment/bench_quik"):
        _compose("experiment=bench_quik", name="benchmark")
    assert _compose("experiment=bench_quick", name="benchmark").data.num_workers == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["augment=randaug"],
            "`augment` must be one of ('augmix', 'autoaugment', 'none', 'randaugment', "
            "'trivialaugment'), got 'randaug'; did you mean augment=randaugment?",
        ),
        (
            ["model=resnet"],
            "`model` must be one of ('resnet18', 'resnet50', 'simple_cnn', 'vit_b_16'), "
            "got 'resnet'; did you mean model=resnet50?",
        ),
        (
            ["logger=wandb"],
            "`logger` must be one of ('csv', 'none', 'tensorboard'), got 'wandb'; pick one of them",
        ),
        (
            ["-m", "data.num_workers=1,2", "experiment=bench_light,bench_quik"],
            f"`experiment` must be one of {EXPERIMENTS}, got 'bench_quik'; "
            "did you mean experiment=bench_quick?",
        ),
        (
            ["trainer.max_epoch=1"],
            "`trainer.max_epoch` is not a key of the config; did you mean `trainer.max_epochs`? "
            "(to add a new key, write +trainer.max_epoch=... on the command line)",
        ),
        (
            ["+experiment=bench_quick"],
            "`experiment` already has a default in the config; write experiment=bench_quick "
            "(without the +) to choose another",
        ),
        (
            ["experiment=null"],
            "`experiment` cannot be set to null on the command line; write ~experiment to use "
            "no experiment config",
        ),
    ],
)
def test_command_line_mistakes_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_command_line(CONFIGS, "train", argv)
    assert str(err.value) == message


def test_a_sweep_without_multirun_and_an_unreadable_override_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^Ambiguous value for argument 'data.num_workers=1,2'"):
        check_command_line(CONFIGS, "train", ["data.num_workers=1,2"])
    with pytest.raises(ConfigError, match=r"^cannot read the override 'data.batch_size=\['"):
        check_command_line(CONFIGS, "train", ["data.batch_size=["])
    # Lightning names checkpoints epoch=N-step=M.ckpt: the value needs quotes, and we say so.
    with pytest.raises(ConfigError) as err:
        check_command_line(CONFIGS, "train", ["ckpt_path=/r/epoch=0-step=2.ckpt"])
    assert str(err.value).endswith("; quote the value: ckpt_path='/r/epoch=0-step=2.ckpt'")
    check_command_line(CONFIGS, "train", ["ckpt_path='/r/epoch=0-step=2.ckpt'"])


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["experiment=bench_quick", "augment=trivialaugment"],
        ["~experiment", "hydra.run.dir=/tmp/x"],
        ["-m", "data.num_workers=1,2", "experiment=bench_light,bench_quick"],
        ["-m", "model=glob(resnet*)"],
        ["+trainer.gradient_clip_val=1.0"],
        ["--help"],
    ],
)
def test_good_command_lines_pass(argv: list[str]) -> None:
    for recipe in ("train", "benchmark", "plan"):
        check_command_line(CONFIGS, recipe, argv)
