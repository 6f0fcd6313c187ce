"""FusionAccelerate: the cooperative pipeline in a hand-written (or Accelerate) loop, on CPU."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ff_lightning import FusionDataModule
from ff_lightning.control.controller import StepStats
from ff_lightning.errors import ConfigError
from ff_lightning.frontends.accelerate import FusionAccelerate
from ff_lightning.testing.probes import FakeProbe

from .test_datamodule import TensorImages


def _dm(n: int = 32, source: Any = None, **kw: Any) -> FusionDataModule:
    args: dict[str, Any] = dict(image_size=32, batch_size=8, num_workers=0, seed=0)
    args.update(kw)
    return FusionDataModule(source or TensorImages(n), TensorImages(8, seed=1), **args)


class FakeAccelerator:
    """Stands in for one of two ranks; ``reduce`` averages with the other rank's numbers."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, process_index: int = 0) -> None:
        self.process_index = process_index
        self.is_main_process = process_index == 0
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        assert reduction == "mean" and tensor.dtype == torch.float64
        other = tensor * 3.0  # the other rank measured three times our numbers
        out = (tensor + other) / 2
        self.calls.append((tensor.clone(), out.clone()))
        return out


@pytest.mark.parametrize(
    ("mode", "ratio", "expected"), [("off", None, 0), ("gpu", None, 8), ("fixed", 0.25, 2)]
)
def test_modes_route_the_expected_share(mode: str, ratio: float | None, expected: int) -> None:
    dm = _dm()
    fusion = FusionAccelerate(dm, mode=mode, ratio=ratio)
    n_device, seen = [], 0
    for epoch in range(2):
        for images, targets in fusion.train_epoch(epoch, device="cpu"):
            n_device.append(dm.device_stage.last.n_device)
            assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
            assert targets.dtype == torch.long and targets.shape == (8,)
            assert images.min() < 0  # normalised, not raw [0, 255]
            seen += 8
    assert n_device == [expected] * 8 and seen == 64
    assert fusion.ratio == dm.ratio == expected / 8
    assert [d.kind for d in fusion.history] == ["init", "mode", "mode"]  # one per epoch


def _images_by_index(mode: str, epoch: int) -> dict[int, torch.Tensor]:
    fusion = FusionAccelerate(_dm(), mode=mode)
    return {
        int(i): x
        for images, _, indices in fusion.train_epoch(epoch, with_indices=True)
        for i, x in zip(indices, images, strict=True)
    }


@pytest.mark.parametrize("epoch", [0, 1])
def test_route_does_not_change_what_the_loop_sees(epoch: int) -> None:
    cpu, dev = _images_by_index("off", epoch), _images_by_index("gpu", epoch)
    assert cpu.keys() == dev.keys() == set(range(32))
    for i in cpu:
        assert torch.equal(cpu[i], dev[i]), f"sample {i} differs between routes"


def test_eval_batches_are_normalised_and_not_routed() -> None:
    dm = _dm()
    fusion = FusionAccelerate(dm, mode="gpu")
    batches = list(fusion.eval_batches())
    assert sum(x.shape[0] for x, _ in batches) == 8 and dm.device_stage.steps == 0
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32) and x.min() < 0
    with pytest.raises(ConfigError, match="no test dataset"):
        fusion.eval_batches(split="test")
    with pytest.raises(ConfigError, match=r"`split` must be one of \('val', 'test'\)"):
        fusion.eval_batches(split="train")


class ClockedImages(TensorImages):
    """Each item read advances a fake clock by 1/8 s, so a batch of 8 takes exactly 1 s."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__(32)
        self.clock = clock

    def __getitem__(self, i: int) -> Any:
        self.clock[0] += 0.125
        return super().__getitem__(i)


def test_step_timing_and_logged_metrics_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    dm = _dm(source=ClockedImages(clock))
    logged: list[tuple[int, dict[str, float]]] = []
    fusion = FusionAccelerate(
        dm, mode="off", log_every_n_steps=1, log_fn=lambda m, step: logged.append((step, m))
    )
    observed: list[StepStats] = []
    observe = fusion.controller.observe
    monkeypatch.setattr(fusion.controller, "observe", lambda s: (observed.append(s), observe(s)))
    for _ in fusion.train_epoch(0):
        clock[0] += 2.0  # the loop body: forward, backward, optimizer step
    # The first step is skipped (its wait includes starting the loader): 3 of 4 observed.
    assert [(s.data_wait_s, s.step_s, s.batch_size, s.n_device) for s in observed] == [
        (1.0, 3.0, 8, 0)
    ] * 3
    assert [step for step, _ in logged] == [2, 3, 4, 4]
    for _, metrics in logged[:3]:
        assert metrics.pop("fusionflow/worker_aug_ms") > 0  # the workers' own CPU seconds
        assert metrics == {
            "fusionflow/ratio": 0.0,
            "fusionflow/data_wait_ms": 1000.0,
            "fusionflow/step_ms": 3000.0,
            "fusionflow/aug_ms": 0.0,
            "fusionflow/device_samples": 0.0,
            "fusionflow/h2d_ms": 0.0,
            "fusionflow/oom_events": 0.0,
            "fusionflow/cpu_fallback_samples": 0.0,
        }
    assert logged[3][1] == {"fusionflow/decided_ratio": 0.0}  # the epoch-end decision


def test_auto_decides_every_n_steps(caplog: pytest.LogCaptureFixture) -> None:
    dm = _dm()
    fusion = FusionAccelerate(dm, mode="auto", interval="steps", every_n_steps=3, warmup_steps=0)
    at: list[int] = []
    decide = fusion.controller.decide
    fusion.controller.decide = lambda **kw: (at.append(fusion.global_step), decide(**kw))[1]  # type: ignore[method-assign]
    with caplog.at_level("INFO", logger="ff_lightning"):
        for epoch in range(3):  # 4 steps per epoch; the count runs on across epochs
            for _ in fusion.train_epoch(epoch):
                assert dm.ratio == fusion.ratio
    assert at == [3, 6, 9, 12]
    assert len(fusion.history) == 5 and all(d.reason for d in fusion.history)
    assert all(0.0 <= d.ratio <= 1.0 for d in fusion.history)
    assert dm.ratio == fusion.ratio == fusion.history[-1].ratio
    decisions = [r.getMessage() for r in caplog.records if " -> " in r.getMessage()]
    assert len(decisions) == 4 and fusion.history[-1].reason in decisions[-1]


def test_max_steps_stops_early_and_still_decides() -> None:
    fusion = FusionAccelerate(_dm(), mode="off")
    assert sum(1 for _ in fusion.train_epoch(0, max_steps=2)) == 2
    assert fusion.global_step == 2 and len(fusion.history) == 2


def test_state_dict_round_trip_restores_the_ratio() -> None:
    fusion = FusionAccelerate(_dm(), mode="auto", interval="steps", every_n_steps=2)
    for _ in fusion.train_epoch(0):
        pass
    state = fusion.state_dict()
    assert state["controller"]["ratio"] == fusion.ratio
    assert len(state["controller"]["history"]) == len(fusion.history)
    state["controller"]["ratio"] = 0.375  # pretend the controller had moved there
    dm2 = _dm()
    restored = FusionAccelerate(dm2, mode="auto")
    restored.load_state_dict(state)
    assert restored.ratio == dm2.ratio == 0.375
    assert restored.global_step == 4 and len(restored.history) == len(fusion.history)
    n_device = [dm2.device_stage.last.n_device for _ in restored.train_epoch(1)]
    assert n_device == [3] * 4  # round(0.375 * 8)


@pytest.fixture
def accelerator() -> Any:
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    yield accelerate.Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_accelerate_save_and_load_state_restore_the_ratio(accelerator: Any, tmp_path: Path) -> None:
    dm = _dm()
    fusion = FusionAccelerate(dm, mode="auto", accelerator=accelerator, log_fn=accelerator.log)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(fusion)
    for images, targets in fusion.train_epoch(0):  # the accelerator's device by default
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    state = fusion.state_dict()
    state["controller"]["ratio"] = 0.375
    fusion.load_state_dict(state)
    accelerator.save_state(str(tmp_path / "ckpt"))
    state["controller"]["ratio"] = 0.75
    fusion.load_state_dict(state)
    assert fusion.ratio == dm.ratio == 0.75
    accelerator.load_state(str(tmp_path / "ckpt"))
    assert fusion.ratio == dm.ratio == 0.375


def test_ranks_share_the_data_and_decide_on_reduced_statistics() -> None:
    seen: list[set[int]] = []
    for rank in (0, 1):
        acc = FakeAccelerator(rank)
        fusion = FusionAccelerate(_dm(64), mode="off", accelerator=acc, warmup_steps=0)
        seen.append({int(i) for _, _, idx in fusion.train_epoch(0, with_indices=True) for i in idx})
        assert len(acc.calls) == 1  # one reduce per decision, on every rank
        sent, got = acc.calls[0]
        decision = fusion.history[-1]
        assert decision.throughput is not None
        # The decision used the reduced numbers (twice this rank's), not this rank's own.
        pos = [i for i, v in enumerate(got.tolist()) if v == decision.throughput]
        assert pos and sent[pos[0]].item() * 2 == decision.throughput
    assert len(seen[0]) == len(seen[1]) == 32 and seen[0].isdisjoint(seen[1])


def test_single_process_does_not_reduce() -> None:
    acc = FakeAccelerator()
    acc.num_processes = 1  # type: ignore[misc]
    fusion = FusionAccelerate(_dm(), mode="off", accelerator=acc)
    assert sum(1 for _ in fusion.train_epoch(0)) == 4 and acc.calls == []


def test_out_of_memory_falls_back_caps_and_skips_nothing() -> None:
    dm = _dm()
    original = dm.policy.apply_batch

    def always_oom(images: torch.Tensor, params: Any) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (forced by the test)")

    dm.device_stage._apply_device = always_oom  # type: ignore[method-assign]
    dm.device_stage._cpu = lambda x, p: original(x, p)  # type: ignore[method-assign]
    fusion = FusionAccelerate(dm, mode="gpu", probe=FakeProbe(), reserve_mb=0)
    got, n_device = {}, []
    for images, _, indices in fusion.train_epoch(0, with_indices=True):
        n_device.append(dm.device_stage.last.n_device)
        got.update({int(i): x for i, x in zip(indices, images, strict=True)})
    guard = fusion.memory_guard
    assert guard is not None and guard.oom_events >= 1 and guard.cpu_fallback_samples == 8
    # The cap applies from the next batch the sampler emits, not only at the next decision.
    assert n_device == [8, 0, 0, 0]
    assert fusion.ratio == dm.ratio == 0.0 and any(d.kind == "memory" for d in fusion.history)
    expected = _images_by_index("off", 0)
    assert got.keys() == expected.keys()
    for i in got:
        assert torch.equal(got[i], expected[i]), f"sample {i} was not augmented as planned"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fast"}, "`mode` must be one of ('auto', 'off', 'gpu', 'fixed'), got 'fast'"),
        ({"interval": "hourly"}, "`interval` must be one of ('epoch', 'steps'), got 'hourly'"),
        ({"every_n_steps": 0}, "`every_n_steps` must be an integer >= 1, got 0"),
        ({"mode": "fixed"}, "`ratio` is required when mode='fixed'"),
        ({"mode": "fixed", "ratio": 1.5}, "`ratio` must be in [0, 1], got 1.5"),
        ({"ratio": 0.3}, "`ratio` is only used when mode='fixed', got mode='auto'"),
        ({"reserve_mb": -1}, "`reserve_mb` must be >= 0 MiB, got -1"),
        ({"log_fn": "wandb"}, "`log_fn` must be callable"),
        ({"accelerator": object()}, "`accelerator` must be an accelerate.Accelerator"),
        ({"controller_kwargs": {"hysteresis": 2.0}}, "`controller_kwargs`: `hysteresis`"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        FusionAccelerate(_dm(), **kwargs)
    assert message in str(err.value)


def test_not_a_datamodule_says_what_to_do() -> None:
    with pytest.raises(
        ConfigError, match=r"needs a Pipeline \(or a FusionDataModule\).*Pipeline\(train_dataset"
    ):
        FusionAccelerate(TensorImages(8))  # type: ignore[arg-type]
    fusion = FusionAccelerate(_dm())
    with pytest.raises(ConfigError, match="`epoch` must be an integer >= 0, got -1"):
        fusion.train_epoch(-1)
    with pytest.raises(ConfigError, match="`max_steps` must be an integer >= 1, got 0"):
        fusion.train_epoch(0, max_steps=0)


def test_importing_the_adapter_does_not_import_accelerate() -> None:
    code = (
        "import sys; import ff_lightning.frontends.accelerate; "
        "assert 'accelerate' not in sys.modules, 'accelerate was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_ranks_agree_on_the_smallest_memory_cap() -> None:
    class GatheringAccelerator(FakeAccelerator):
        def gather(self, tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor, torch.full_like(tensor, 0.25)])  # the other rank's cap

    fusion = FusionAccelerate(_dm(), mode="gpu", accelerator=GatheringAccelerator())
    assert fusion.ratio == 1.0
    fusion.decide()
    assert fusion.ratio == 0.25 and any(d.kind == "memory" for d in fusion.history)
