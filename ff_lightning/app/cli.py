"""The recipes' command line: every mistake ends in one ``error:`` line and exit status 2.

Hydra composes the config before the recipe's code runs, and reports its own errors (a config
group option that does not exist, a key that is not in the config) as several lines and exit
status 1. :func:`check_command_line` composes the config the way Hydra is about to, before it
does, and raises those errors as one :class:`ConfigError`; :func:`recipe_errors` prints any
``FFLightningError`` as ``error: ...`` and exits with status 2.

    if __name__ == "__main__":
        with recipe_errors():
            check_command_line(CONFIG_DIR, "train")
        main()
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ff_lightning.errors import ConfigError, FFLightningError, one_line

__all__ = ["EXIT_CODE", "check_command_line", "recipe_errors"]

#: Exit status of a recipe stopped by a configuration or data problem the user can fix.
EXIT_CODE = 2


@contextlib.contextmanager
def recipe_errors() -> Iterator[None]:
    """Print an ``FFLightningError`` as one ``error: ...`` line on stderr and exit with 2."""
    try:
        yield
    except FFLightningError as err:
        # A configuration or data problem the user can fix: say what, without a traceback.
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_CODE)


def check_command_line(
    config_dir: str, config_name: str, argv: Sequence[str] | None = None
) -> None:
    """Compose ``config_name`` with the command line's overrides as Hydra will; raise a
    one-line :class:`ConfigError` for what Hydra would reject.

    Checks every config group choice (``experiment=``, ``model=``, ...; each value of a
    ``-m`` sweep) against the group's options, then composes each job. Command lines this
    cannot model (``--help``, ``--config-dir``, a sweeper's ranges, ...) are left to Hydra.
    """
    from hydra._internal.utils import get_args_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:  # argparse's usage error: Hydra prints its own
        return
    skip = ("help", "hydra_help", "info", "shell_completion", "config_path", "config_dir")
    if any(getattr(args, name, None) for name in skip) or getattr(args, "experimental_rerun", None):
        return
    _compose_jobs(config_dir, args.config_name or config_name, list(args.overrides), args.multirun)


def _compose_jobs(config_dir: str, name: str, lines: list[str], multirun: bool) -> None:
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException

    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:
            overrides = OverridesParser.create(config_loader=loader).parse_overrides(lines)
        except OverrideParseException as err:
            key, _, value = str(err.override).partition("=")
            hint = f"; quote the value: {key}='{value}'" if "=" in value else ""
            raise ConfigError(
                f"cannot read the override {err.override!r}: {_flat(err)}{hint}"
            ) from None
        for o in overrides:
            _check_group_choice(loader, o)
        jobs = [lines]
        if multirun:
            try:
                jobs = BasicSweeper.split_arguments(overrides, None)[0]
            except HydraException:  # a sweep only another sweeper knows: compose the rest
                jobs = [[o.input_line for o in overrides if not o.is_sweep_override()]]
        for job in jobs:
            try:
                compose(config_name=name, overrides=job)
            except MissingConfigException as err:
                raise ConfigError(_missing(err)) from None
            except (HydraException, ValueError) as err:
                raise ConfigError(_composition(err, name, job)) from None


def _choices(o: Any) -> list[Any]:
    """The option names an override selects: one, each of a list, or each of a sweep."""
    if o.is_sweep_override():
        return list(o.sweep_iterator()) if o.is_discrete_sweep() else []
    value = o.value()
    return list(value) if isinstance(value, list) else [value]


def _check_group_choice(loader: Any, o: Any) -> None:
    """``group=option`` for an option the group does not have: name the group, list them."""
    if o.is_delete() or "." in o.key_or_group:
        return
    options = loader.get_group_options(o.key_or_group)
    if not options:  # not a config group: a plain key, composed below
        return
    for value in _choices(o):
        if value is None:
            raise ConfigError(
                f"`{o.key_or_group}` cannot be set to null on the command line; write "
                f"~{o.key_or_group} to use no {o.key_or_group} config"
            )
        if not isinstance(value, str) or value in options:
            continue
        close = difflib.get_close_matches(value, options, n=1)
        hint = f"did you mean {o.key_or_group}={close[0]}?" if close else "pick one of them"
        raise ConfigError(
            f"`{o.key_or_group}` must be one of {tuple(options)}, got {value!r}; {hint}"
        )


def _missing(err: Any) -> str:
    """A config a defaults list names that is not there (e.g. inside an experiment file)."""
    missing = str(getattr(err, "missing_cfg_file", "") or "")
    options = getattr(err, "options", None)
    group, _, option = missing.rpartition("/")
    if group and options:
        return f"`{group}` must be one of {tuple(options)}, got {option!r}; pick one of them"
    return _flat(err)


def _composition(err: Exception, name: str, job: list[str]) -> str:
    """Hydra's other composition errors; a key that is not in the config gets the nearest one."""
    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    if full_key and "not in struct" in str(cause):
        parent, _, leaf = str(full_key).rpartition(".")
        known, target = _keys_of(name, job, parent)
        given = next((line for line in job if line.split("=", 1)[0] == full_key), None)
        add = f"+{given}" if given else f"+{full_key}=..."
        if target and leaf in _arguments(target):
            return (
                f"`{full_key}` is not in the config, but it is an argument of {target}: "
                f"write {add} to add it"
            )
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f" (did you mean `{parent + '.' if parent else ''}{close[0]}`?)" if close else ""
        return f"`{full_key}` is not a key of the config{hint}; to add a new key, write {add}"
    text = _flat(err)
    if text.startswith("Multiple values for "):  # `+group=option` for a group with a default
        group = text[len("Multiple values for ") :].split(".")[0].strip()
        given = [line for line in job if line.startswith(f"+{group}=")]
        if given:
            return (
                f"`{group}` already has a default in the config; write {given[0][1:]} "
                "(without the +) to choose another"
            )
    return text


def _keys_of(name: str, job: list[str], parent: str) -> tuple[list[str], str | None]:
    """The keys of node ``parent`` in the config composed with the job's group choices only,
    and the node's ``_target_`` (the class its keys are passed to), if any."""
    from hydra import compose
    from omegaconf import DictConfig, OmegaConf

    groups = [line for line in job if "=" in line and "." not in line.split("=", 1)[0]]
    try:
        cfg = compose(config_name=name, overrides=groups)
    except Exception:  # noqa: BLE001 - only a hint: without it the message still names the key
        return [], None
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return [], None
    target = node.get("_target_")
    return [str(k) for k in node.keys()], str(target) if target else None


def _arguments(target: str) -> set[str]:
    """The keyword arguments of the class or function ``target`` names (empty if unknown)."""
    import inspect

    from hydra.utils import get_object

    try:
        return set(inspect.signature(get_object(target)).parameters)
    except Exception:  # noqa: BLE001 - only a hint
        return set()


def _flat(err: BaseException) -> str:
    """Hydra's message on one line, without its config search path listing."""
    text = str(err).split("Config search path:")[0]
    parts = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(p.rstrip(";") for p in parts)
