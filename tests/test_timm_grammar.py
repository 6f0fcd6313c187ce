"""timm's config strings: every token, the defaults, the errors, and agreement with timm itself."""

from __future__ import annotations

import math

import pytest

from ff_lightning.augment import build_policy, policy_from_timm
from ff_lightning.augment.timm_grammar import (
    AugMixConfig,
    AutoConfig,
    RandConfig,
    parse_augmix,
    parse_auto,
    parse_rand,
)
from ff_lightning.augment.timm_tables import (
    AA_POLICIES,
    AUGMIX_OPS,
    RAND_OPS,
    RAND_OPS_INCREASING,
    RAND_SETS,
)
from ff_lightning.errors import ConfigError

taa = pytest.importorskip("timm.data.auto_augment")


# ---------------------------------------------------------------- RandAugment
def test_rand_defaults():
    assert parse_rand("rand") == RandConfig(10, 2, 0.5, None, None, False, None)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("rand-m9", {"magnitude": 9}),
        ("rand-n3", {"num_layers": 3}),
        ("rand-p0.3", {"prob": 0.3}),
        ("rand-mstd0.5", {"magnitude_std": 0.5}),
        ("rand-mstd101", {"magnitude_std": math.inf}),  # > 100: uniform sampling
        ("rand-mstd100", {"magnitude_std": 100.0}),
        ("rand-mmax20", {"magnitude_max": 20}),
        ("rand-inc1", {"increasing": True}),
        ("rand-inc0", {"increasing": False}),
        ("rand-t3a", {"transforms": "3a"}),
        ("rand-t3aw", {"transforms": "3aw"}),
        ("rand-tweights", {"transforms": "weights"}),
        ("rand-m9-mstd0.5-inc1", {"magnitude": 9, "magnitude_std": 0.5, "increasing": True}),
        # timm keeps the first mstd / mmax / t (setdefault) and the last of the others
        ("rand-mstd0.5-mstd1", {"magnitude_std": 0.5}),
        ("rand-mmax20-mmax30", {"magnitude_max": 20}),
        ("rand-t3a-tweights", {"transforms": "3a"}),
        ("rand-m5-m7", {"magnitude": 7}),
    ],
)
def test_rand_tokens(config, expected):
    assert parse_rand(config) == RandConfig(**expected)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("randaugment-m9", r"must start with 'rand'.*got 'randaugment'"),
        ("rand-m9-x5", r"token 'x5'.*unknown key 'x'.*rand\[-m<int>\]"),
        ("rand-m9.5", r"token 'm9.5'.*`m` takes an integer, got '9.5'"),
        ("rand-p0.5x", r"`p` takes a number, got '0.5x'"),
        ("rand-mstd", r"token 'mstd'.*has no value.*timm would ignore it"),
        ("rand--m9", r"token ''.*has no value"),
        ("rand-tfoo", r"op set 'foo' must be one of \('3a', '3aw', 'weights'\)"),
        ("", r"`config` must be a string"),
    ],
)
def test_rand_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        parse_rand(config)
    with pytest.raises(ConfigError):
        build_policy("timm_randaugment", config=config)


def test_rand_rejects_non_strings():
    with pytest.raises(ConfigError, match="`config` must be a string"):
        parse_rand(9)  # type: ignore[arg-type]


# ---------------------------------------------------------------- AutoAugment
@pytest.mark.parametrize("policy", list(AA_POLICIES))
def test_auto_policies(policy):
    assert parse_auto(policy) == AutoConfig(policy, None)
    assert parse_auto(f"{policy}-mstd0.5-mstd2") == AutoConfig(policy, 0.5)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            "imagenet",
            r"policy 'imagenet' must be one of \('original', 'originalr', 'v0', 'v0r', '3a'\)",
        ),
        ("v0-m9", r"token 'm9'.*unknown key 'm'"),
        ("v0-mstdx", r"no value"),
    ],
)
def test_auto_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        parse_auto(config)


# ---------------------------------------------------------------- AugMix
def test_augmix_defaults_and_tokens():
    assert parse_augmix("augmix") == AugMixConfig(3, 3, -1, 1.0, False, None)
    assert parse_augmix("augmix-m5-w4-d2-a0.5-b1-mstd0.3") == AugMixConfig(5, 4, 2, 0.5, True, 0.3)
    assert parse_augmix("augmix-b0").blended is False
    assert parse_augmix("augmix-mstd1-mstd2").magnitude_std == 1.0


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("augmix-m3-w3-d-1", r"token 'd' .*has no value"),  # a negative depth cannot be written
        ("augmix-k2", r"unknown key 'k'.*augmix\[-m<int>\]"),
        ("augmix-a1x", r"`a` takes a number"),
        ("mix-m3", r"must start with 'augmix'"),
    ],
)
def test_augmix_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        parse_augmix(config)


# ---------------------------------------------------------------- the same objects as timm's
_HP = {"translate_const": 100, "img_mean": (124, 116, 104)}


def _op_tuple(op):
    return (op.name, op.prob, float(op.magnitude), float(op.magnitude_std or 0), op.magnitude_max)


def _spec_tuple(spec):
    return (spec.name, spec.prob, spec.magnitude, spec.std, spec.mmax)


@pytest.mark.parametrize(
    "config",
    [
        "rand-m9-mstd0.5-inc1",
        "rand-m9-mstd0.5",
        "rand-m7-n4-p0.8-mstd101-mmax15",
        "rand-m9-n3-mstd1-tweights",
        "rand-n1-t3a",
        "rand-m6-t3aw-inc1",
        "rand",
    ],
)
def test_rand_ops_match_timm(config):
    timm_t = taa.rand_augment_transform(config, dict(_HP))
    ours = build_policy("timm_randaugment", config=config, hparams=dict(_HP))
    assert ours.num_layers == timm_t.num_layers
    assert [_spec_tuple(s) for s in ours.specs] == [_op_tuple(op) for op in timm_t.ops]
    if timm_t.choice_weights is None:
        assert ours.choice_weights is None
    else:
        assert ours.choice_weights.tolist() == pytest.approx(list(timm_t.choice_weights))
    converted = policy_from_timm(timm_t)
    assert [_spec_tuple(s) for s in converted.specs] == [_spec_tuple(s) for s in ours.specs]
    assert converted.resample_choices == ours.resample_choices == (2, 3)
    assert converted.fill == ours.fill == (124, 116, 104)


@pytest.mark.parametrize("config", ["original", "originalr", "v0", "v0r", "3a", "v0r-mstd0.5"])
def test_auto_ops_match_timm(config):
    timm_t = taa.auto_augment_transform(config, dict(_HP))
    ours = build_policy("timm_autoaugment", config=config, hparams=dict(_HP))
    expected = [_op_tuple(op) for sub in timm_t.policy for op in sub]
    assert [_spec_tuple(s) for s in ours.specs] == expected
    assert ours.sub_ops.shape[0] == len(timm_t.policy)
    converted = policy_from_timm(timm_t)
    assert [_spec_tuple(s) for s in converted.specs] == expected


@pytest.mark.parametrize("config", ["augmix", "augmix-m5-w4-d2-b1", "augmix-m3-a0.5-mstd0.3"])
def test_augmix_matches_timm(config):
    hp = dict(_HP, translate_pct=0.3)
    timm_t = taa.augment_and_mix_transform(config, dict(hp))
    ours = build_policy("timm_augmix", config=config, hparams=dict(hp))
    assert (ours.width, ours.depth, ours.alpha, ours.blended) == (
        timm_t.width,
        timm_t.depth,
        timm_t.alpha,
        timm_t.blended,
    )
    assert [_spec_tuple(s) for s in ours.specs] == [_op_tuple(op) for op in timm_t.ops]
    converted = policy_from_timm(timm_t)
    assert [_spec_tuple(s) for s in converted.specs] == [_spec_tuple(s) for s in ours.specs]


def test_tables_match_timm():
    assert RAND_OPS == tuple(taa._RAND_TRANSFORMS)
    assert RAND_OPS_INCREASING == tuple(taa._RAND_INCREASING_TRANSFORMS)
    assert RAND_SETS["3a"] == tuple(taa._RAND_3A)
    assert RAND_SETS["3aw"] == taa._RAND_WEIGHTED_3A
    assert RAND_SETS["weights"] == taa._RAND_WEIGHTED_0
    assert AUGMIX_OPS == tuple(taa._AUGMIX_TRANSFORMS)
    for name, policy in AA_POLICIES.items():
        timm_policy = taa.auto_augment_policy(name, dict(_HP))
        got = [[(op, p, m) for op, p, m in sub] for sub in policy]
        want = [[(op.name, op.prob, op.magnitude) for op in sub] for sub in timm_policy]
        assert got == want, name


def test_hparams_rules():
    # the caller's hparams win over the config's mstd / mmax, as timm's setdefault
    pol = build_policy(
        "timm_randaugment",
        config="rand-m9-mstd0.5-mmax20",
        hparams={"magnitude_std": 2.0, "magnitude_max": 12, "img_mean": (1, 2, 3)},
    )
    assert {(s.std, s.mmax) for s in pol.specs} == {(2.0, 12)}
    assert pol.fill == (1, 2, 3) and pol.resample_choices == (2, 3)
    pil = pytest.importorskip("PIL.Image")
    bicubic = build_policy(
        "timm_randaugment", hparams={"interpolation": pil.Resampling.BICUBIC, "img_mean": (0, 0, 0)}
    )
    assert bicubic.resample_choices == (3,)
    for bad, match in [
        ({"interpolation": "lanczos"}, r"`hparams\['interpolation'\]`"),
        ({"img_mean": (1.5, 2, 3)}, r"`hparams\['img_mean'\]` must be a tuple of 1 or 3 integers"),
        ({"img_mean": 128}, r"`hparams\['img_mean'\]`"),
        ({"translate_pct": "0.3"}, r"`hparams\['translate_pct'\]` must be a number"),
        ({"magnitude_max": -1}, r"`hparams\['magnitude_max'\]` must be a number >= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_policy("timm_randaugment", hparams=bad)
    with pytest.raises(ConfigError, match="`hparams` must be a dict"):
        build_policy("timm_randaugment", hparams=[("img_mean", (1, 2, 3))])


def test_transforms_argument_and_errors():
    pol = build_policy("timm_randaugment", config="rand-n2-t3a", transforms=["Rotate", "Invert"])
    assert pol.op_names == ("Rotate", "Invert")  # the argument wins over the t token, as in timm
    weighted = build_policy("timm_randaugment", transforms={"Rotate": 3, "Invert": 1})
    assert weighted.choice_weights.tolist() == [0.75, 0.25]
    with pytest.raises(ConfigError, match="op 'Blur' must be one of timm's ops"):
        build_policy("timm_randaugment", transforms=["Blur"])
    with pytest.raises(ConfigError, match=r"needs `hparams\['translate_const'\]`"):
        build_policy("timm_randaugment", transforms=["TranslateX"], hparams={"img_mean": (0, 0, 0)})
    with pytest.raises(ConfigError, match="`n` = 3 ops without replacement need as many"):
        build_policy("timm_randaugment", config="rand-n3", transforms={"Rotate": 1, "Invert": 1})
    with pytest.raises(ConfigError, match="`transforms` must be one of"):
        build_policy("timm_randaugment", transforms="4a")
    with pytest.raises(ConfigError, match="`stream` must be 0"):
        build_policy("timm_randaugment", stream=3)
    assert build_policy("timm_augmix", stream=16).stream == 16


def test_unknown_objects_convert_to_none():
    assert policy_from_timm(object()) is None
    assert policy_from_timm("rand-m9") is None
