"""The Lightning-free ``Pipeline``: one transfer sequence, the same batches as the DataModule's,
and the import boundaries it promises (no Lightning for a plain loop, no controller in the
workers, no recipe engine on the plugin's import path)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from ff_lightning import FusionDataModule
from ff_lightning.errors import ConfigError
from ff_lightning.pipeline import Pipeline, PipelineOptions
from ff_lightning.pipeline.stages import DeviceTail, RoutedStage, WorkerGeometry
from tests.test_datamodule import TensorImages


def _pipeline(**kw: object) -> Pipeline:
    args: dict = dict(image_size=32, batch_size=8, num_workers=0, seed=3, policy="randaugment")
    args.update(kw)
    return Pipeline(TensorImages(24), TensorImages(8, seed=1), **args)


def test_transfer_gives_what_the_lightning_hooks_give() -> None:
    pipe = _pipeline()
    dm = FusionDataModule(TensorImages(24), TensorImages(8, seed=1), **_kwargs())
    for p in (pipe, dm.pipeline):
        p.set_ratio(0.5)
    a = pipe.transfer(next(iter(pipe.train_loader())), "cpu")
    raw = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    b = dm.on_after_batch_transfer(raw, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == torch.float32 and a[0].shape == (8, 3, 32, 32)
    # Evaluation batches go through the same transfer (normalised only).
    x, y = pipe.transfer(next(iter(pipe.eval_loader("val"))), "cpu")
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.long


def _kwargs() -> dict:
    return dict(image_size=32, batch_size=8, num_workers=0, seed=3, policy="randaugment")


def test_the_keyword_form_builds_the_stage_list() -> None:
    pipe = _pipeline(random_erasing=0.25)
    kinds = [type(s) for s in pipe.stages]
    assert kinds == [WorkerGeometry, RoutedStage, DeviceTail]
    assert pipe.geometry.size == 32 and pipe.tail.random_erasing == 0.25
    text = pipe.describe()
    assert "workers" in text and "device" in text and "RandAugment" in text
    assert "RandomErasing(p=0.25" in text


def test_options_are_checked_once_and_named() -> None:
    with pytest.raises(
        ConfigError, match=r"`Pipeline` got an unknown argument `polcy` \(did you mean `policy`\?\)"
    ):
        _pipeline(polcy="randaugment")
    with pytest.raises(
        ConfigError, match=r"`FusionDataModule` got an unknown argument `batchsize`"
    ):
        FusionDataModule(TensorImages(8), batchsize=4)
    with pytest.raises(ConfigError, match="either as `options=` or as keywords"):
        Pipeline(TensorImages(8), options=PipelineOptions(), batch_size=4)
    with pytest.raises(ConfigError, match="`batch_size` must be an integer >= 1, got 0"):
        PipelineOptions(batch_size=0)


def test_resolved_options_fill_in_what_depends_on_the_data() -> None:
    opts = PipelineOptions(num_workers=0).resolve(TensorImages(4))
    assert opts.resolved and opts.channels == 3 and len(opts.mean) == 3
    assert opts.device_decode is False  # in-memory tensors: nothing to decode
    assert hasattr(opts.policy, "apply_batch")
    assert opts.resolve(TensorImages(4)) is opts


def test_the_datamodule_reads_the_pipeline_it_wraps() -> None:
    pipe = _pipeline()
    dm = FusionDataModule.from_pipeline(pipe)
    assert dm.pipeline is pipe and dm.device_stage is pipe.stage and dm.router is pipe.router
    assert dm.batch_size == 8 and dm.image_size == 32 and dm.channels == 3
    dm.set_ratio(0.25)
    assert pipe.ratio == 0.25 == dm.ratio


_HIDE_LIGHTNING = """
import importlib.abc, sys

class _Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, _Hidden())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent),
    )


def test_fusion_accelerate_drives_a_plain_loop_without_lightning() -> None:
    done = _run(
        _HIDE_LIGHTNING
        + """
import torch
from ff_lightning.pipeline import Pipeline
from ff_lightning.frontends.accelerate import FusionAccelerate

class Images(torch.utils.data.Dataset):
    def __init__(self, n):
        self.x = torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8)
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i], i % 10

pipe = Pipeline(Images(32), Images(8), image_size=16, batch_size=8, num_workers=0,
                policy="trivialaugment")
fusion = FusionAccelerate(pipe, mode="fixed", ratio=0.5)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
steps = 0
for images, targets in fusion.train_epoch(0):
    loss = torch.nn.functional.cross_entropy(model(images), targets)
    loss.backward(); opt.step(); opt.zero_grad(); steps += 1
evaluated = sum(len(t) for _, t in fusion.eval_batches())
assert steps == 4 and evaluated == 8, (steps, evaluated)
assert fusion.ratio == 0.5 and len(fusion.history) == 2
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
assert not leaked, leaked
print("ok")
"""
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_the_plugins_import_path_carries_no_recipe_engine() -> None:
    # What our imports add beyond Lightning's own (torchmetrics, imported by Lightning, loads
    # matplotlib when it is installed: that one is Lightning's, not ours).
    done = _run(
        """
import sys
import lightning
before = set(sys.modules)
import ff_lightning, ff_lightning.augment
from ff_lightning import FusionDataModule, FusionFlow
from ff_lightning.pipeline import Pipeline
import ff_lightning.frontends.accelerate
added = set(sys.modules) - before
heavy = sorted(m for m in added if m.split(".")[0] in ("hydra", "omegaconf", "kornia", "matplotlib"))
assert not heavy, heavy
print("ok")
"""
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bare = _run(
        _HIDE_LIGHTNING
        + """
import ff_lightning, ff_lightning.augment, ff_lightning.pipeline.pipeline
import ff_lightning.frontends.accelerate
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("hydra", "omegaconf", "kornia", "matplotlib", "lightning"))
assert not heavy, heavy
print("ok")
"""
    )
    assert bare.returncode == 0, bare.stderr[-3000:]


def test_a_spawned_worker_imports_nothing_from_the_controller() -> None:
    from tests.worker_probe import ImportProbe

    # The probe counts the controller's and Lightning's modules in the worker that reads it.
    pipe = Pipeline(
        ImportProbe(("ff_lightning.control", "lightning", "pytorch_lightning")),
        image_size=8,
        batch_size=4,
        num_workers=1,
        policy="randaugment",
        multiprocessing_context="spawn",
        persistent_workers=False,
    )
    pipe.set_ratio(0.5)
    batch = next(iter(pipe.train_loader()))
    assert batch["targets"].tolist() == [0, 0, 0, 0]
