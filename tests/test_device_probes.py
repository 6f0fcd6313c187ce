"""The memory probes: NVML found by UUID (not by index), MIG, fallbacks, utilisation."""

from __future__ import annotations

import logging

import pytest
import torch

from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.pipeline.device.probes import (
    MemoryProbe,
    NullProbe,
    NvmlProbe,
    TorchCudaProbe,
    find_nvml_device,
    make_probe,
)
from ff_lightning.testing.probes import FakeGpu, FakeNvml, FakeProbe

GiB = 1 << 30

UUIDS = [
    "GPU-0a1b2c3d-0000-4000-8000-000000000000",
    "GPU-1a1b2c3d-1111-4111-8111-111111111111",
    "GPU-2a1b2c3d-2222-4222-8222-222222222222",
    "GPU-3a1b2c3d-3333-4333-8333-333333333333",
]


def four_gpus(**kwargs) -> FakeNvml:
    """Four GPUs in PCI bus order, each with its own free memory (10, 20, 30, 40 GiB)."""
    gpus = [
        FakeGpu(u, total=80 * GiB, free=(i + 1) * 10 * GiB, utilization=10 * i)
        for i, u in enumerate(UUIDS)
    ]
    return FakeNvml(gpus=gpus, **kwargs)


def test_make_probe_on_cpu_is_a_null_probe():
    probe, note = make_probe("cpu")
    assert isinstance(probe, NullProbe) and not probe.available
    assert probe.free_bytes() is None and probe.peak_allocated_bytes() == 0
    assert probe.utilization_percent() is None
    assert "cpu" in note


def test_cuda_order_differs_from_nvml_order():
    # CUDA's default order is fastest first: cuda:0 is the GPU on the second PCI slot.
    nvml = four_gpus()
    props = nvml.device_properties([1, 0, 3, 2])
    probe, note = make_probe("cuda:0", nvml_module=nvml, device_properties=props)
    assert isinstance(probe, NvmlProbe) and probe.available and probe.name == "nvml"
    assert probe.free_bytes() == 20 * GiB and probe.total_bytes() == 80 * GiB
    assert probe.uuid == UUIDS[1] and UUIDS[1] in note
    assert ("index", 0) not in nvml.calls  # nothing was looked up by CUDA's index
    probe3, _ = make_probe("cuda:3", nvml_module=nvml, device_properties=props)
    assert probe3.free_bytes() == 30 * GiB


def test_cuda_visible_devices_subset(monkeypatch):
    # CUDA_VISIBLE_DEVICES=3,1: cuda:0 is NVML's GPU 3, cuda:1 is GPU 1.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    nvml = four_gpus()
    props = nvml.device_properties([3, 1])
    probes = [make_probe(f"cuda:{i}", nvml_module=nvml, device_properties=props)[0] for i in (0, 1)]
    assert [p.free_bytes() for p in probes] == [40 * GiB, 20 * GiB]
    assert [p.utilization_percent() for p in probes] == [30.0, 10.0]


def test_uuid_spellings_are_matched():
    nvml = four_gpus()
    props = nvml.device_properties([0, 1, 2], uuids=[UUIDS[2].upper(), UUIDS[0], UUIDS[1][4:]])
    found = [find_nvml_device(nvml, i, props).uuid for i in range(3)]
    assert found == [UUIDS[2], UUIDS[0], UUIDS[1]]


def test_torch_uuid_bytes_are_matched():
    import uuid

    class CUuuid:  # torch's _CUuuid exposes the 16 raw bytes
        bytes = uuid.UUID(UUIDS[3][4:]).bytes

    class Props:
        uuid = CUuuid()

    nvml = four_gpus()
    assert find_nvml_device(nvml, 0, lambda i: Props()).handle is nvml.gpus[3]


def test_lookup_by_enumeration_when_get_handle_by_uuid_fails():
    nvml = four_gpus(fail=("nvmlDeviceGetHandleByUUID",))
    probe, _ = make_probe("cuda:0", nvml_module=nvml, device_properties=nvml.device_properties([2]))
    assert isinstance(probe, NvmlProbe) and probe.free_bytes() == 30 * GiB


def test_an_unknown_uuid_falls_back_to_the_driver(caplog):
    nvml = four_gpus()
    props = nvml.device_properties([0], uuids=["ffffffff-ffff-4fff-8fff-ffffffffffff"])
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        probe, note = make_probe("cuda:0", nvml_module=nvml, device_properties=props)
    assert isinstance(probe, TorchCudaProbe)
    assert "LookupError" in note and "falling back to torch.cuda.mem_get_info" in note
    assert any("no NVML device has the UUID" in r.getMessage() for r in caplog.records)


def test_a_device_without_properties_falls_back(caplog):
    def props(index):
        raise RuntimeError("Found no NVIDIA driver on your system")

    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        probe, note = make_probe("cuda:1", nvml_module=four_gpus(), device_properties=props)
    assert isinstance(probe, TorchCudaProbe) and "NVML unavailable for cuda:1" in note


def test_mig_instance_uses_mem_get_info(caplog):
    # A MIG instance: NVML knows it as MIG-<uuid>; its parent has MIG mode on.
    parent = FakeGpu("GPU-4a1b2c3d-4444-4444-8444-444444444444", free=70 * GiB, mig_mode=1)
    instance = FakeGpu("MIG-5a1b2c3d-5555-4555-8555-555555555555", free=70 * GiB, utilization=None)
    nvml = FakeNvml(gpus=[parent, instance])
    props = nvml.device_properties([1])
    with caplog.at_level(logging.INFO, logger="ff_lightning"):
        probe, note = make_probe("cuda:0", nvml_module=nvml, device_properties=props)
    assert isinstance(probe, TorchCudaProbe) and "MIG instance" in note
    assert "using torch.cuda.mem_get_info" in note
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)  # expected, not a fault
    with pytest.raises(Exception, match="MIG instance"):
        NvmlProbe(0, nvml=nvml, device_properties=props)


def test_mig_detected_from_the_uuid_prefix_or_the_mig_mode():
    # torch spelling the UUID with NVML's MIG- prefix.
    instance = FakeGpu("MIG-5a1b2c3d-5555-4555-8555-555555555555", by_uuid=False)
    nvml = FakeNvml(gpus=[FakeGpu(UUIDS[0]), instance])
    match = find_nvml_device(nvml, 0, nvml.device_properties([1], uuids=[instance.uuid]))
    assert match.mig and match.handle is instance
    # A GPU in MIG mode matched by its own UUID: its memory is the whole GPU's, not ours.
    nvml = FakeNvml(gpus=[FakeGpu(UUIDS[0], mig_mode=1), FakeGpu(UUIDS[1], mig_mode=0)])
    props = nvml.device_properties([0, 1])
    assert find_nvml_device(nvml, 0, props).mig
    assert not find_nvml_device(nvml, 1, props).mig
    probe, note = make_probe(
        "cuda:0", nvml_module=nvml, device_properties=nvml.device_properties([0])
    )
    assert isinstance(probe, TorchCudaProbe) and "MIG" in note


def test_make_probe_falls_back_when_nvml_fails(caplog):
    nvml = four_gpus(fail_init=True)
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        probe, note = make_probe(torch.device("cuda", 0), nvml_module=nvml)
    assert isinstance(probe, TorchCudaProbe)
    assert "NVML unavailable" in note and "Driver Not Loaded" in note
    assert "falling back to torch.cuda.mem_get_info" in note
    assert any(
        r.levelno == logging.WARNING and "NVML unavailable" in r.getMessage()
        for r in caplog.records
    )
    if not torch.cuda.is_available():
        assert probe.free_bytes() is None and MemoryGuard(probe).budget_bytes() is None
        assert probe.utilization_percent() is None


def test_nvml_errors_after_the_lookup():
    nvml = four_gpus()
    probe, _ = make_probe("cuda:0", nvml_module=nvml, device_properties=nvml.device_properties([2]))
    assert probe.utilization_percent() == 20.0
    nvml.gpus[2].utilization = None  # NOT_SUPPORTED: None, and NVML is not asked again
    assert probe.utilization_percent() is None and probe.utilization_percent() is None
    assert nvml.calls.count(("utilization", UUIDS[2])) == 2


def test_guard_budget_from_the_matched_gpu():
    nvml = four_gpus()
    probe, _ = make_probe(
        "cuda:1", nvml_module=nvml, device_properties=nvml.device_properties([3, 0])
    )
    guard = MemoryGuard(probe, reserve_mb=1024)
    cached = probe.reserved_bytes() - probe.allocated_bytes()
    assert guard.budget_bytes() == 10 * GiB + cached - GiB  # GPU 0's free memory, not GPU 1's


def test_explicit_nvml_index_bypasses_the_lookup():
    nvml = four_gpus()
    probe = NvmlProbe(0, nvml=nvml, nvml_index=3)
    assert probe.free_bytes() == 40 * GiB and probe.uuid is None


def test_make_probe_without_injection_never_raises():
    probe, note = make_probe("cuda")  # real pynvml: works on a GPU box, falls back here
    assert isinstance(probe, NvmlProbe | TorchCudaProbe) and note


def test_probes_satisfy_the_protocol():
    for probe in (NullProbe(), FakeProbe(), TorchCudaProbe(0)):
        assert isinstance(probe, MemoryProbe)
    assert TorchCudaProbe(0).utilization_percent() is None
    fake = FakeProbe(allocated=7, peak=100, utilization=55.0)
    assert fake.utilization_percent() == 55.0
    fake.reset_peak()
    assert fake.peak_allocated_bytes() == 7 and fake.resets == 1


@pytest.mark.cuda
def test_the_real_device_is_found_by_uuid():
    index = torch.cuda.current_device()
    probe, note = make_probe(f"cuda:{index}")
    if "MIG" in note:  # a MIG instance: the driver's figures, not the parent GPU's
        assert isinstance(probe, TorchCudaProbe), note
        return
    pytest.importorskip("pynvml")
    # torch's UUID bytes and NVML's "GPU-..." string must meet: a LookupError here means the
    # two spell the same GPU differently.
    assert isinstance(probe, NvmlProbe), note
    free, total = torch.cuda.mem_get_info(index)
    # The same GPU as the driver's: about the same total memory.
    assert abs(probe.total_bytes() - total) <= 0.05 * total, (probe.total_bytes(), total, note)
    assert 0 < probe.free_bytes() <= probe.total_bytes()
    util = probe.utilization_percent()
    assert util is None or 0.0 <= util <= 100.0
