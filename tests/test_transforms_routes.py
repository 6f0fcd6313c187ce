"""Route equality and the protocol of the routed transforms.

- ``apply_batch`` on a batch equals ``apply_one`` per sample and ``apply_batch`` on any
  subset, bit for bit on CPU (one and three channels); records depend on ``(seed, epoch,
  index)`` only;
- edge cases: batch of one, empty batch, factors at the identity, ``p`` = 0 and 1;
- the record (:class:`Record`): indexing, concatenation, pickling, moving;
- chains: member order, streams, policies inside;
- the device path (on the ``meta`` device): no host read of a device value.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ff_lightning.augment import build_policy
from ff_lightning.augment.transforms import (
    Chain,
    ColorJitter,
    GaussianBlur,
    RandomApply,
    RandomGrayscale,
    RandomInvert,
    RandomSolarize,
    Record,
)
from tests.transforms_cases import ALL, images, policy_chain, reference

CASES = {**ALL, "policy-chain": policy_chain}


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- route equality
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", list(CASES))
def test_batch_equals_one_by_one_and_subsets(name: str, channels: int) -> None:
    t = CASES[name]()
    x = images(12, channels, 31, 45, seed=3)
    if name == "affine-nearest" and channels == 1:
        x = images(12, 3, 31, 45, seed=3)
    keep = x.clone()
    idx = torch.arange(500, 512)
    rec = t.sample(idx, 4, 11)
    y = t.apply_batch(x, rec)
    assert torch.equal(x, keep)  # the input is never written
    ones = torch.stack([t.apply_one(x[i], rec[i]) for i in range(12)])
    assert torch.equal(y, ones)
    for sub in (torch.tensor([3, 0, 9]), torch.tensor([11]), torch.arange(1, 12, 2)):
        assert torch.equal(t.apply_batch(x[sub], rec[sub]), y[sub])
        # the subset's own records, drawn apart, are the same records
        assert t.sample(idx[sub], 4, 11).equal(rec[sub])


@pytest.mark.parametrize("name", ["jitter", "blur", "affine-nearest", "choice", "policy-chain"])
def test_records_depend_on_seed_epoch_and_index(name: str) -> None:
    t = CASES[name]()
    a = t.sample(torch.arange(64), 0, 0)
    assert a.equal(t.sample(torch.arange(64), 0, 0))
    assert a.equal(
        Record.cat([t.sample(torch.arange(32), 0, 0), t.sample(torch.arange(32, 64), 0, 0)])
    )
    assert not a.equal(t.sample(torch.arange(64), 1, 0))
    assert not a.equal(t.sample(torch.arange(64), 0, 1))


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("name", list(CASES))
def test_batch_of_one_and_empty_batch(name: str) -> None:
    t = CASES[name]()
    x = images(1, 3, 17, 23, seed=1)
    rec = t.sample([42], 0, 0)
    assert torch.equal(t.apply_batch(x, rec), t.apply_one(x[0], rec).unsqueeze(0))
    empty = x[:0]
    rec0 = t.sample(torch.zeros(0, dtype=torch.int64), 0, 0)
    assert len(rec0) == 0
    out = t.apply_batch(empty, rec0)
    assert out.shape == empty.shape and out.dtype == torch.uint8
    assert t.estimate_cost(rec0).shape == (0,)


def test_identity_factors_are_the_identity() -> None:
    t = ColorJitter(0.5, 0.5, 0.5)
    x = images(8, 3, 20, 24)
    rec = t.sample(torch.arange(8), 0, 0)
    ones = Record({"order": rec["order"], "factors": torch.ones(8, 4)})
    assert torch.equal(t.apply_batch(x, ones), x)
    assert (t.estimate_cost(ones) == 0).all()
    # hue at factor 0 still goes through HSV, exactly as torchvision does
    h = ColorJitter(hue=0.2)
    zero = Record({"order": rec["order"], "factors": torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 8)})
    ref = torch.stack([reference(h, x[i], zero[i]) for i in range(8)])
    assert torch.equal(h.apply_batch(x, zero), ref)


def test_degenerate_ranges_are_left_out() -> None:
    t = ColorJitter(brightness=(1.0, 1.0), contrast=0.0, saturation=None, hue=(0.0, 0.0))
    assert t.ranges == (None, None, None, None)
    x = images(4)
    assert torch.equal(t.apply_batch(x, t.sample(torch.arange(4), 0, 0)), x)
    tiny = GaussianBlur(5, sigma=0.05)  # every tap but the centre underflows: the identity
    assert torch.equal(tiny.apply_batch(x, tiny.sample(torch.arange(4), 0, 0)), x)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: RandomInvert(p),
        lambda p: RandomGrayscale(p),
        lambda p: RandomSolarize(128, p),
        lambda p: RandomApply([ColorJitter(0.5)], p=p),
    ],
    ids=["invert", "grayscale", "solarize", "apply"],
)
def test_p_zero_and_one(make) -> None:
    x = torch.randint(0, 256, (16, 3, 21, 19), dtype=torch.uint8)
    never, always = make(0.0), make(1.0)
    r0, r1 = never.sample(torch.arange(16), 0, 0), always.sample(torch.arange(16), 0, 0)
    assert not r0["applied"].any() and r1["applied"].all()
    assert torch.equal(never.apply_batch(x, r0), x)
    assert (never.estimate_cost(r0) == 0).all() and (always.estimate_cost(r1) > 0).all()
    y = always.apply_batch(x, r1)
    assert (y != x).flatten(1).any(1).all()


def test_one_channel_colour_ops_are_identities_where_torchvision_is() -> None:
    x = images(6, 1, 20, 20)
    for t in (ColorJitter(saturation=0.9, hue=0.4), RandomGrayscale(1.0)):
        assert torch.equal(t.apply_batch(x, t.sample(torch.arange(6), 0, 0)), x)


# ---------------------------------------------------------------- the record
def test_record_indexing_and_container_protocol() -> None:
    t = policy_chain()
    rec = t.sample(torch.arange(10), 0, 0)
    assert len(rec) == 10 and rec.device == torch.device("cpu")
    assert len(rec[3]) == 1 and rec[-1].equal(rec[9])
    assert rec[2:5].equal(rec[torch.tensor([2, 3, 4])]) and rec[2:5].equal(rec[[2, 3, 4]])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 7]] = True
    assert rec[mask].equal(rec[[1, 7]])
    assert Record.cat([rec[:4], rec[4:]]).equal(rec)
    again = pickle.loads(pickle.dumps(rec))
    assert again.equal(rec) and again.names == rec.names
    assert rec.to("cpu").equal(rec)
    assert "0.factors" in rec and rec.part("0").names == ("order", "factors")
    assert "Record(len=10" in repr(rec)
    with pytest.raises(IndexError, match="out of range"):
        rec[10]
    with pytest.raises(IndexError, match="bool mask"):
        rec[torch.ones(3, dtype=torch.bool)]
    with pytest.raises(TypeError, match="bool or integer"):
        rec[torch.tensor([0.5])]
    with pytest.raises(ValueError, match="same names"):
        Record.cat([rec, RandomInvert().sample([0], 0, 0)])
    with pytest.raises(ValueError, match="leading dimension"):
        Record({"a": torch.zeros(3), "b": torch.zeros(4)})
    with pytest.raises(ValueError, match="`length`"):
        Record({})
    assert len(Record({}, 5)[1:3]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs an accelerator")
def test_record_pins() -> None:
    rec = ColorJitter(0.3).sample(torch.arange(4), 0, 0)
    assert rec.pin_memory().is_pinned()


def test_apply_checks_inputs() -> None:
    t = ColorJitter(0.3)
    rec = t.sample(torch.arange(2), 0, 0)
    with pytest.raises(ValueError, match="uint8 tensor shaped"):
        t.apply_batch(torch.zeros(2, 3, 4, 4), rec)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        t.apply_batch(torch.zeros(2, 4, 4, 4, dtype=torch.uint8), rec)
    with pytest.raises(ValueError, match="2 samples for 3 image"):
        t.apply_batch(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), rec)
    with pytest.raises(TypeError, match="must be a Record"):
        t.apply_batch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), {"order": 1})
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        t.apply_one(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), rec[0])
    blur = GaussianBlur(9)
    with pytest.raises(ValueError, match="reflect padding"):
        blur.apply_batch(torch.zeros(2, 3, 4, 30, dtype=torch.uint8), blur.sample([0, 1], 0, 0))


# ---------------------------------------------------------------- chains
def test_chain_applies_members_in_order_with_distinct_streams() -> None:
    a, b = ColorJitter(0.5, hue=0.2), RandomSolarize(100, 0.5)
    chain = Chain([a, b, RandomApply([a, b], p=0.5)])
    streams = [chain.transforms[0].stream, chain.transforms[1].stream, chain.transforms[2].stream]
    inner = [m.stream for m in chain.transforms[2].transforms]
    assert len(set(streams + inner)) == 5 and min(streams) >= 16
    assert (a.stream, b.stream) == (16, 16)  # the user's objects are not changed
    x = images(8)
    rec = chain.sample(torch.arange(8), 0, 0)
    step = chain.transforms[0].apply_batch(x, rec.part("0"))
    step = chain.transforms[1].apply_batch(step, rec.part("1"))
    step = chain.transforms[2].apply_batch(step, rec.part("2"))
    assert torch.equal(chain.apply_batch(x, rec), step)
    costs = sum(m.estimate_cost(rec.part(str(i))) for i, m in enumerate(chain.transforms))
    assert torch.allclose(chain.estimate_cost(rec), costs)


def test_chain_first_policy_draws_as_alone_and_later_ones_apart() -> None:
    ra = build_policy("randaugment")
    chain = Chain([ColorJitter(0.2), ra, build_policy("randaugment")])
    rec = chain.sample(torch.arange(50), 2, 5)
    alone = ra.sample(torch.arange(50), 2, 5)
    assert chain.transforms[1].params(rec.part("1")).equal(alone)
    assert not chain.transforms[2].params(rec.part("2")).equal(alone)
    x = images(50, 3, 24, 24)
    assert torch.equal(
        Chain([ra]).apply_batch(x, Chain([ra]).sample(torch.arange(50), 2, 5)),
        ra.apply_batch(x, alone),
    )


def test_empty_chain_is_the_identity() -> None:
    chain = Chain([])
    rec = chain.sample(torch.arange(3), 0, 0)
    x = images(3)
    assert len(rec) == 3 and torch.equal(chain.apply_batch(x, rec), x)
    assert (chain.estimate_cost(rec) == 0).all()


# ---------------------------------------------------------------- device path
class _DeviceOps(TorchDispatchMode):
    """Counts aten ops on ``meta`` tensors, the host reads among them, and the host-to-device
    copies (a host tensor in, a ``meta`` tensor out)."""

    READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item")

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}
        self.copies: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type == "meta" for t in ins):
            name = str(func.overloadpacket)
            self.ops[name] = self.ops.get(name, 0) + 1
        elif any(t.device.type == "meta" for t in outs) and ins:
            self.copies.append(tuple(ins[0].shape))
        return out


#: Host-to-device copies per call: one packed copy per kernel group (small parameter
#: buffers), the hue table once per device.
COPY_BUDGET = {
    "jitter": 10,
    "jitter-no-hue": 4,
    "jitter-hue-only": 5,
    "apply": 3,
    "choice": 4,
    "order": 20,
    "chain": 14,
    "apply-blur": 8,
    "policy-chain": 18,
}


@pytest.mark.parametrize("name", list(CASES))
def test_device_path_reads_no_device_value(name: str) -> None:
    """On the ``meta`` device (the accelerator code path without one) every kernel runs from
    the host record: no host read of an image value is dispatched (one would raise there),
    and the small parameter copies stay within budget."""
    t = CASES[name]()
    rec = t.sample(torch.arange(16), 0, 0)
    x = torch.empty(16, 3, 40, 48, dtype=torch.uint8, device="meta")
    with _DeviceOps() as seen:
        out = t.apply_batch(x, rec)
    assert out.device.type == "meta" and out.shape == x.shape and out.dtype == torch.uint8
    assert not any(op in seen.ops for op in _DeviceOps.READS), seen.ops
    assert len(seen.copies) <= COPY_BUDGET.get(name, 1), seen.copies
