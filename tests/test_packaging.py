"""The native loops travel with the package: built into the wheel, found without a compiler,
and every fallback says which backend runs and why (a cache path that is a file, a bad ``$CC``,
a corrupt cached build, an unwritable cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ff_lightning.augment import _native_load

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_carries_the_native_library_and_needs_no_compiler(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("ff_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("ff_lightning/augment/_ff_native") for n in names), names
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        + [str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    # A machine without a compiler: CC points nowhere, PATH has no cc, the cache is empty.
    env = dict(os.environ, PYTHONPATH=str(target), CC="/nonexistent/cc")
    env["FF_LIGHTNING_CACHE"] = str(tmp_path / "empty-cache")
    env["PATH"] = str(Path(sys.executable).parent)
    code = (
        "import ff_lightning, torch\n"
        "from ff_lightning.augment import _native, build_policy\n"
        f"assert ff_lightning.__file__.startswith({str(target)!r}), ff_lightning.__file__\n"
        "assert _native.backend().startswith('native loops (packaged'), _native.backend()\n"
        "p = build_policy('randaugment', num_ops=3)\n"
        "x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)\n"
        "params = p.sample(torch.arange(8), 0, 0)\n"
        "fast = p.apply_batch(x.clone(), params)\n"
        "with _native.disabled():\n"
        "    slow = p.apply_batch(x.clone(), params)\n"
        "assert torch.equal(fast, slow)\n"
        "print('ok')\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip() == "ok"
    assert not (tmp_path / "empty-cache").exists()  # nothing was compiled


@pytest.fixture
def no_packaged(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source checkout: no library built at install."""
    monkeypatch.setattr(_native_load, "packaged_library", lambda: None)


def test_a_cache_path_that_is_a_file_is_named(no_packaged, tmp_path, monkeypatch) -> None:
    bad = tmp_path / "cache-file"
    bad.write_text("not a folder")
    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(bad))
    so, how = _native_load.load()
    assert so is None
    assert f"FF_LIGHTNING_CACHE={str(bad)!r} is a file, not a folder" in how
    assert how.startswith("torch kernels")


def test_a_bad_cc_is_reported_not_replaced(no_packaged, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    so, how = _native_load.load()
    assert so is None
    assert "$CC='no-such-compiler-xyz' is not an executable on PATH" in how


def test_a_corrupt_cached_build_is_rebuilt(no_packaged, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("CC", raising=False)
    so, how = _native_load.load()
    if so is None:
        pytest.skip(f"no C compiler here: {how}")
    path = Path(how.rsplit(": ", 1)[1].rstrip(")"))
    # A killed compile or a full disk left a broken file under that name. It is written beside
    # it and renamed over it: this process keeps the good library mapped, and truncating that
    # mapped file in place would crash it with SIGBUS when it next touches the library's pages.
    broken = path.with_name(path.name + ".broken")
    broken.write_bytes(b"\x7fELF truncated")
    os.replace(broken, path)
    # A fresh process sees the broken file.
    code = (
        "from ff_lightning.augment import _native_load as n\n"
        "n.packaged_library = lambda: None\n"
        "so, how = n.load()\n"
        "print(so is not None, how)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=os.environ
    )
    assert ran.stdout.startswith("True native loops (built on first use"), ran.stderr[-2000:]
    assert path.stat().st_size > 1000


def test_the_temp_fallback_does_not_shadow_the_package(no_packaged, tmp_path, monkeypatch) -> None:
    # An unusable cache folder (its parent is a file: no one can create it, root included): the
    # build goes to a private temp folder, never `<tmp>/ff_lightning` (Python started in the
    # temp folder would import that folder as the package).
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(tmp_path / "a-file" / "cache"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(_native_load.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    so, how = _native_load.load()
    if so is None and "no C compiler" in how:
        pytest.skip(how)
    assert so is not None, how
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == [f"ff-lightning-native-{os.getuid()}"]


def test_the_native_loops_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setenv(_native_load.ENV, "0")
    so, how = _native_load.load()
    assert so is None and how == "torch kernels (FF_LIGHTNING_NATIVE=0)"


def test_a_packaged_library_older_than_its_source_is_not_used(monkeypatch, tmp_path) -> None:
    if _native_load.packaged_library() is None:
        pytest.skip("no packaged library in this checkout (not installed with pip)")
    monkeypatch.setenv("FF_LIGHTNING_CACHE", str(tmp_path))
    monkeypatch.setattr(_native_load, "source_tag", lambda: "0123456789abcdef")  # an edited .c
    so, how = _native_load.load()
    assert "predates its C sources (reinstall to rebuild it)" in how
    if so is not None:  # compiled from the current source instead
        assert how.startswith("native loops (built on first use")
