"""Decode on a CUDA device (issue 9): nvJPEG's batched decode against torchvision's CPU
decode, per sample within 2 levels, and the stream-ordering defect of pytorch/vision #9606.

These tests need a GPU (the `cuda` marker); run them with `make gpu-check`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ff_lightning.pipeline.jpeg import decode_jpegs
from ff_lightning.sources.datasets import ImageFolderSource
from tests.test_decode import _dm, _jpeg_bytes, _jpeg_tree, _mad, _picture


def _decoded_by_index(dm, ratio: float, device: torch.device) -> dict[int, torch.Tensor]:
    dm.set_ratio(ratio)
    out = {}
    for batch in dm.train_dataloader():
        batch = dm.on_before_batch_transfer(batch, 0)
        route = batch["route"]
        images = batch["images"].to(device)
        targets = batch["targets"].to(device)
        x = dm.device_stage.augment(images, route, targets).cpu()
        for i, img in zip(route.indices.tolist(), x, strict=True):
            out[i] = img
    return out


@pytest.mark.cuda
@pytest.mark.parametrize("policy", ["none", "randaugment"])
def test_cuda_decode_matches_the_cpu_route_within_two_levels(tmp_path: Path, policy: str) -> None:
    source = ImageFolderSource(_jpeg_tree(tmp_path, 24), "train")
    cpu = _decoded_by_index(_dm(source, policy=policy), 0.0, torch.device("cpu"))
    dm = _dm(source, policy=policy)
    gpu = _decoded_by_index(dm, 1.0, torch.device("cuda"))
    assert dm.device_stage.decode_fallbacks == 0
    assert dm.device_stage.decoder.decoded == len(source)
    for i in cpu:
        assert _mad(cpu[i], gpu[i]) <= 2.0, f"sample {i}"


@pytest.mark.cuda
def test_cuda_decode_is_ordered_after_the_callers_stream() -> None:
    """pytorch/vision #9606: memory freed while kernels on the current stream still read it
    must not be overwritten by the decode. Queue work, free its inputs, decode, check both."""
    files = [
        torch.frombuffer(bytearray(_jpeg_bytes(_picture(256, 320, k))), dtype=torch.uint8)
        for k in range(8)
    ]
    ref = [t for t in decode_jpegs(files, "cpu")]
    dev = torch.device("cuda")
    for _ in range(20):
        a = torch.randn(2048, 2048, device=dev)
        expected = []
        sums = []
        for _ in range(8):
            x = torch.full((256 * 320 * 3 // 4,), 1.0, device=dev)
            y = a @ a  # keeps the stream busy
            sums.append(x.sum() + 0 * y[0, 0])
            expected.append(float(x.numel()))
            del x, y
        out = decode_jpegs(files, dev)
        got = [float(s) for s in sums]
        assert got == expected
        for r, o in zip(ref, out, strict=True):
            assert o is not None
            assert _mad(r, o.cpu()) <= 2.0


@pytest.mark.cuda
def test_cuda_side_stream_decode_does_not_overwrite_the_callers_memory() -> None:
    """The stage's decode (finding 1): on a side stream, ordered by wait_stream/record_stream,
    with no drain of the caller's stream; the same check as above."""
    from ff_lightning.pipeline.device.decode import DeviceDecoder

    files = [
        torch.frombuffer(bytearray(_jpeg_bytes(_picture(256, 320, k))), dtype=torch.uint8)
        for k in range(8)
    ]
    ref = decode_jpegs(files, "cpu")
    dev = torch.device("cuda")
    decoder = DeviceDecoder()
    for _ in range(20):
        a = torch.randn(2048, 2048, device=dev)
        sums, expected = [], []
        for _ in range(8):
            x = torch.full((256 * 320 * 3 // 4,), 1.0, device=dev)
            y = a @ a  # keeps the stream busy
            sums.append(x.sum() + 0 * y[0, 0])
            expected.append(float(x.numel()))
            del x, y
        out = decoder._decode(files, dev)
        assert [float(s) for s in sums] == expected
        for r, o in zip(ref, out, strict=True):
            assert o is not None and _mad(r, o.cpu()) <= 2.0
