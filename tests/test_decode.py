"""Decode on the device (issue 9), on CPU: the JPEG header probe, the encoded route, route
independence, fallbacks for files the device cannot decode, chunking, auto detection and the
costliest-by-size choice."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ff_lightning import FusionDataModule
from ff_lightning.errors import ConfigError, CorruptImageError
from ff_lightning.pipeline.batch import RoutedBatch
from ff_lightning.pipeline.device.memory import MemoryGuard
from ff_lightning.pipeline.jpeg import decode_jpegs, jpeg_header
from ff_lightning.sources.datasets import ImageFolderSource, build_source
from ff_lightning.sources.decoding import reads_encoded_files
from ff_lightning.testing.probes import FakeProbe
from tests.test_datamodule import TensorImages

SIZE = 32


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour picture (gradients and a disc), so crops and resizes act on structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            255 * x / max(w - 1, 1),
            255 * y / max(h - 1, 1),
            127 + 100 * np.sin((x + y) / rng.uniform(4, 9)),
        ],
        -1,
    )
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, min(h, w) / 4
    img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg_bytes(arr: np.ndarray, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def _corrupt_scan(data: bytes) -> bytes:
    """Valid headers, garbage entropy-coded data: torchvision rejects it, PIL decodes it."""
    sos = data.index(b"\xff\xda")
    noise = np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8).tobytes()
    return data[: sos + 20] + noise.replace(b"\xff", b"\x00")


def _truncated(data: bytes) -> bytes:
    """Cut in the middle of the scan: neither torchvision nor PIL decodes it."""
    return data[: data.index(b"\xff\xda") + 40]


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        for split in ("train", "val"):
            p = root / split / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return root


def _jpeg_tree(root: Path, n: int = 12) -> Path:
    files = {}
    for i in range(n):
        h, w = 40 + 9 * (i % 4), 48 + 13 * (i % 3)
        files[f"c{i % 2}/img{i:02d}.jpg"] = _jpeg_bytes(_picture(h, w, i))
    return _tree(root, files)


def _dm(source: Any, **kw: Any) -> FusionDataModule:
    args: dict[str, Any] = dict(
        image_size=SIZE, batch_size=6, num_workers=0, seed=5, policy="randaugment"
    )
    args.update(kw)
    return FusionDataModule(source, **args)


def _by_index(dm: FusionDataModule, ratio: float) -> tuple[dict[int, torch.Tensor], list[Any]]:
    """Every training sample as the model's uint8 input (both routes applied), by index."""
    dm.set_ratio(ratio)
    out: dict[int, torch.Tensor] = {}
    routes = []
    for batch in dm.train_dataloader():
        batch = dm.on_before_batch_transfer(batch, 0)
        route = batch["route"]
        routes.append(route)
        x = dm.device_stage.augment(batch["images"], route, batch["targets"])
        for i, img, t in zip(route.indices.tolist(), x, batch["targets"].tolist(), strict=True):
            out[i] = (img.clone(), t)
    return out, routes


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


# --------------------------------------------------------------------------- header probe


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("rgb", (40, 56, 3, True, 1)),
        ("grey", (40, 56, 1, True, 1)),
        ("cmyk", (40, 56, 4, True, 1)),
        ("progressive", (40, 56, 3, False, 1)),
        ("exif6", (40, 56, 3, True, 6)),
    ],
)
def test_jpeg_header_reads_size_components_and_orientation(kind: str, expected: tuple) -> None:
    arr = _picture(40, 56, 1)
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    if kind == "grey":
        img.convert("L").save(buf, format="JPEG")
    elif kind == "cmyk":
        img.convert("CMYK").save(buf, format="JPEG")
    elif kind == "progressive":
        img.save(buf, format="JPEG", progressive=True)
    elif kind == "exif6":
        exif = Image.Exif()
        exif[0x0112] = 6
        img.save(buf, format="JPEG", exif=exif)
    else:
        img.save(buf, format="JPEG")
    data = buf.getvalue()
    # The header alone is enough: nothing past the start of the scan is read.
    head = jpeg_header(data[: data.index(b"\xff\xda")] + b"\xff\xda")
    assert head is not None
    assert (head.height, head.width, head.components, head.baseline, head.orientation) == expected
    pil = Image.open(io.BytesIO(data))
    assert (head.width, head.height) == pil.size
    assert head.orientation == pil.getexif().get(0x0112, 1)
    assert head.device_decodable == (kind in ("rgb", "grey", "exif6"))


def test_jpeg_header_rejects_other_formats() -> None:
    buf = io.BytesIO()
    Image.fromarray(_picture(8, 8, 0)).save(buf, format="PNG")
    assert jpeg_header(buf.getvalue()) is None
    assert jpeg_header(b"") is None
    assert jpeg_header(b"\xff\xd8\xff\xda") is None  # scan before any frame header


def test_one_bad_file_does_not_fail_the_batched_decode() -> None:
    good = [_jpeg_bytes(_picture(30, 20 + 4 * i, i)) for i in range(3)]
    files = [good[0], _truncated(good[1]), good[2]]
    out = decode_jpegs([torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files], "cpu")
    assert out[1] is None
    assert out[0] is not None and tuple(out[0].shape) == (3, 30, 20)
    assert out[2] is not None and tuple(out[2].shape) == (3, 30, 28)


# --------------------------------------------------------------------------- auto detection


def test_auto_turns_device_decode_on_for_sources_that_read_files(tmp_path: Path) -> None:
    files = ImageFolderSource(_jpeg_tree(tmp_path), "train")
    synthetic = build_source(
        "synthetic",
        "train",
        root=tmp_path / "cache",
        image_size=24,
        num_classes=2,
        train_per_class=2,
        val_per_class=1,
        progress=False,
    )
    assert reads_encoded_files(files) and reads_encoded_files(synthetic)
    assert not reads_encoded_files(TensorImages(4))
    assert _dm(files).device_decode is True
    assert _dm(synthetic).device_decode is True
    assert _dm(TensorImages(8)).device_decode is False
    assert _dm(TensorImages(8, pil=True)).device_decode is False
    assert _dm(files, device_decode=False).device_decode is False
    with pytest.raises(ConfigError, match=r"`device_decode=True` needs a training dataset"):
        _dm(TensorImages(8), device_decode=True)
    with pytest.raises(ConfigError, match=r"`device_decode` must be one of"):
        _dm(files, device_decode="yes")


# --------------------------------------------------------------------------- route independence


@pytest.mark.parametrize("policy", ["randaugment", "none"])
def test_routes_agree_within_one_level_with_device_decode(tmp_path: Path, policy: str) -> None:
    source = ImageFolderSource(_jpeg_tree(tmp_path, 12), "train")
    cpu, _ = _by_index(_dm(source, policy=policy), 0.0)
    dev, routes = _by_index(_dm(source, policy=policy), 1.0)
    half, _ = _by_index(_dm(source, policy=policy), 0.5)
    assert sum(len(r.encoded) for r in routes) == len(source)  # every sample decoded here
    assert all(r.stats.prep_s is not None and r.stats.cpu_aug_s is not None for r in routes)
    for i in cpu:
        assert cpu[i][1] == dev[i][1] == half[i][1]
        assert _mad(cpu[i][0], dev[i][0]) <= 1.0
        assert _mad(cpu[i][0], half[i][0]) <= 1.0


def test_device_route_matches_a_reference_decode_and_crop(tmp_path: Path) -> None:
    """What the device route produces is the file, decoded, cropped to its box and resized
    (no augmentation, no flip): checked against PIL's decode and a plain tensor resize."""
    from torchvision.transforms.v2 import functional as TF

    source = ImageFolderSource(_jpeg_tree(tmp_path, 6), "train")
    dm = _dm(source, policy="none", hflip=False, crop_scale=(1.0, 1.0), crop_ratio=(0.1, 10.0))
    dev, _ = _by_index(dm, 1.0)
    for i, (img, _) in dev.items():
        ref = TF.pil_to_tensor(source.load(i))
        ref = TF.resize(ref, [SIZE, SIZE], antialias=True)
        assert _mad(img, ref) <= 1.0


def test_worker_processes_carry_the_encoded_share(tmp_path: Path) -> None:
    source = ImageFolderSource(_jpeg_tree(tmp_path, 12), "train")
    ref, _ = _by_index(_dm(source), 1.0)
    got, routes = _by_index(_dm(source, num_workers=1, persistent_workers=False), 1.0)
    assert all(r.encoded is not None and len(r.encoded) == r.n_device for r in routes)
    for i in ref:
        assert torch.equal(ref[i][0], got[i][0])


# --------------------------------------------------------------------------- fallbacks


def _mixed_tree(root: Path) -> Path:
    pics = [_picture(44 + 4 * i, 52, 10 + i) for i in range(8)]
    files = {f"a/jpeg{i}.jpg": _jpeg_bytes(p) for i, p in enumerate(pics[:4])}
    png = io.BytesIO()
    Image.fromarray(pics[4]).save(png, format="PNG")
    files["a/x_png.png"] = png.getvalue()
    cmyk = io.BytesIO()
    Image.fromarray(pics[5]).convert("CMYK").save(cmyk, format="JPEG")
    files["b/x_cmyk.jpg"] = cmyk.getvalue()
    files["b/x_progressive.jpg"] = _jpeg_bytes(pics[6], progressive=True)
    files["b/x_webp.webp"] = _webp(pics[7])
    return _tree(root, files)


def _webp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    try:
        Image.fromarray(arr).save(buf, format="WEBP", lossless=True)
    except (KeyError, OSError):  # Pillow built without WebP: a PNG stands in
        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_mixed_formats_in_one_batch_are_all_augmented(tmp_path: Path, caplog: Any) -> None:
    source = ImageFolderSource(_mixed_tree(tmp_path), "train")
    n = len(source)
    cpu, _ = _by_index(_dm(source, batch_size=n), 0.0)
    dm = _dm(source, batch_size=n)
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        dev, routes = _by_index(dm, 1.0)
    (route,) = routes
    names = [source.path(i).name for i in route.encoded.indices.tolist()]
    assert sorted(names) == [f"jpeg{i}.jpg" for i in range(4)]  # only baseline JPEGs travel
    assert dm.device_stage.decode_fallbacks == 4  # PNG, WebP, CMYK, progressive
    assert len([r for r in caplog.records if "not baseline JPEGs" in r.getMessage()]) == 1
    for i in cpu:
        assert _mad(cpu[i][0], dev[i][0]) <= 1.0
    # A second epoch counts again, but logs nothing new.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        _by_index(dm, 1.0)
    assert dm.device_stage.decode_fallbacks == 8
    assert not [r for r in caplog.records if "not baseline JPEGs" in r.getMessage()]


def test_a_file_the_device_cannot_decode_is_decoded_by_pil_on_the_host(
    tmp_path: Path, caplog: Any
) -> None:
    files = {f"a/ok{i}.jpg": _jpeg_bytes(_picture(40, 40 + 4 * i, i)) for i in range(5)}
    files["a/zz_bad_scan.jpg"] = _corrupt_scan(_jpeg_bytes(_picture(48, 48, 9)))
    source = ImageFolderSource(_tree(tmp_path, files), "train")
    bad = [source.path(i).name for i in range(len(source))].index("zz_bad_scan.jpg")
    cpu, _ = _by_index(_dm(source), 0.0)
    dm = _dm(source)
    with caplog.at_level(logging.WARNING, logger="ff_lightning"):
        dev, routes = _by_index(dm, 1.0)
    assert bad in torch.cat([r.encoded.indices for r in routes]).tolist()
    assert dm.device_stage.decode_fallbacks == 1
    assert any("zz_bad_scan.jpg" in r.getMessage() for r in caplog.records)
    for i in cpu:  # the worker route decodes it with PIL too: the same picture
        assert _mad(cpu[i][0], dev[i][0]) <= 1.0


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_a_corrupt_file_follows_the_sources_on_error(tmp_path: Path, on_error: str) -> None:
    files = {f"a/ok{i}.jpg": _jpeg_bytes(_picture(40, 40 + 4 * i, i)) for i in range(5)}
    files["a/ok2_truncated.jpg"] = _truncated(_jpeg_bytes(_picture(48, 48, 9)))
    source = ImageFolderSource(_tree(tmp_path, files), "train", on_error=on_error)
    if on_error == "raise":
        with pytest.raises(CorruptImageError, match="ok2_truncated.jpg"):
            _by_index(_dm(source), 1.0)
        with pytest.raises(CorruptImageError, match="ok2_truncated.jpg"):
            _by_index(_dm(source), 0.0)
        return
    cpu, _ = _by_index(_dm(source), 0.0)
    dev, _ = _by_index(_dm(ImageFolderSource(tmp_path, "train", on_error=on_error)), 1.0)
    bad = [source.path(i).name for i in range(len(source))].index("ok2_truncated.jpg")
    assert cpu[bad][1] == dev[bad][1] == source.targets[bad + 1]  # the next decodable sample
    for i in cpu:
        assert _mad(cpu[i][0], dev[i][0]) <= 1.0


# --------------------------------------------------------------------------- memory, routing


def test_decode_chunks_to_the_memory_budget_at_full_resolution(tmp_path: Path) -> None:
    big = {f"a/big{i}.jpg": _jpeg_bytes(_picture(200, 240, i)) for i in range(6)}
    source = ImageFolderSource(_tree(tmp_path, big), "train")
    ref, _ = _by_index(_dm(source), 1.0)
    dm = _dm(source)
    per_sample = 200 * 240 * 3  # the decode buffer at full source resolution
    # A budget for two decode buffers' worth of working memory (the estimate: 3 x H*W*3).
    probe = FakeProbe(free=int(2.5 * 3 * per_sample), reserved=0, allocated=0)
    dm.device_stage.guard = MemoryGuard(probe, reserve_mb=0)
    calls: list[int] = []
    import ff_lightning.pipeline.jpeg as decode

    real = decode.decode_jpeg

    def counting(files: Any, **kw: Any) -> Any:
        calls.append(len(files) if isinstance(files, list) else 1)
        return real(files, **kw)

    decode.decode_jpeg = counting
    try:
        got, _ = _by_index(dm, 1.0)
    finally:
        decode.decode_jpeg = real
    assert calls == [2, 2, 2]  # one batched call per chunk of two
    assert dm.device_stage.decode_guard.last_chunk == 2
    for i in ref:
        assert torch.equal(ref[i][0], got[i][0])


def test_a_decode_that_runs_out_of_memory_caps_the_share(tmp_path: Path) -> None:
    import ff_lightning.pipeline.jpeg as decode
    from ff_lightning.control.controller import Controller
    from ff_lightning.frontends.session import FusionSession

    source = ImageFolderSource(_jpeg_tree(tmp_path, 6), "train")
    ref, _ = _by_index(_dm(source), 0.5)
    dm = _dm(source)
    ctl = Controller(mode="fixed", ratio=0.5)
    session = FusionSession(
        ctl, interval="epoch", every_n_steps=50, reserve_mb=0, probe=FakeProbe(free=1 << 40)
    )
    session.attach(dm.pipeline, torch.device("cpu"))
    real = decode.decode_jpeg
    calls: list[int] = []

    def running_out(files: Any, **kw: Any) -> Any:
        # The batch's 3 device-routed files: 3 at once runs out, 1 fits, then the next 1 runs
        # out too; the guard decodes the last 2 on the host (the 4th call).
        calls.append(len(files) if isinstance(files, list) else 1)
        if len(calls) in (1, 3):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(files, **kw)

    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    decode.decode_jpeg = running_out
    try:
        x = dm.device_stage.augment(batch["images"], batch["route"], batch["targets"])
    finally:
        decode.decode_jpeg = real
    assert calls == [3, 1, 1, 2]
    # One of the batch's 6 samples decoded on the device before memory ran out: a share of
    # the whole batch, not of its device part (which would be 1/3).
    assert dm.device_stage.decode_guard.ratio_cap == pytest.approx(1 / 6)
    assert dm.device_stage.ratio_cap == pytest.approx(1 / 6)
    session.end_step(0.0)
    assert ctl.memory_cap == pytest.approx(1 / 6)
    assert ctl.ratio <= 1 / 6 + 1e-9
    for i, img in zip(batch["route"].indices.tolist(), x, strict=True):
        assert torch.equal(img, ref[i][0])  # nothing lost: the host decoded the rest alike


def test_costliest_first_sends_the_largest_files_to_the_device(tmp_path: Path) -> None:
    source = ImageFolderSource(_jpeg_tree(tmp_path, 6), "train")
    dm = _dm(source)
    ds = dm.train_dataloader().dataset
    rb = RoutedBatch(tuple(range(6)), 0, 0.5, 3)
    route = ds[rb]["route"]
    sizes = [source.path(i).stat().st_size for i in range(6)]
    largest = sorted(range(6), key=lambda i: -sizes[i])[:3]
    assert sorted(route.encoded.indices.tolist()) == sorted(largest)
    assert route.device_index.tolist() == sorted(largest)


def test_decode_fallbacks_are_logged_as_a_metric(tmp_path: Path) -> None:
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from ff_lightning import FusionFlow
    from tests.test_datamodule import TinyNet

    source = ImageFolderSource(_mixed_tree(tmp_path / "data"), "train")

    class Net(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3 * SIZE * SIZE, 4)

    logger = CSVLogger(str(tmp_path), name="logs")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[FusionFlow(mode="gpu", log_every_n_steps=1)],
    )
    dm = _dm(source, batch_size=4)
    trainer.fit(Net(), datamodule=dm)
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("fusionflow/decode_fallbacks")]
    # Two batches of 4; the first step is not measured (its wait includes start-up), the second
    # logs the running count: all four non-baseline files of the epoch fell back to the host.
    assert (
        rows and float(rows[-1]["fusionflow/decode_fallbacks"]) == dm.device_stage.decode_fallbacks
    )
    assert dm.device_stage.decode_fallbacks == 4


def test_place_decoded_is_torchvisions_resized_crop() -> None:
    # The worker's crop kernel calls `interpolate` directly; it must stay torchvision's
    # `resized_crop(antialias=True)` pixel for pixel, for every orientation and box.
    import torchvision.transforms.v2.functional as TF

    from ff_lightning.pipeline.worker.geometry import orient, place_decoded

    g = torch.Generator().manual_seed(0)

    def rand(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    for _ in range(60):
        img = torch.randint(
            0, 256, (3, rand(20, 200), rand(20, 200)), dtype=torch.uint8, generator=g
        )
        o = rand(1, 8)
        height, width = orient(img, o).shape[-2:]
        h, w = rand(1, height), rand(1, width)
        top, left, size = rand(0, height - h), rand(0, width - w), rand(8, 120)
        flip = bool(rand(0, 1))
        ref = TF.resized_crop(orient(img, o), top, left, h, w, [size, size], antialias=True)
        ref = ref.flip(-1) if flip else ref
        assert torch.equal(place_decoded(img, o, (top, left, h, w), size, flip), ref)
    same = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8, generator=g)
    assert torch.equal(place_decoded(same, 1, (0, 0, 30, 30), 30, False), same)
