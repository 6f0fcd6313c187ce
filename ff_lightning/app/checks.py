"""Checks of the recipes' configuration: every bad value becomes one ``ConfigError`` naming its key.

The plugin's objects validate their own arguments and name them (``batch_size``, ``ratio``);
a recipe user typed ``data.batch_size`` or ``fusionflow.ratio``. This module

- checks the keys the plugin never sees: the Trainer's (:func:`check_trainer`), the run's
  (``seed``, ``ckpt_path``, ``output_dir``: :func:`check_run`) and the benchmark's
  (:func:`check_benchmark`);
- renames an argument in a plugin message to the config key it came from
  (:func:`setup_errors`, :func:`node_keys`), and names the node when a library error names
  nothing;
- says how to drop a policy argument an experiment set for another policy (:func:`check_policy`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ff_lightning.errors import ConfigError, DatasetNotFoundError, FFLightningError
from ff_lightning.validation import check_bool, check_float, check_int

__all__ = [
    "SEED_MAX",
    "check_benchmark",
    "check_policy",
    "check_run",
    "check_stats",
    "check_trainer",
    "node_keys",
    "qualify",
    "setup_errors",
    "trainer_errors",
]

#: Lightning's ``seed_everything`` takes seeds in numpy's uint32 range (it raises a bare
#: ``ValueError`` for others).
SEED_MAX = 2**32 - 1

#: ``ckpt_path`` values Lightning resolves itself instead of reading a file.
CKPT_NAMES = ("last", "best", "hpc", "registry")

_KEY_AT_START = re.compile(r"^`([A-Za-z_][\w.]*)`")
_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


# --------------------------------------------------------------------------- naming keys


def qualify(err: BaseException, keys: Mapping[str, str], node: str | None = None) -> ConfigError:
    """``err`` as a :class:`ConfigError` whose message names the config key.

    A message that starts with an argument in backticks (``"`lr` must be > 0"``) gets the key
    that argument came from (``"`model.lr` must be > 0"``). A library error that names nothing
    (``"'>' not supported between ..."``) is prefixed with ``node``. A ``FFLightningError``
    that names no argument (a missing dataset folder, which names its path) keeps its message.
    """
    text = str(err).strip()
    match = _KEY_AT_START.match(text)
    if match and match.group(1) in keys:
        text = f"`{keys[match.group(1)]}`" + text[match.end() :]
    elif node is not None and not match and not isinstance(err, FFLightningError):
        text = f"`{node}`: {text}"
    if isinstance(err, ConfigError) and text == str(err).strip():
        return err
    if isinstance(err, DatasetNotFoundError):
        return DatasetNotFoundError(text)
    return ConfigError(text)


def node_keys(cfg: DictConfig, path: str) -> dict[str, str]:
    """Argument name -> config key for the node at ``path`` (its keys and its dicts' keys).

    A value that is an interpolation names the key it reads: ``data.source.image_size:
    ${data.source_size}`` maps ``image_size`` to ``data.source_size``, the key users set.
    """
    node = OmegaConf.select(cfg, path)
    if not isinstance(node, DictConfig):
        return {}
    raw = OmegaConf.to_container(node, resolve=False)
    assert isinstance(raw, dict)
    keys: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, dict):  # e.g. model.arch_kwargs.width, augment.kwargs.num_ops
            for sub, subvalue in value.items():
                keys.setdefault(str(sub), _key_of(f"{path}.{name}.{sub}", subvalue))
    for name, value in raw.items():
        keys[str(name)] = _key_of(f"{path}.{name}", value)
    return keys


def _key_of(key: str, value: Any) -> str:
    match = _INTERPOLATION.match(value) if isinstance(value, str) else None
    return match.group(1) if match else key


@contextlib.contextmanager
def setup_errors(keys: Mapping[str, str] | None = None, node: str | None = None) -> Iterator[None]:
    """Turn setup errors (bad config values, missing data) into one clear ``FFLightningError``.

    Hydra wraps exceptions raised by ``_target_`` calls in ``InstantiationException``; they are
    unwrapped so the user sees the message that names the bad value (renamed to its config key
    by :func:`qualify`), not a traceback.
    """
    from hydra.errors import InstantiationException

    keys = keys or {}
    try:
        yield
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (FFLightningError, ValueError, TypeError, FileNotFoundError)):
            raise qualify(cause, keys, node) from cause
        raise
    except (FFLightningError, ValueError, TypeError, FileNotFoundError) as err:
        raise qualify(err, keys, node) from err


# --------------------------------------------------------------------------- the run's keys


def check_run(cfg: DictConfig) -> None:
    """The top-level keys of ``train.yaml``: ``seed``, ``report``, ``ckpt_path`` and
    ``output_dir`` (created here, so an unwritable one fails before any work)."""
    check_int("seed", cfg.get("seed"), 0, SEED_MAX, fix="set e.g. seed=0")
    if "report" in cfg:
        check_bool("report", cfg.report)
    check_checkpoint(cfg.get("ckpt_path"))
    out = cfg.get("output_dir")
    if out is not None:
        path = Path(str(out)).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"`output_dir` {str(path)!r} cannot be created ({err.strerror or err}); "
                "point output_dir (or hydra.run.dir) to a writable folder"
            ) from None


def check_checkpoint(ckpt_path: Any) -> None:
    """``ckpt_path``: null, one of Lightning's names (``last``, ...), a URL, or a checkpoint file."""
    if ckpt_path is None or ckpt_path in CKPT_NAMES:
        return
    if not isinstance(ckpt_path, str) or not ckpt_path:
        raise ConfigError(
            f"`ckpt_path` must be the path of a checkpoint file, got {ckpt_path!r}; "
            "give e.g. ckpt_path=<run dir>/checkpoints/last.ckpt"
        )
    if "://" in ckpt_path:  # a remote file (s3://, gs://, ...): Lightning's fsspec reads it
        return
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(
            f"`ckpt_path` {ckpt_path!r} does not exist; give the checkpoint of an earlier run "
            "(<run dir>/checkpoints/*.ckpt) or drop ckpt_path to start from scratch"
        )
    if not path.is_file():
        raise ConfigError(
            f"`ckpt_path` {ckpt_path!r} is a folder, not a checkpoint file; give a .ckpt file "
            "in it (e.g. checkpoints/last.ckpt)"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as err:
        raise ConfigError(
            f"`ckpt_path` {ckpt_path!r} cannot be read ({err.strerror or err})"
        ) from None
    # torch.save writes a zip archive ("PK"); its legacy format is a pickle (protocol opcode 0x80).
    if not (head == b"PK" or head[:1] == b"\x80"):
        raise ConfigError(
            f"`ckpt_path` {ckpt_path!r} is not a PyTorch checkpoint (not written by torch.save); "
            "give a .ckpt file written by a training run"
        )


# --------------------------------------------------------------------------- Trainer


def _int_or_none(key: str, value: Any, low: int) -> None:
    if value is not None:
        check_int(key, value, low)


def _limit(key: str, value: Any) -> None:
    """``limit_*_batches``: null (all), a number of batches, or a fraction of the epoch."""
    ok = (
        value is None
        or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        or (isinstance(value, float) and 0.0 <= value <= 1.0)
    )
    if not ok:
        raise ConfigError(
            f"`{key}` must be null (all batches), an integer >= 0 (batches) or a float in [0, 1] "
            f"(fraction of the epoch), got {value!r}"
        )


def _devices(value: Any) -> None:
    """``devices``: an integer >= 1, -1 (all), ``auto``, a list of device ids or ``"0,1"``."""
    ok = False
    if isinstance(value, int) and not isinstance(value, bool):
        ok = value >= 1 or value == -1
    elif isinstance(value, str):
        ok = value == "auto" or re.fullmatch(r"\s*(-1|\d+(\s*,\s*\d+)*\s*,?)\s*", value) is not None
    elif isinstance(value, (list, tuple, ListConfig)):
        ok = len(value) > 0 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        )
    if not ok:
        raise ConfigError(
            "`trainer.devices` must be an integer >= 1, -1 (all), 'auto' or a list of device "
            f"ids, got {value!r}"
        )


def check_trainer(node: DictConfig) -> None:
    """The ``trainer`` keys whose bad values Lightning accepts and fails on later (or names
    nothing on), checked before the Trainer is built."""
    t = node
    for key in ("max_epochs", "max_steps"):
        if key in t:
            _int_or_none(f"trainer.{key}", t[key], -1)
    for key in ("min_epochs", "min_steps"):
        if key in t:
            _int_or_none(f"trainer.{key}", t[key], 0)
    for key in ("log_every_n_steps", "accumulate_grad_batches", "num_nodes"):
        if key in t:
            check_int(f"trainer.{key}", t[key], 1)
    if "check_val_every_n_epoch" in t:
        _int_or_none("trainer.check_val_every_n_epoch", t.check_val_every_n_epoch, 1)
    if "num_sanity_val_steps" in t:
        check_int("trainer.num_sanity_val_steps", t.num_sanity_val_steps, -1)
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if key in t:
            _limit(f"trainer.{key}", t[key])
    if t.get("val_check_interval") is not None:
        v = t.val_check_interval
        if isinstance(v, float):
            check_float("trainer.val_check_interval", v, 0.0, 1.0, low_open=True)
        else:
            check_int("trainer.val_check_interval", v, 1)
    for key in ("enable_checkpointing", "enable_progress_bar", "enable_model_summary"):
        if t.get(key) is not None:
            check_bool(f"trainer.{key}", t[key])
    if t.get("deterministic") not in (None, "warn"):
        check_bool("trainer.deterministic", t.deterministic, fix="or 'warn'")
    if t.get("gradient_clip_val") is not None:
        check_float("trainer.gradient_clip_val", t.gradient_clip_val, 0.0)
    if "devices" in t:
        _devices(t.devices)


def _named(text: str, node: Mapping[str, Any]) -> str | None:
    """The trainer key a Lightning message is about, if it names one."""
    for key in sorted(node, key=len, reverse=True):
        if re.search(rf"(?<![\w.]){re.escape(str(key))}(?!\w)", text, re.IGNORECASE):
            return str(key)
    return None


@contextlib.contextmanager
def trainer_errors(node: DictConfig) -> Iterator[None]:
    """Lightning's errors at ``Trainer(...)`` as one ``ConfigError`` naming the ``trainer`` key.

    Lightning names some keys (``"`devices` selected with ..."``) and none in others (``"No
    supported gpu backend found!"``, a missing ``torch_xla`` for ``accelerator=tpu``): those
    come from the accelerator set-up, so they name ``trainer.accelerator``.
    """
    from hydra.errors import InstantiationException

    try:
        yield
    except FFLightningError:
        raise
    except Exception as err:  # noqa: BLE001 - Lightning raises several unrelated types here
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if cause is None:
            raise
        text = " ".join(str(cause).split())
        settings = {k: v for k, v in node.items() if k != "_target_"}
        key = _named(text, settings) or "accelerator"
        given = settings.get(key)
        fix = "; trainer=cpu trains on the CPU" if key in ("accelerator", "devices") else ""
        raise ConfigError(
            f"`trainer.{key}` ({given!r}) was refused by the Lightning Trainer: "
            f"{text.rstrip('.')}{fix}"
        ) from cause


# --------------------------------------------------------------------------- benchmark


def check_benchmark(node: DictConfig) -> None:
    """``benchmark.*`` of ``benchmark.yaml`` (the modes are checked by ``parse_mode``)."""
    steps = check_int("benchmark.steps", node.steps, 2)
    warmup = check_int("benchmark.warmup_steps", node.warmup_steps, 0)
    if steps <= warmup + 1:
        raise ConfigError(
            f"`benchmark.steps` must exceed `benchmark.warmup_steps` + 1, got steps={steps}, "
            f"warmup={warmup}"
        )
    check_int("benchmark.repeats", node.get("repeats", 1), 1)
    check_int("benchmark.auto_every_n_steps", node.auto_every_n_steps, 1)
    check_int("benchmark.ceiling_batches", node.ceiling_batches, 1)
    if node.get("torch_threads") is not None:
        check_int("benchmark.torch_threads", node.torch_threads, 1)
    for key in ("progress", "plot"):
        if key in node:
            check_bool(f"benchmark.{key}", node[key])
    modes = node.modes
    if not isinstance(modes, ListConfig) or len(modes) == 0:
        raise ConfigError(
            f"`benchmark.modes` must be a non-empty list, got {modes!r}; "
            "e.g. benchmark.modes=[torchvision,off,auto]"
        )


# --------------------------------------------------------------------------- policy


def check_stats(key: str, value: Any, *, positive: bool = False) -> None:
    """``augment.mean`` / ``augment.std``: a non-empty list of numbers (std > 0)."""
    ok = isinstance(value, (ListConfig, list, tuple)) and len(value) > 0
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ok = ok and (not positive or all(v > 0 for v in value))
    if not ok:
        kind = "numbers > 0" if positive else "numbers"
        raise ConfigError(
            f"`{key}` must be a list of {kind}, one per channel, got {value!r}; "
            f"e.g. {key}=[0.5,0.5,0.5]"
        )


def check_policy(cfg: DictConfig) -> None:
    """Fail early, with the fix, when ``augment.*`` do not fit the configured policy.

    The benchmark's regimes (``experiment=bench_quick`` and those built on it) set
    ``augment.kwargs.num_ops`` for RandAugment; with another policy the error says to drop it.
    """
    from ff_lightning.augment import build_policy
    from ff_lightning.augment.policy import UnknownKwargError

    aug = cfg.augment
    if aug.name in ("none", "transform"):  # "transform": the user's own, compiled at build time
        return
    if aug.name == "deepaa" and OmegaConf.is_missing(aug.kwargs, "policy_file"):
        raise ConfigError(
            "`augment.kwargs.policy_file` is required for augment=deepaa: the path of DeepAA's "
            "policy .npz (none is shipped); add augment.kwargs.policy_file=/path/to/policy.npz"
        )
    keys = {**node_keys(cfg, "augment.kwargs"), "name": "augment.name"}
    keys.update(interpolation="augment.interpolation", fill="augment.fill")
    if not isinstance(aug.get("kwargs"), DictConfig):
        raise ConfigError(
            f"`augment.kwargs` must be a mapping of the policy's arguments, got "
            f"{aug.get('kwargs')!r}; e.g. augment.kwargs={{num_ops:2}}"
        )
    kwargs = OmegaConf.to_container(aug.kwargs, resolve=True)
    assert isinstance(kwargs, dict)
    extra = {"interpolation": aug.get("interpolation"), "fill": aug.get("fill")}
    extra = {k: v for k, v in extra.items() if v is not None}
    try:
        build_policy(aug.name, **kwargs, **extra)
    except UnknownKwargError as err:
        unknown = [
            k for k in kwargs if isinstance(_fails(aug.name, k, kwargs[k]), UnknownKwargError)
        ]
        drop = " ".join(f"~augment.kwargs.{k}" for k in unknown)
        raise ConfigError(
            f"`augment.kwargs` do not fit policy {aug.name!r}: {err}; add `{drop}` to the "
            f"command line to drop {'it' if len(unknown) == 1 else 'them'} (the bench_* "
            "experiments set `augment.kwargs.num_ops` for RandAugment)"
        ) from None
    except (TypeError, ValueError) as err:
        # A message that names no argument ("could not convert string to float"): find the
        # argument that fails on its own and name its key.
        culprit = next((k for k, v in {**kwargs, **extra}.items() if _fails(aug.name, k, v)), None)
        raise qualify(err, keys, keys.get(culprit or "", "augment")) from None


def _fails(name: str, key: str, value: Any) -> Exception | None:
    """The error ``build_policy(name, key=value)`` raises alone, if any."""
    from ff_lightning.augment import build_policy

    try:
        build_policy(name, **{key: value})
    except (TypeError, ValueError) as err:
        return err
    return None
