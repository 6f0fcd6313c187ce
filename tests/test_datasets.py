"""Tests for the synthetic dataset generator and the on-disk dataset sources."""

from __future__ import annotations

import inspect
import json
import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ff_lightning.errors import (
    ConfigError,
    CorruptImageError,
    DatasetNotFoundError,
    FFLightningError,
)
from ff_lightning.sources import datasets as sources
from ff_lightning.sources import synthetic
from ff_lightning.sources.datasets import (
    Cifar10Source,
    ImageFolderSource,
    SyntheticSource,
    build_source,
    to_rgb,
)
from ff_lightning.sources.synthetic import (
    CLASS_NAMES,
    MANIFEST_NAME,
    dataset_dirname,
    ensure_synthetic_dataset,
    render_sample,
)

SMALL = {"num_classes": 10, "image_size": 48, "train_per_class": 6, "val_per_class": 2}


def _files(dataset: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dataset)): p.read_bytes() for p in sorted(dataset.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("cache"), progress=False, **SMALL)


# --------------------------------------------------------------------------- synthetic


def test_generation_is_deterministic_in_seed_and_worker_count(
    small_set: Path, tmp_path: Path, caplog
):
    again = ensure_synthetic_dataset(tmp_path / "a", progress=True, num_workers=2, **SMALL)
    assert "one process" not in caplog.text  # the worker pool really ran
    assert again != small_set and again.name == small_set.name
    reference = _files(small_set)
    assert len(reference) == 10 * (6 + 2)
    assert _files(again) == reference  # byte-identical, whatever the worker count

    other = _files(ensure_synthetic_dataset(tmp_path / "b", seed=1, progress=False, **SMALL))
    assert other.keys() == reference.keys()
    assert sum(other[k] != reference[k] for k in reference) == len(reference)


def test_generation_falls_back_to_one_process(
    small_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
):
    def no_processes(*args, **kwargs):
        raise OSError("no semaphores here")

    monkeypatch.setattr(synthetic, "ProcessPoolExecutor", no_processes)
    out = ensure_synthetic_dataset(tmp_path, progress=False, num_workers=4, **SMALL)
    assert "no semaphores here" in caplog.text
    assert _files(out) == _files(small_set)


def test_files_decode_to_rgb_of_right_size_in_imagefolder_layout(small_set: Path):
    manifest = json.loads((small_set / MANIFEST_NAME).read_text())
    assert manifest["classes"] == list(CLASS_NAMES[:10])
    assert manifest["counts"] == {"train": 60, "val": 20}
    assert (manifest["seed"], manifest["image_size"], manifest["version"]) == (0, 48, 1)
    for split, per_class in (("train", 6), ("val", 2)):
        assert sorted(p.name for p in (small_set / split).iterdir()) == sorted(CLASS_NAMES[:10])
        for class_dir in (small_set / split).iterdir():
            files = sorted(class_dir.iterdir())
            assert len(files) == per_class
            for f in files:
                with Image.open(f) as img:
                    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (48, 48))
                    img.load()
    assert not list(small_set.parent.glob(".*partial*"))  # no temporary folder left behind


def test_cache_is_reused_without_rewriting(small_set: Path, monkeypatch: pytest.MonkeyPatch):
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(synthetic, "_generate", fail)
    assert ensure_synthetic_dataset(small_set.parent, progress=False, **SMALL) == small_set
    assert {p: p.stat().st_mtime_ns for p in small_set.rglob("*")} == before


def test_half_written_cache_is_regenerated(small_set: Path, tmp_path: Path):
    target = tmp_path / small_set.name
    stale = tmp_path / f".{small_set.name}.partial-1-dead"  # left by a killed run
    (stale / "train").mkdir(parents=True)
    os.utime(stale, (0, 0))
    (target / "train" / "circle").mkdir(parents=True)
    (target / "train" / "circle" / "junk.jpg").write_bytes(b"half written")  # no manifest
    assert ensure_synthetic_dataset(tmp_path, progress=False, **SMALL) == target
    assert _files(target) == _files(small_set)
    assert list(tmp_path.iterdir()) == [target]

    # A file deleted after generation is noticed too.
    next(target.rglob("*.jpg")).unlink()
    ensure_synthetic_dataset(tmp_path, progress=False, **SMALL)
    assert _files(target) == _files(small_set)


def test_interrupted_generation_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls = []

    def write_then_die(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    real = synthetic._write_chunk
    monkeypatch.setattr(synthetic, "_write_chunk", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(tmp_path, progress=False, num_workers=0, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_default_parameters_and_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    defaults = {
        k: p.default
        for k, p in inspect.signature(ensure_synthetic_dataset).parameters.items()
        if k in ("num_classes", "image_size", "train_per_class", "val_per_class", "seed")
    }
    assert defaults == {
        "num_classes": 10,
        "image_size": 96,
        "train_per_class": 500,
        "val_per_class": 100,
        "seed": 0,
    }
    assert synthetic._manifest(**defaults)["counts"] == {"train": 5000, "val": 1000}
    assert dataset_dirname(**defaults) == "shapes-s0-c10-96px-500x100-v1"

    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(tmp_path / "env-cache"))
    kwargs = {"num_classes": 2, "image_size": 16, "train_per_class": 1, "val_per_class": 1}
    path = ensure_synthetic_dataset(progress=False, **kwargs)
    assert path == tmp_path / "env-cache" / dataset_dirname(seed=0, **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_classes": 13}, "num_classes"),
        ({"num_classes": 1}, "num_classes"),
        ({"image_size": 0}, "image_size"),
        ({"train_per_class": 0}, "train_per_class"),
        ({"seed": -1}, "seed"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_generation_parameters(tmp_path: Path, kwargs: dict, name: str):
    with pytest.raises(ConfigError, match=f"`{name}`"):
        ensure_synthetic_dataset(tmp_path, progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []  # validated before anything is written


def test_classes_differ_in_structure_not_in_colour():
    n, size = 60, 32
    images = {
        name: np.stack([render_sample(c, i, image_size=size) for i in range(n)]).astype(np.float64)
        for c, name in enumerate(CLASS_NAMES)
    }
    # Colour: every class has about the same mean colour (fg and bg share one distribution).
    means = np.stack([x.mean(axis=(0, 1, 2)) for x in images.values()])  # [classes, 3]
    assert np.abs(means - means.mean(axis=0)).max() < 30, means.round()
    assert 90 < means.mean() < 165

    # Structure: count strong edges (any channel jumps by more than the noise can explain).
    def edges(x: np.ndarray) -> tuple[float, float]:
        ex = np.abs(np.diff(x, axis=2)).max(axis=-1) > 50
        ey = np.abs(np.diff(x, axis=1)).max(axis=-1) > 50
        return float(ex.mean()), float(ey.mean())

    hx, hy = edges(images["hstripes"])
    vx, vy = edges(images["vstripes"])
    assert hy > 3 * hx and vx > 3 * vy  # stripe orientation shows in the edge direction
    total = {k: sum(edges(v)) for k, v in images.items()}
    assert min(total[k] for k in ("checkerboard", "dots")) > 2 * max(
        total[k] for k in ("circle", "square")
    )  # textures have far more edges than solid shapes


def test_render_sample_depends_only_on_its_arguments():
    a = render_sample(3, 7, seed=5, split="val", image_size=40)
    assert a.shape == (40, 40, 3) and a.dtype == np.uint8
    render_sample(0, 0)  # other calls in between do not matter
    assert np.array_equal(a, render_sample(3, 7, seed=5, split="val", image_size=40))
    assert not np.array_equal(a, render_sample(3, 7, seed=5, split="train", image_size=40))
    with pytest.raises(ConfigError, match="`split`"):
        render_sample(0, 0, split="test")


# --------------------------------------------------------------------------- ImageFolder


def _save(path: Path, img: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    """train/{cat,dog}, val/{cat} with images of varied modes, sizes and extensions."""
    root = tmp_path / "folder"
    rgba = Image.new("RGBA", (5, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 255, 0, 255))
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.info["transparency"] = 0
    grey16 = Image.fromarray(np.full((3, 5), 65535, dtype=np.uint16))
    _save(root / "train/cat/a_rgb.jpg", Image.new("RGB", (40, 30), (10, 20, 30)))
    _save(root / "train/cat/b_grey.png", Image.new("L", (17, 9), 128))
    _save(root / "train/cat/c_rgba.PNG", rgba)
    _save(root / "train/cat/d_palette.png", palette)
    _save(root / "train/cat/e_grey16.png", grey16)
    _save(root / "train/dog/a_cmyk.JPEG", Image.new("CMYK", (8, 8), (0, 255, 0, 0)))
    _save(root / "train/dog/b_tiny.bmp", Image.new("RGB", (1, 1), (1, 2, 3)))
    _save(root / "train/dog/c_photo.webp", Image.new("RGB", (12, 20), (90, 90, 90)))
    _save(root / "train/dog/nested/d_deep.jpeg", Image.new("1", (9, 9), 1))
    (root / "train/dog/notes.txt").write_text("not an image")
    _save(root / "train/dog/.hidden.jpg", Image.new("RGB", (2, 2)))
    _save(root / "val/cat/v.jpg", Image.new("RGB", (20, 20)))
    return root


def test_imagefolder_reads_odd_images_as_rgb(odd_tree: Path):
    src = ImageFolderSource(odd_tree, "train")
    assert src.classes == ["cat", "dog"] and len(src) == 9
    assert src.targets == [0] * 5 + [1] * 4
    names = [src.path(i).name for i in range(len(src))]
    assert names[0] == "a_rgb.jpg" and "d_deep.jpeg" in names and "notes.txt" not in names
    sizes = []
    for i in range(len(src)):
        img, target = src[i]
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert target == src.targets[i]
        sizes.append(img.size)
    assert sizes[:2] == [(40, 30), (17, 9)] and (1, 1) in sizes
    by_name = {src.path(i).name: src[i][0] for i in range(len(src))}
    assert by_name["b_grey.png"].getpixel((0, 0)) == (128, 128, 128)
    assert by_name["c_rgba.PNG"].getpixel((1, 1)) == (0, 0, 0)  # transparent -> black
    assert by_name["c_rgba.PNG"].getpixel((0, 0)) == (0, 255, 0)
    assert by_name["d_palette.png"].getpixel((0, 0)) == (200, 100, 50)
    assert by_name["e_grey16.png"].getpixel((0, 0)) == (255, 255, 255)  # 16-bit scaled
    assert by_name["b_tiny.bmp"].getpixel((0, 0)) == (1, 2, 3)
    assert by_name["d_deep.jpeg"].getpixel((0, 0)) == (255, 255, 255)


def test_to_rgb_float_and_32bit_images():
    f = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32))
    assert to_rgb(f).getpixel((0, 0)) == (128, 128, 128)
    i32 = Image.fromarray(np.full((2, 2), 100, dtype=np.int32))
    assert to_rgb(i32).getpixel((0, 0)) == (100, 100, 100)


def test_imagefolder_targets_agree_across_splits(tmp_path: Path):
    for split, classes in (("train", "abc"), ("val", "ac")):
        for c in classes:
            _save(tmp_path / split / c / "x.png", Image.new("RGB", (4, 4)))
    val = ImageFolderSource(tmp_path, "val")
    assert val.classes == ["a", "b", "c"] and val.targets == [0, 2]
    assert ImageFolderSource(tmp_path, "train").targets == [0, 1, 2]


def test_imagefolder_over_synthetic_set(small_set: Path):
    src = SyntheticSource(small_set.parent, "val", progress=False, **SMALL)
    assert src.root == small_set and len(src) == 20
    assert src.classes == sorted(CLASS_NAMES[:10])
    assert [src.classes[t] for t in src.targets] == [
        p.parent.name for p in map(src.path, range(20))
    ]
    img, target = src[-1]
    assert img.size == (48, 48) and target == 9


def test_corrupt_image_is_skipped_with_one_warning(odd_tree: Path, caplog):
    bad = odd_tree / "train/cat/b_grey.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    src = ImageFolderSource(odd_tree, "train")
    with caplog.at_level(logging.WARNING, logger="ff_lightning.sources.datasets"):
        img, target = src[1]
        assert img.size == src[2][0].size and target == 0  # the next sample, index 2
        src[1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0]

    strict = ImageFolderSource(odd_tree, "train", on_error="raise")
    with pytest.raises(CorruptImageError, match="b_grey.png"):
        strict[1]
    assert isinstance(CorruptImageError("x"), OSError)


def test_corrupt_last_image_wraps_around_and_all_corrupt_raises(tmp_path: Path):
    for i in range(3):
        _save(tmp_path / "train/a" / f"{i}.jpg", Image.new("RGB", (3 + i, 3)))
    (tmp_path / "train/a/2.jpg").write_bytes(b"\xff\xd8\xff truncated")
    src = ImageFolderSource(tmp_path, "train")
    assert src[2][0].size == (3, 3)  # replaced by index 0
    for i in range(2):
        (tmp_path / "train/a" / f"{i}.jpg").write_bytes(b"")
    with pytest.raises(CorruptImageError, match="in a row"):
        ImageFolderSource(tmp_path, "train")[0]


def test_imagefolder_is_picklable_and_scans_once(odd_tree: Path):
    sources._scan.cache_clear()
    src = ImageFolderSource(odd_tree, "train")
    ImageFolderSource(odd_tree, "train")
    assert sources._scan.cache_info().hits == 1
    clone = pickle.loads(pickle.dumps(src))
    assert clone.targets == src.targets and len(clone) == len(src)
    assert np.array_equal(np.asarray(clone[4][0]), np.asarray(src[4][0]))

    _save(odd_tree / "train/cat/f_new.png", Image.new("RGB", (2, 2)))  # a new file is seen
    stamp = (odd_tree / "train/cat").stat().st_mtime_ns + 10**9  # beat coarse fs clocks
    os.utime(odd_tree / "train/cat", ns=(stamp, stamp))
    assert len(ImageFolderSource(odd_tree, "train")) == len(src) + 1


def test_imagefolder_missing_paths_name_what_was_expected(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="<root>/train/<class>/<image>") as err:
        ImageFolderSource(tmp_path / "nope", "train")
    assert str(tmp_path / "nope") in str(err.value)
    assert isinstance(err.value, FileNotFoundError)

    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images found under") as err:
        ImageFolderSource(tmp_path, "train")
    assert str(tmp_path / "train") in str(err.value)
    with pytest.raises(DatasetNotFoundError) as err:
        ImageFolderSource(tmp_path, "val")
    assert str(tmp_path / "val") in str(err.value)

    (tmp_path / "train/cls").mkdir()
    (tmp_path / "train/cls/readme.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match="no images found under") as err:
        ImageFolderSource(tmp_path, "train")
    assert str(tmp_path / "train") in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="pass its parent"):
        ImageFolderSource(tmp_path / "train", "train")


def test_imagefolder_bad_arguments(odd_tree: Path):
    with pytest.raises(ConfigError, match=r"`on_error` must be one of \('skip', 'raise'\)"):
        ImageFolderSource(odd_tree, "train", on_error="ignore")
    with pytest.raises(ConfigError, match="`split`.*'test'"):
        ImageFolderSource(odd_tree, "test")


# --------------------------------------------------------------------------- CIFAR-10


def _fake_cifar(root: Path, per_batch: int = 4, meta: bool = True) -> dict[str, np.ndarray]:
    """Write CIFAR-10 python batches with bytes keys, as the real (Python 2) pickles load."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(base / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, fh)
        written[name] = data
    if meta:
        names = [f"c{i}".encode() for i in range(10)]
        with open(base / "batches.meta", "wb") as fh:
            pickle.dump({b"label_names": names, b"num_vis": 3072}, fh)
    return written


@pytest.mark.parametrize("point_at_batches_dir", [False, True])
def test_cifar10_reads_fake_batches(tmp_path: Path, point_at_batches_dir: bool):
    written = _fake_cifar(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if point_at_batches_dir else tmp_path
    train, val = Cifar10Source(root, "train"), Cifar10Source(root, "val")
    assert (len(train), len(val)) == (20, 4)
    assert train.classes == [f"c{i}" for i in range(10)]
    img, target = train[5]  # second image of data_batch_2
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert torch.equal(img, torch.from_numpy(written["data_batch_2"][1].reshape(3, 32, 32)))
    assert target == train.targets[5] and isinstance(target, int)
    assert torch.equal(val[3][0].flatten(), torch.from_numpy(written["test_batch"][3]))

    clone = pickle.loads(pickle.dumps(train))
    assert len(pickle.dumps(train)) < 10_000  # the pixel arrays do not travel with it
    assert torch.equal(clone[5][0], img)


def test_cifar10_without_meta_uses_standard_names(tmp_path: Path):
    _fake_cifar(tmp_path, meta=False)
    assert Cifar10Source(tmp_path, "val").classes[0] == "airplane"


def test_cifar10_missing_files_say_how_to_get_them(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError) as err:
        Cifar10Source(tmp_path / "data", "train")
    message = str(err.value)
    assert str(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1") in message
    assert (
        "cifar-10-python.tar.gz" in message
        and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    )

    _fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3") as err:
        Cifar10Source(tmp_path, "train")
    assert "cifar-10-python.tar.gz" in str(err.value)
    assert len(Cifar10Source(tmp_path, "val")) == 4


def test_cifar10_malformed_batch(tmp_path: Path):
    _fake_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(FFLightningError, match=r"malformed CIFAR-10 batch .*test_batch"):
        Cifar10Source(tmp_path, "val")


# --------------------------------------------------------------------------- factory


def test_build_source_builds_each_kind(small_set: Path, odd_tree: Path, tmp_path: Path):
    _fake_cifar(tmp_path / "c")
    synth = build_source("synthetic", "train", root=small_set.parent, progress=False, **SMALL)
    assert isinstance(synth, SyntheticSource) and len(synth) == 60
    folder = build_source("ImageFolder", "val", root=odd_tree)
    assert isinstance(folder, ImageFolderSource) and len(folder) == 1
    cifar = build_source("cifar10", "val", root=tmp_path / "c")
    assert isinstance(cifar, Cifar10Source) and len(cifar) == 4


@pytest.mark.parametrize(
    "kind, split, kwargs, pattern",
    [
        (
            "imagenet",
            "train",
            {},
            r"`kind` must be one of \('synthetic', 'imagefolder', 'cifar10'\), got 'imagenet'",
        ),
        (
            "cifar10",
            "test",
            {"root": "x"},
            r"`split` must be one of \('train', 'val'\), got 'test'",
        ),
        ("cifar10", "train", {}, r"`root` is required for source 'cifar10'"),
        (
            "imagefolder",
            "train",
            {"root": "x", "colour": 1},
            r"unknown argument\(s\) `colour`.*allowed: root",
        ),
        ("synthetic", "train", {"size": 3}, r"unknown argument\(s\) `size`.*image_size"),
    ],
)
def test_build_source_errors(kind: str, split: str, kwargs: dict, pattern: str):
    with pytest.raises(ConfigError, match=pattern) as err:
        build_source(kind, split, **kwargs)
    assert isinstance(err.value, ValueError)


def test_missing_dataset_error_is_raised_for_missing_root(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "none"))):
        build_source("imagefolder", "train", root=os.fspath(tmp_path / "none"))
