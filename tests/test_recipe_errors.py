"""The recipes' bad inputs: each ends in one ``error:`` line naming the key, exit status 2.

The engine's checks are tested in-process (configs composed as Hydra composes them); a few
command lines run the recipes end to end, all at once, to check the ``error:`` line itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from ff_lightning.app.checks import check_benchmark, check_run, check_trainer
from ff_lightning.app.cli import check_command_line
from ff_lightning.errors import ConfigError, DatasetNotFoundError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = str(ROOT / "configs")
EXPERIMENTS = (
    "('bench_224', 'bench_decode', 'bench_heavy', 'bench_light', 'bench_quick', 'dino_cpu', "
    "'gpu_check', 'simclr_cpu')"
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
            "`model` must be one of ('dino', 'resnet18', 'resnet50', 'simclr', 'simple_cnn', "
            "'vit_b_16'), got 'resnet'; did you mean model=resnet50?",
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
            "`trainer.max_epoch` is not a key of the config (did you mean `trainer.max_epochs`?); "
            "to add a new key, write +trainer.max_epoch=1",
        ),
        (
            ["trainer.accumulate_grad_batches=4"],
            "`trainer.accumulate_grad_batches` is not in the config, but it is an argument of "
            "lightning.Trainer: write +trainer.accumulate_grad_batches=4 to add it",
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


# --------------------------------------------------------------------------- trainer and run


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=abc", "`trainer.max_epochs` must be an integer >= -1, got 'abc'"),
        ("trainer.max_epochs=-5", "`trainer.max_epochs` must be an integer >= -1, got -5"),
        ("trainer.log_every_n_steps=0", "`trainer.log_every_n_steps` must be an integer >= 1"),
        ("trainer.devices=abc", "`trainer.devices` must be an integer >= 1, -1 (all), 'auto'"),
        ("trainer.devices=0", "`trainer.devices` must be an integer >= 1, -1 (all), 'auto'"),
        ("trainer.limit_train_batches=abc", "`trainer.limit_train_batches` must be null"),
        ("trainer.limit_val_batches=1.5", "`trainer.limit_val_batches` must be null"),
        ("trainer.num_sanity_val_steps=x", "`trainer.num_sanity_val_steps` must be an integer"),
        ("+trainer.accumulate_grad_batches=0", "`trainer.accumulate_grad_batches` must be an"),
        ("trainer.deterministic=maybe", "`trainer.deterministic` must be true or false"),
    ],
)
def test_bad_trainer_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_trainer(_compose(override).trainer)
    assert str(err.value).startswith(message)


def test_good_trainer_values_pass() -> None:
    for override in (
        "trainer.devices=auto",
        "trainer.devices=-1",
        "trainer.devices=[0]",
        "trainer.devices='0,1'",
        "trainer.max_epochs=-1",
        "trainer.limit_train_batches=0.5",
        "trainer.deterministic=warn",
    ):
        check_trainer(_compose(override).trainer)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (
            "trainer.precision=foo",
            "`trainer.precision` ('foo') was refused by the Lightning Trainer",
        ),
        ("+trainer.strategy=foo", "`trainer.strategy` ('foo') was refused by the Lightning"),
        ("+trainer.foo=1", "`trainer.foo` (1) was refused by the Lightning Trainer"),
    ],
)
def test_lightning_errors_at_construction_name_the_key(override: str, key: str) -> None:
    from ff_lightning.app.train import build_trainer

    with pytest.raises(ConfigError) as err:
        build_trainer(_compose(override), logger=False)
    assert str(err.value).startswith(key)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_a_gpu_trainer_without_a_gpu_names_the_accelerator() -> None:
    from ff_lightning.app.train import build_trainer

    with pytest.raises(ConfigError) as err:
        build_trainer(_compose("trainer.accelerator=gpu"), logger=False)
    assert str(err.value) == (
        "`trainer.accelerator` ('gpu') was refused by the Lightning Trainer: No supported gpu "
        "backend found!; trainer=cpu trains on the CPU"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=abc", "`seed` must be an integer in [0, 4294967295], got 'abc'; set e.g. seed=0"),
        ("seed=-1", "`seed` must be an integer in [0, 4294967295], got -1"),
        ("seed=99999999999", "`seed` must be an integer in [0, 4294967295], got 99999999999"),
        ("report=maybe", "`report` must be true or false, got 'maybe'"),
    ],
)
def test_bad_run_values_name_the_key(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        check_run(_compose(override, f"output_dir={tmp_path}"))
    assert str(err.value).startswith(message)


def test_bad_checkpoint_paths_name_the_path(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    cases = {
        "/nonexistent/last.ckpt": (DatasetNotFoundError, "does not exist; give the checkpoint"),
        str(tmp_path): (ConfigError, "is a folder, not a checkpoint file"),
        str(text): (ConfigError, "is not a PyTorch checkpoint"),
    }
    for path, (kind, words) in cases.items():
        with pytest.raises(kind) as err:
            check_run(_compose(f"ckpt_path={path}", f"output_dir={tmp_path}"))
        assert str(err.value).startswith(f"`ckpt_path` {path!r} ") and words in str(err.value)
    for ok in ("last", "s3://bucket/last.ckpt"):
        check_run(_compose(f"ckpt_path={ok}", f"output_dir={tmp_path}"))


def test_an_output_dir_that_cannot_be_created_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"^`output_dir` '.*a-file/run' cannot be created"):
        check_run(_compose(f"output_dir={blocker / 'run'}"))


def test_the_recipe_resumes_its_own_checkpoint_and_names_one_that_does_not_fit(
    tmp_path: Path,
) -> None:
    from ff_lightning.app.train import train

    first = _small(tmp_path, "model.arch_kwargs.width=4", "trainer.enable_checkpointing=true")
    train(_compose(*first, "fusionflow=off"))
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    # Lightning names it epoch=0-step=2.ckpt: on the command line the value needs quotes.
    resume = [f"ckpt_path='{ckpt}'", "trainer.max_epochs=2", "fusionflow=off"]
    # The same model resumes (its hyperparameters are plain containers, which torch.load's
    # weights-only mode accepts) and trains to the end of the first run's schedule; going on
    # past it is an error that says so.
    with pytest.raises(ConfigError) as err:
        train(_compose(*_small(tmp_path, "model.arch_kwargs.width=4"), *resume))
    assert str(err.value).startswith(
        f"`ckpt_path` {str(ckpt)!r} was written by a run whose learning-rate schedule ends "
        "earlier than this one (Tried to step 3 times. The specified number of total steps is 2)"
    )
    # A checkpoint whose hyperparameters are OmegaConf containers (as this recipe wrote them
    # before) is refused by weights-only loading: one line says why.
    old = torch.load(ckpt, weights_only=False)
    old["hyper_parameters"]["arch_kwargs"] = OmegaConf.create({"width": 4})
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ConfigError) as err:
        resume_old = [f"ckpt_path={tmp_path / 'old.ckpt'}", "fusionflow=off"]
        train(_compose(*_small(tmp_path, "model.arch_kwargs.width=4"), *resume_old))
    assert str(err.value).startswith(
        f"`ckpt_path` {str(tmp_path / 'old.ckpt')!r} cannot be restored into this run: "
        "torch.load's weights-only mode refuses the omegaconf.dictconfig.DictConfig it holds"
    )
    same = _small(tmp_path, "model.arch_kwargs.width=4", "model.scheduler=none")
    first_none = train(
        _compose(
            *same,
            "trainer.enable_checkpointing=true",
            "fusionflow=off",
            f"output_dir={tmp_path / 'none'}",
        )
    )
    assert first_none["epochs"] == 1
    ckpt_none = next((tmp_path / "none").rglob("*.ckpt"))
    resumed = train(
        _compose(*same, f"ckpt_path='{ckpt_none}'", "trainer.max_epochs=2", "fusionflow=off")
    )
    assert resumed["epochs"] == 2 and resumed["global_step"] == 4
    with pytest.raises(ConfigError) as err:
        train(_compose(*_small(tmp_path, "model.arch_kwargs.width=8"), *resume))
    text = str(err.value)
    assert text.startswith(
        f"`ckpt_path` {str(ckpt)!r} cannot be restored into this run: Error(s) in loading "
        "state_dict for ImageClassifier: size mismatch for net.features.0.0.weight"
    )
    assert text.endswith("or drop ckpt_path") and "\n" not in text


# --------------------------------------------------------------------------- data and model


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=-1", "`data.batch_size` must be an integer >= 1, got -1"),
        ("data.batch_size=abc", "`data.batch_size` must be an integer >= 1, got 'abc'"),
        ("data.num_workers=-1", "`data.num_workers` must be an integer >= 0, got -1"),
        ("data.image_size=abc", "`data.image_size` must be an integer >= 1, got 'abc'"),
        ("data.source_size=abc", "`data.source_size` must be an integer in [8, 4096], got 'abc'"),
        (
            "data.num_classes=abc",
            "`data.num_classes` must be the number of classes (an integer >= 2), got 'abc'",
        ),
        ("data.num_classes=13", "`data.num_classes` must be an integer in [2, 12], got 13"),
        ("data.crop_scale=abc", "`data.crop_scale` must be a pair (low, high), got 'abc'"),
        ("augment.hflip=maybe", "`augment.hflip` must be true or false, got 'maybe'"),
        ("augment.kwargs.num_ops=abc", "`augment.kwargs.num_ops` must be an integer >= 0"),
        ("augment.fill=black", "`augment.fill` must be a number or a sequence"),
        ("augment.mean=abc", "`augment.mean` must be a list of numbers, one per channel"),
        ("augment.std=[0,1,1]", "`augment.std` must be a list of numbers > 0"),
        ("augment.kwargs=abc", "`augment.kwargs` must be a mapping of the policy's arguments"),
    ],
)
def test_bad_data_values_name_the_config_key(override: str, message: str, tmp_path: Path) -> None:
    from ff_lightning.app.train import build_datamodule

    with pytest.raises(ConfigError) as err:
        build_datamodule(_compose(*_small(tmp_path, override)))
    assert str(err.value).startswith(message)


def test_a_cache_root_that_is_a_file_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ff_lightning.app.train import build_datamodule

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"^`data.source.root` is '.*a-file': a file, not a"):
        build_datamodule(_compose(*_small(tmp_path, f"data.source.root={blocker}")))
    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(blocker))
    with pytest.raises(ConfigError) as err:
        build_datamodule(_compose(*_small(tmp_path), "data.source.root=null"))
    assert str(err.value) == (
        f"`FF_LIGHTNING_CACHE` is {str(blocker)!r}: a file, not a folder; the synthetic dataset "
        "is generated there, so point FF_LIGHTNING_CACHE to a folder that can be created or "
        "unset it to use ~/.cache/ff_lightning"
    )


def test_an_experiment_policy_argument_says_how_to_drop_it(tmp_path: Path) -> None:
    from ff_lightning.app.train import build_datamodule

    cfg = _compose(*_small(tmp_path, "experiment=bench_quick", "augment=trivialaugment"))
    with pytest.raises(ConfigError) as err:
        build_datamodule(cfg)
    assert str(err.value).startswith("`augment.kwargs` do not fit policy 'trivialaugment': ")
    assert "add `~augment.kwargs.num_ops` to the command line to drop it" in str(err.value)
    dropped = _small(tmp_path, "experiment=bench_quick", "augment=trivialaugment")
    dm = build_datamodule(_compose(*dropped, "~augment.kwargs.num_ops"))
    assert dm.policy.name == "trivialaugment"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lr=abc"], "`model.lr` must be a number > 0, got 'abc'"),
        (["model.lr=-1"], "`model.lr` must be a number > 0, got -1"),
        (["model.weight_decay=-1"], "`model.weight_decay` must be a number >= 0, got -1"),
        (["model.label_smoothing=2"], "`model.label_smoothing` must be a number in [0, 1]"),
        (["model.optimizer=adam"], "`model.optimizer` must be one of ('adamw', 'sgd')"),
        (["model.arch_kwargs.width=abc"], "`model.arch_kwargs.width` must be an integer >= 1"),
        (
            ["model=resnet18", "+model.arch_kwargs.foo=1"],
            "`model.arch_kwargs` do not fit arch 'resnet18': ",
        ),
        (["+model.foo=1"], "`model`: ImageClassifier.__init__() got an unexpected keyword"),
    ],
)
def test_bad_model_values_name_the_key(overrides: list[str], message: str) -> None:
    from ff_lightning.app.train import build_model

    with pytest.raises(ConfigError) as err:
        build_model(_compose(*overrides))
    assert str(err.value).startswith(message)


def test_bad_fusionflow_values_name_the_key(tmp_path: Path) -> None:
    from ff_lightning.app.train import train

    with pytest.raises(ConfigError, match=r"^`fusionflow.ratio` must be in \[0, 1\], got 2"):
        train(_compose(*_small(tmp_path, "fusionflow=fixed", "fusionflow.ratio=2")))
    with pytest.raises(ConfigError, match=r"^`fusionflow.reserve_mb` must be >= 0 MiB"):
        train(_compose(*_small(tmp_path, "fusionflow.reserve_mb=abc")))


# --------------------------------------------------------------------------- benchmark and plan


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("benchmark.steps=abc", "`benchmark.steps` must be an integer >= 2, got 'abc'"),
        ("benchmark.repeats=abc", "`benchmark.repeats` must be an integer >= 1, got 'abc'"),
        ("benchmark.torch_threads=0", "`benchmark.torch_threads` must be an integer >= 1"),
        ("benchmark.modes=auto", "`benchmark.modes` must be a non-empty list, got 'auto'"),
        ("benchmark.modes=[]", "`benchmark.modes` must be a non-empty list"),
        ("benchmark.plot=maybe", "`benchmark.plot` must be true or false"),
    ],
)
def test_bad_benchmark_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_benchmark(_compose(override, name="benchmark").benchmark)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["plan.workers=abc"], "`plan.workers` must be null or a list of worker counts"),
        (["plan.modes=auto"], "`plan.modes` must be a list among ('off', 'auto'), got 'auto'"),
        (["plan.torch_threads=abc"], "`plan.torch_threads` must be an integer >= 1"),
        (["model.lr=abc"], "`model.lr` must be a number > 0, got 'abc'"),
        (["seed=abc"], "`seed` must be an integer in [0, 4294967295], got 'abc'"),
        (["trainer.precision=foo"], "`trainer.precision` ('foo') was refused"),
    ],
)
def test_bad_plan_values_fail_before_any_run(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    from ff_lightning.app.plan import run_plan

    cfg = _compose(*overrides, f"output_dir={tmp_path}", "plan.progress=false", name="plan")
    with pytest.raises(ConfigError) as err:
        run_plan(cfg)
    assert str(err.value).startswith(message)
    assert not (tmp_path / "plan.json").exists()


# --------------------------------------------------------------------------- end to end


def _env(**extra: str) -> dict[str, str]:
    from ff_lightning.augment._native_load import ENV, WARNED_ENV

    env = dict(os.environ)
    # This process may have warned about the native library already (and set the flag that
    # keeps its child processes quiet); each recipe here is a run of its own.
    env.pop(WARNED_ENV, None)
    env.pop(ENV, None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


#: (recipe, arguments, extra environment, what the `error:` line says). Run all at once.
CLI_CASES = {
    "train-experiment": ("train", ["experiment=bench_quik"], {}, "`experiment` must be one of"),
    "benchmark-experiment": (
        "benchmark",
        ["experiment=bench_quik"],
        {},
        "`experiment` must be one of",
    ),
    "plan-experiment": ("plan", ["experiment=bench_quik"], {}, "`experiment` must be one of"),
    "plan-augment": ("plan", ["augment=randaug"], {}, "`augment` must be one of"),
    "benchmark-key": ("benchmark", ["trainer.max_epoch=1"], {}, "`trainer.max_epoch` is not a"),
    "train-max-epochs": (
        "train",
        ["trainer.max_epochs=abc"],
        {},
        "`trainer.max_epochs` must be an integer >= -1, got 'abc'",
    ),
    "train-ckpt": (
        "train",
        ["ckpt_path=/nonexistent/last.ckpt"],
        {},
        "`ckpt_path` '/nonexistent/last.ckpt' does not exist",
    ),
    "train-cache-file": ("train", [], {"FF_LIGHTNING_CACHE": "<file>"}, "`FF_LIGHTNING_CACHE` is"),
    "benchmark-steps": (
        "benchmark",
        ["benchmark.steps=abc"],
        {},
        "`benchmark.steps` must be an integer >= 2, got 'abc'",
    ),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """Every CLI case at once (most end before importing torch), and one short training run
    with ``FF_LIGHTNING_CACHE`` set to a file but the data elsewhere."""
    tmp = tmp_path_factory.mktemp("cli")
    blocker = tmp / "a-file"
    blocker.write_text("")
    procs = {}
    for name, (recipe, args, env, _) in CLI_CASES.items():
        env = {k: v.replace("<file>", str(blocker)) for k, v in env.items()}
        cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *args]
        cmd.append(f"hydra.run.dir={tmp / name}")
        procs[name] = subprocess.Popen(
            cmd, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    trains = [
        sys.executable,
        str(ROOT / "recipes" / "train.py"),
        *_small(tmp, "fusionflow=off"),
        f"hydra.run.dir={tmp / 'trains'}",
    ]
    procs["trains"] = subprocess.Popen(
        trains,
        env=_env(FF_LIGHTNING_CACHE=str(blocker)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        runs[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    runs["blocker"] = subprocess.CompletedProcess([], 0, str(blocker), "")
    return runs


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_recipes_end_in_one_error_line(
    case: str, cli_runs: dict[str, subprocess.CompletedProcess]
) -> None:
    run = cli_runs[case]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert errors[0].startswith(f"error: {CLI_CASES[case][3]}"), errors[0]


def test_recipe_trains_with_a_cache_file_when_the_data_is_elsewhere(
    cli_runs: dict[str, subprocess.CompletedProcess],
) -> None:
    # The native library's cache falls back (one warning naming the path); the dataset's root
    # is given, so nothing else reads FF_LIGHTNING_CACHE.
    from ff_lightning.augment._native_load import packaged_library

    run, blocker = cli_runs["trains"], cli_runs["blocker"].stdout
    assert run.returncode == 0, run.stderr[-2000:]
    named = [line for line in run.stderr.splitlines() if f"FF_LIGHTNING_CACHE={blocker!r}" in line]
    # A checkout without the packaged library builds it on first use, in the cache: that falls
    # back to the torch kernels with one warning. A packaged library needs no cache at all.
    assert len(named) == (0 if packaged_library() is not None else 1), run.stderr[-2000:]
