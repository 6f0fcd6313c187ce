"""Counter-based random numbers keyed by ``(seed, epoch, stream, index, counter)``.

Every draw is a pure function of its key, computed with exact integer arithmetic in int64
torch ops (no global generator, no state), so a sample's random numbers are the same in
any process, in any batch, on any device, and whichever other indices share the call
(principle 1 of the design). Calls take a 1-D tensor of dataset ``indices`` and a number
of draws ``n`` and return ``[B, n]``: column ``j`` of row ``i`` is draw number ``j`` of
sample ``indices[i]`` in ``stream``.

Streams keep independent consumers apart. ff_lightning reserves stream ids below 16:

- :data:`STREAM_POLICY` (0): the augmentation policy's ``sample``.
- :data:`STREAM_CROP` (1): random resized crop in the worker (e.g. 20 draws for 10 tries
  of ``(scale, log-ratio)`` and 2 for the crop position).
- :data:`STREAM_FLIP` (2): horizontal flip (``uniform(...)[:, 0] < 0.5``).
- :data:`STREAM_ERASE` (3): RandomErasing keyed per sample (draws 0-22 for the box, draws
  from :data:`ERASE_NOISE_COUNTER` on for the per-pixel noise, see :func:`counter_bits`).
- :data:`STREAM_MIX` (4): a spare id for batch-level ops keyed per sample.
- :data:`STREAM_VIEW` (7): the seeds of the views of multi-view training
  (:func:`derive_seed`).

Example, crop and flip draws of one worker sample::

    u = uniform(seed, epoch, [index], STREAM_CROP, 22)[0].tolist()
    flip = bool(uniform(seed, epoch, [index], STREAM_FLIP, 1)[0, 0] < 0.5)

The mixer is Chris Wellons' ``lowbias32`` (a bijection of 32-bit words with near-ideal
avalanche); 32-bit products are split in 16-bit halves so nothing overflows int64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "ERASE_NOISE_COUNTER",
    "STREAM_CROP",
    "STREAM_ERASE",
    "STREAM_FLIP",
    "STREAM_MIX",
    "STREAM_POLICY",
    "STREAM_VIEW",
    "as_indices",
    "bits",
    "bits_to_randint",
    "bits_to_uniform",
    "counter_bits",
    "derive_seed",
    "index_keys",
    "dirichlet",
    "gamma",
    "gamma_draws",
    "normal",
    "normal_from_bits",
    "randint",
    "uniform",
]

STREAM_POLICY = 0
STREAM_CROP = 1
STREAM_FLIP = 2
STREAM_ERASE = 3
STREAM_MIX = 4
STREAM_VIEW = 7  # 5 and 6 belong to the worker's steps (interpolation, user transforms)
ERASE_NOISE_COUNTER = 64  # RandomErasing's noise: draw ERASE_NOISE_COUNTER + pixel number

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_GOLDEN32 = 0x9E3779B9


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _keys(seed: int, epoch: int, stream: int) -> tuple[int, int, int, int]:
    """Four 32-bit round keys from the scalar part of the key (exact Python ints)."""
    k = _splitmix64(int(seed) & _M64)
    k = _splitmix64(k ^ (int(epoch) & _M64))
    k = _splitmix64(k ^ (int(stream) & _M64))
    k2 = _splitmix64(k)
    return k & _M32, k >> 32, k2 & _M32, k2 >> 32


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for ``x`` in [0, 2**32) without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix32_py(x: int) -> int:
    """:func:`_mix32` on a Python int (exact, identical results)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def derive_seed(seed: int, stream: int, index: int) -> int:
    """A seed in ``[0, 2**63)`` keyed by ``(seed, stream, index)``: a pure function, the same
    in every process (multi-view training gives view ``v`` the seed
    ``derive_seed(seed, STREAM_VIEW, v)``)."""
    k = _splitmix64(int(seed) & _M64)
    k = _splitmix64(k ^ (int(stream) & _M64))
    k = _splitmix64(k ^ (int(index) & _M64))
    return k >> 1


# Below this many words, plain Python ints beat the per-op overhead of torch (a worker
# typically samples one index at a time).
_PY_MAX_WORDS = 256


def as_indices(indices: Tensor | Sequence[int] | int) -> Tensor:
    """Dataset indices as a 1-D int64 CPU tensor (accepts a tensor, a sequence or an int)."""
    if isinstance(indices, Tensor):
        t = indices.detach().to("cpu", torch.int64)
    else:
        t = torch.as_tensor(
            [indices] if isinstance(indices, int) else list(indices), dtype=torch.int64
        )
    if t.ndim != 1:
        raise ValueError(f"`indices` must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"`indices` must be non-negative, got min {int(t.min())}")
    return t


def bits(
    seed: int, epoch: int, indices: Tensor | Sequence[int] | int, stream: int, n: int
) -> Tensor:
    """Random 32-bit words as int64 ``[B, n]`` in ``[0, 2**32)``, keyed by the arguments."""
    if n < 0:
        raise ValueError(f"`n` must be non-negative, got {n}")
    idx = as_indices(indices)
    k0, k1, k2, k3 = _keys(seed, epoch, stream)
    if idx.numel() * n <= _PY_MAX_WORDS:
        ctrs = [(j * _GOLDEN32 + k2) & _M32 for j in range(n)]
        rows = []
        for i in idx.tolist():
            h = _mix32_py(_mix32_py((i & _M32) ^ k0) ^ (i >> 32) ^ k1)
            rows.append([_mix32_py(_mix32_py((h + c) & _M32) ^ k3) for c in ctrs])
        return torch.tensor(rows, dtype=torch.int64).view(idx.numel(), n)
    h, k2, k3 = index_keys(seed, epoch, idx, stream)
    return counter_bits(h[:, None], torch.arange(n, dtype=torch.int64)[None, :], k2, k3)


def index_keys(
    seed: int, epoch: int, indices: Tensor | Sequence[int] | int, stream: int
) -> tuple[Tensor, int, int]:
    """The per-index half of :func:`bits`: int64 ``h [B]`` and the two counter keys, so that
    ``counter_bits(h[i], j, k2, k3)`` is draw ``j`` of ``indices[i]`` (on any device, for any
    set of counters ``j``: what draws per pixel need)."""
    idx = as_indices(indices)
    k0, k1, k2, k3 = _keys(seed, epoch, stream)
    h = _mix32((idx & _M32) ^ k0)
    return _mix32(h ^ (idx >> 32) ^ k1), k2, k3


def counter_bits(h: Tensor, counters: Tensor, k2: int, k3: int) -> Tensor:
    """32-bit words (int64 in ``[0, 2**32)``) for index hashes ``h`` and draw numbers
    ``counters`` (broadcast together, on their device): :func:`bits`'s second half."""
    ctr = (counters * _GOLDEN32) & _M32
    return _mix32(_mix32((h + ctr + k2) & _M32) ^ k3)


def normal_from_bits(b: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """One standard normal per 32-bit word (Box-Muller on its two 16-bit halves, so
    ``|z| < 4.9``): cheap enough to draw per pixel."""
    u1 = ((b >> 16).to(dtype) + 0.5) * (1.0 / 65536)  # in (0, 1): the log is finite
    u2 = (b & 0xFFFF).to(dtype) * (2.0 * math.pi / 65536)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(u2)


def bits_to_uniform(b: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Map 32-bit words to uniforms in ``[0, 1)``: 24 bits for float32, 32 bits for float64."""
    if dtype == torch.float64:
        return b.to(torch.float64) * (1.0 / 2**32)
    return (b >> 8).to(dtype) * (1.0 / 2**24)


def bits_to_randint(b: Tensor, high: int | Tensor) -> Tensor:
    """Map 32-bit words to integers in ``[0, high)`` (multiply-shift, ``high < 2**31``)."""
    return (b * high) >> 32


def uniform(
    seed: int,
    epoch: int,
    indices: Tensor | Sequence[int] | int,
    stream: int,
    n: int,
    *,
    low: float = 0.0,
    high: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform floats ``[B, n]`` in ``[low, high)`` keyed by ``(seed, epoch, index, stream)``."""
    u = bits_to_uniform(bits(seed, epoch, indices, stream, n), dtype)
    return u if (low, high) == (0.0, 1.0) else low + (high - low) * u


def randint(
    seed: int, epoch: int, indices: Tensor | Sequence[int] | int, stream: int, n: int, high: int
) -> Tensor:
    """Integers ``[B, n]`` uniform in ``[0, high)`` keyed by ``(seed, epoch, index, stream)``."""
    if not 1 <= high < 2**31:
        raise ValueError(f"`high` must be in [1, 2**31), got {high}")
    return bits_to_randint(bits(seed, epoch, indices, stream, n), high)


def normal(u1: Tensor, u2: Tensor) -> Tensor:
    """Standard normals from two uniform tensors in ``[0, 1)`` (Box-Muller)."""
    r = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 is in (0, 1], so the log is finite
    return r * torch.cos(2.0 * math.pi * u2)


_GAMMA_ROUNDS = 8


def gamma_draws(alpha: float) -> int:
    """How many uniforms :func:`gamma` consumes per variate for ``alpha``."""
    if alpha == 1.0:
        return 1
    return 3 * _GAMMA_ROUNDS + (1 if alpha < 1.0 else 0)


def gamma(u: Tensor, alpha: float) -> Tensor:
    """Gamma(alpha, 1) variates from uniforms ``u[..., gamma_draws(alpha)]``.

    ``alpha == 1`` is the exact exponential ``-log(1 - u)``. Otherwise Marsaglia-Tsang with
    a fixed number of rounds (3 uniforms each) is used, vectorised; the first accepted round
    wins (acceptance is above 95% per round, so all 8 rounds fail with probability below
    1e-10, in which case the mean ``alpha`` is returned). ``alpha < 1`` uses the boost
    ``Gamma(alpha) = Gamma(alpha + 1) * U ** (1 / alpha)`` with one extra uniform.
    """
    if alpha <= 0:
        raise ValueError(f"`alpha` must be positive, got {alpha}")
    if alpha == 1.0:
        return -torch.log1p(-u[..., 0])
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    r = u[..., : 3 * _GAMMA_ROUNDS].reshape(*u.shape[:-1], _GAMMA_ROUNDS, 3).to(torch.float64)
    z = normal(r[..., 0], r[..., 1])
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (
        torch.log1p(-r[..., 2]) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300))
    )
    first = torch.argmax(ok.to(torch.int8), dim=-1, keepdim=True)
    g = torch.gather(d * v, -1, first).squeeze(-1)
    g = torch.where(ok.any(-1), g, torch.full_like(g, a))
    if alpha < 1.0:
        g = g * (1.0 - u[..., -1].to(torch.float64)) ** (1.0 / alpha)
    return g.to(u.dtype)


def dirichlet(u: Tensor, alpha: float, k: int) -> Tensor:
    """Symmetric Dirichlet(alpha * 1_k) rows from uniforms ``u[..., k * gamma_draws(alpha)]``."""
    g = gamma(u.reshape(*u.shape[:-1], k, gamma_draws(alpha)), alpha)
    return g / g.sum(-1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
