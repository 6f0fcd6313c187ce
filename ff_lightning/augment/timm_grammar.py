"""timm's augmentation config strings, parsed as timm parses them, with clear errors.

Grammars (tokens joined by ``-``; a token's key is the text before its first digit, its value the
rest, as timm's ``re.split(r"(\\d.*)", token)``):

- RandAugment ``rand[-m<int>][-n<int>][-p<float>][-mstd<float>][-mmax<int>][-inc<int>][-t<set>]``:
  magnitude (default 10), ops per image (2), probability of each op (0.5), std of the magnitude
  noise (``> 100``: uniform in ``[0, m]``), upper clip of the magnitude (10), increasing variants
  (``inc1``), op set (``t3a``, ``t3aw``, ``tweights``; a ``t`` token is read before the others).
- AutoAugment ``<policy>[-mstd<float>]`` with ``policy`` in ``original, originalr, v0, v0r, 3a``.
- AugMix ``augmix[-m<int>][-w<int>][-d<int>][-a<float>][-b<int>][-mstd<float>]``: severity (3),
  chain width (3), chain depth (-1: 1..3 at random; a negative depth cannot be written, since
  ``-`` separates tokens), Dirichlet/Beta alpha (1.0), blended mixing (``b1``), magnitude std
  (default: uniform in ``[0, m]``).

timm keeps the *first* ``mstd``/``mmax`` it sees (``hparams.setdefault``) and the last of the
others; so does this parser. Where timm would fail an ``assert`` or a conversion, or would
silently skip a token without a digit (a typo that changes nothing in timm but is surely not
meant), a :class:`~ff_lightning.errors.ConfigError` names the token and the grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ff_lightning.augment.timm_tables import AA_POLICIES, RAND_SETS
from ff_lightning.errors import ConfigError

__all__ = ["AugMixConfig", "AutoConfig", "RandConfig", "parse_augmix", "parse_auto", "parse_rand"]

RAND_GRAMMAR = "rand[-m<int>][-n<int>][-p<float>][-mstd<float>][-mmax<int>][-inc<0|1>][-t<set>]"
AUTO_GRAMMAR = f"<policy>[-mstd<float>] with <policy> one of {tuple(AA_POLICIES)}"
AUGMIX_GRAMMAR = "augmix[-m<int>][-w<int>][-d<int>][-a<float>][-b<0|1>][-mstd<float>]"


@dataclass(frozen=True)
class RandConfig:
    """A parsed ``rand-*`` string (``None``: not given)."""

    magnitude: int = 10
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float | None = None
    magnitude_max: int | None = None
    increasing: bool = False
    transforms: str | None = None


@dataclass(frozen=True)
class AutoConfig:
    """A parsed AutoAugment string."""

    policy: str
    magnitude_std: float | None = None


@dataclass(frozen=True)
class AugMixConfig:
    """A parsed ``augmix-*`` string."""

    magnitude: int = 3
    width: int = 3
    depth: int = -1
    alpha: float = 1.0
    blended: bool = False
    magnitude_std: float | None = None


def _tokens(config: object, head: str | None, grammar: str) -> tuple[str, list[str]]:
    if not isinstance(config, str) or not config:
        raise ConfigError(f"`config` must be a string of timm's grammar {grammar}, got {config!r}")
    first, *rest = config.split("-")
    if head is not None and first != head:
        raise ConfigError(
            f"`config` {config!r} must start with {head!r} (timm's grammar {grammar}), got {first!r}"
        )
    return first, rest


def _split(token: str, config: str, grammar: str) -> tuple[str, str]:
    parts = re.split(r"(\d.*)", token)
    if len(parts) < 2:
        raise ConfigError(
            f"token {token!r} of `config` {config!r} has no value (timm would ignore it "
            f"silently); timm's grammar is {grammar}"
        )
    return parts[0], parts[1]


def _value(kind: type, key: str, val: str, token: str, config: str, grammar: str):
    try:
        return kind(val)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise ConfigError(
            f"token {token!r} of `config` {config!r}: `{key}` takes {name}, got {val!r} "
            f"(timm's grammar {grammar})"
        ) from None


def _unknown(token: str, key: str, config: str, grammar: str) -> ConfigError:
    return ConfigError(
        f"token {token!r} of `config` {config!r}: unknown key {key!r}; timm's grammar is {grammar}"
    )


def parse_rand(config: str) -> RandConfig:
    """Parse a RandAugment string such as ``"rand-m9-mstd0.5-inc1"``."""
    _, tokens = _tokens(config, "rand", RAND_GRAMMAR)
    out: dict[str, object] = {}
    for token in tokens:
        if token.startswith("t"):
            name = token[1:]
            if name not in RAND_SETS:
                raise ConfigError(
                    f"token {token!r} of `config` {config!r}: op set {name!r} must be one of "
                    f"{tuple(RAND_SETS)} (timm falls back to the default set for other names)"
                )
            out.setdefault("transforms", name)  # timm keeps the first one
            continue
        key, val = _split(token, config, RAND_GRAMMAR)
        if key == "mstd":
            std = _value(float, key, val, token, config, RAND_GRAMMAR)
            out.setdefault("magnitude_std", float("inf") if std > 100 else std)
        elif key == "mmax":
            out.setdefault("magnitude_max", _value(int, key, val, token, config, RAND_GRAMMAR))
        elif key == "inc":
            out["increasing"] = bool(_value(int, key, val, token, config, RAND_GRAMMAR))
        elif key in ("m", "n"):
            field = "magnitude" if key == "m" else "num_layers"
            out[field] = _value(int, key, val, token, config, RAND_GRAMMAR)
        elif key == "p":
            out["prob"] = _value(float, key, val, token, config, RAND_GRAMMAR)
        else:
            raise _unknown(token, key, config, RAND_GRAMMAR)
    return RandConfig(**out)  # type: ignore[arg-type]


def parse_auto(config: str) -> AutoConfig:
    """Parse an AutoAugment string such as ``"original-mstd0.5"``."""
    policy, tokens = _tokens(config, None, AUTO_GRAMMAR)
    if policy not in AA_POLICIES:
        raise ConfigError(
            f"`config` {config!r}: AutoAugment policy {policy!r} must be one of "
            f"{tuple(AA_POLICIES)} (timm's grammar {AUTO_GRAMMAR})"
        )
    std: float | None = None
    for token in tokens:
        key, val = _split(token, config, AUTO_GRAMMAR)
        if key != "mstd":
            raise _unknown(token, key, config, AUTO_GRAMMAR)
        if std is None:  # timm's setdefault: the first one counts
            std = _value(float, key, val, token, config, AUTO_GRAMMAR)
    return AutoConfig(policy, std)


def parse_augmix(config: str) -> AugMixConfig:
    """Parse an AugMix string such as ``"augmix-m5-w4-d2"``."""
    _, tokens = _tokens(config, "augmix", AUGMIX_GRAMMAR)
    out: dict[str, object] = {}
    fields = {"m": ("magnitude", int), "w": ("width", int), "d": ("depth", int)}
    for token in tokens:
        key, val = _split(token, config, AUGMIX_GRAMMAR)
        if key == "mstd":
            out.setdefault("magnitude_std", _value(float, key, val, token, config, AUGMIX_GRAMMAR))
        elif key in fields:
            name, kind = fields[key]
            out[name] = _value(kind, key, val, token, config, AUGMIX_GRAMMAR)
        elif key == "a":
            out["alpha"] = _value(float, key, val, token, config, AUGMIX_GRAMMAR)
        elif key == "b":
            out["blended"] = bool(_value(int, key, val, token, config, AUGMIX_GRAMMAR))
        else:
            raise _unknown(token, key, config, AUGMIX_GRAMMAR)
    return AugMixConfig(**out)  # type: ignore[arg-type]
