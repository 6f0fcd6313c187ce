"""Throughput of our batched policies against kornia and torchvision, side by side.

For each policy (RandAugment, TrivialAugment) on the same device, threads, batch and image
size, it times one batch of:

- ``ours``: ``policy.sample`` + ``policy.apply_batch`` (per-sample ops, grouped by kernel);
- ``kornia``: ``kornia.augmentation.auto.RandAugment(n=2, m=9)`` / ``TrivialAugment()``
  on the batch (float input, conversion included; kornia draws one op set per batch);
- ``tv-tensor``: torchvision v2's transform called per image on uint8 tensors;
- ``tv-pil``: the same per PIL image (CPU only; PIL conversion not timed).

Each is warmed up, then the median of ``--iters`` timed batches is reported with the
ratios ours/kornia and ours/tv-tensor. ``--apply-one`` also times the worker route
(``apply_one`` per image with the batched kernels at B=1 vs torchvision's kernels) and
``--ops`` times every op alone (batched kernel per image vs torchvision per image).

``--vs-pil`` prints only the CPU worker-route comparison (issue 7): one
``policy.sample`` + ``policy.apply_batch`` call per batch against torchvision's
``v2.RandAugment`` applied per PIL image, on one thread, at 96 px with ``num_ops=4``
(batch 64) and at 224 px with ``num_ops=2`` (batch 32). Ours and torchvision's runs are
interleaved round by round so that machine noise hits both alike; each round's ratio is
taken from thread CPU time (``time.thread_time``: time spent waiting for a core shared
with other processes is not counted) and the median of ``--iters`` rounds is reported.

``--count-ops`` prints the kernel launches per ``apply_batch`` call for RandAugment
(batch 256, 224 px, ``num_ops=2``) and AugMix (batch 64, 224 px): the kernel-like aten
events ``torch.profiler`` records on CPU, and the aten ops that touch the images when
they live on the ``meta`` device, which takes the accelerator code path (host-to-device
copies included) without one.

Examples::

    python recipes/benchmark_augment.py --threads 1 --batch 128 --size 224 --iters 5
    python recipes/benchmark_augment.py --vs-pil --iters 7
    python recipes/benchmark_augment.py --count-ops
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.transforms import v2

from ff_lightning.app.bench.images import gradient_batch
from ff_lightning.augment import build_policy
from ff_lightning.augment.functional import OPS, apply_op
from ff_lightning.augment.policies import tv_apply

OP_MAGNITUDES = {
    "ShearX": 0.2,
    "ShearY": -0.2,
    "TranslateX": 40.0,
    "TranslateY": -40.0,
    "Rotate": 20.0,
    "Brightness": 0.3,
    "Color": 0.3,
    "Contrast": -0.3,
    "Sharpness": 0.3,
    "Posterize": 5.0,
    "Solarize": 0.6,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time finished work, not queued kernels


def timeit(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_policy(name: str, x: torch.Tensor, args: argparse.Namespace) -> list[dict[str, Any]]:
    import kornia.augmentation.auto as kauto

    device, b = x.device, x.shape[0]
    ours = build_policy(name)
    tv = v2.RandAugment() if name == "randaugment" else v2.TrivialAugmentWide()
    kornia_aug = (
        kauto.RandAugment(n=2, m=9) if name == "randaugment" else kauto.TrivialAugment()
    ).to(device)
    state = {"epoch": 0}

    def run_ours() -> torch.Tensor:
        state["epoch"] += 1  # new parameters every batch, sampling included in the time
        return ours.apply_batch(x, ours.sample(torch.arange(b), state["epoch"], 0))

    def run_kornia() -> torch.Tensor:
        return kornia_aug(x.float().div_(255))

    def run_tv_tensor() -> list[torch.Tensor]:
        return [tv(x[i]) for i in range(b)]

    methods: dict[str, Callable[[], Any]] = {
        "ours": run_ours,
        "kornia": run_kornia,
        "tv-tensor": run_tv_tensor,
    }
    if device.type == "cpu" and not args.skip_pil:
        pil = [v2.functional.to_pil_image(img) for img in x]
        methods["tv-pil"] = lambda: [tv(im) for im in pil]
    rows = []
    for method, fn in methods.items():
        times = timeit(fn, device, args.iters, args.warmup)
        med = statistics.median(times)
        rows.append(
            {
                "policy": name,
                "method": method,
                "images_per_sec": b / med,
                "median_s": med,
                "times_s": times,
            }
        )
        print(f"  {name:15s} {method:10s} {b / med:9.1f} img/s", flush=True)
    return rows


def _per_image(fn: Callable[[int], Any], n: int) -> Callable[[], list[Any]]:
    return lambda: [fn(i) for i in range(n)]


def bench_apply_one(x: torch.Tensor, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Worker route: ``apply_one`` per image, batched kernels at B=1 vs torchvision kernels."""
    rows = []
    n = min(x.shape[0], 64)
    for name in ("randaugment", "trivialaugment", "autoaugment", "augmix"):
        pol = build_policy(name)
        params = pol.sample(torch.arange(n), 0, 0)
        recs = [params[i] for i in range(n)]
        for backend in ("batched", "torchvision"):
            pol.apply_one_backend = backend
            run = _per_image(partial(lambda p, r, i: p.apply_one(x[i], r[i]), pol, recs), n)
            med = statistics.median(timeit(run, x.device, args.iters, args.warmup))
            rows.append({"policy": name, "backend": backend, "images_per_sec": n / med})
            print(f"  apply_one {name:15s} {backend:12s} {n / med:9.1f} img/s", flush=True)
    return rows


def bench_ops(x: torch.Tensor, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each op alone: batched kernel on the batch vs torchvision per image (us per image)."""
    rows = []
    b = x.shape[0]
    for op in OPS[1:]:
        m = OP_MAGNITUDES.get(op, 0.0)
        ours = partial(apply_op, x, op, torch.full((b,), m))
        tv = _per_image(partial(lambda o, mm, i: tv_apply(x[i], o, mm, "nearest", 0), op, m), b)
        t_ours = statistics.median(timeit(ours, x.device, args.iters, 1)) / b
        t_tv = statistics.median(timeit(tv, x.device, args.iters, 1)) / b
        rows.append(
            {"op": op, "ours_us": t_ours * 1e6, "tv_us": t_tv * 1e6, "speedup": t_tv / t_ours}
        )
        print(
            f"  op {op:13s} ours {t_ours * 1e6:8.1f} us/img  tv {t_tv * 1e6:8.1f} us/img  "
            f"x{t_tv / t_ours:5.2f}",
            flush=True,
        )
    return rows


def _vs_pil_case(size: int, batch: int, num_ops: int, args: argparse.Namespace) -> dict[str, Any]:
    x = gradient_batch(batch, size)
    pil = [v2.functional.to_pil_image(img) for img in x]
    ours = build_policy("randaugment", num_ops=num_ops)
    tv = v2.RandAugment(num_ops=num_ops)
    state = {"epoch": 0}

    def run_ours() -> None:
        state["epoch"] += 1  # new parameters every batch, sampling included
        ours.apply_batch(x, ours.sample(torch.arange(batch), state["epoch"], 0))

    def run_tv() -> None:
        for im in pil:
            tv(im)

    for _ in range(max(1, args.warmup)):
        run_ours()
        run_tv()
    ratios, t_ours, t_tv = [], [], []
    for _ in range(args.iters):  # interleaved: noise hits both alike
        t0 = time.thread_time()
        run_ours()
        t1 = time.thread_time()
        run_tv()
        t2 = time.thread_time()
        t_ours.append((t1 - t0) / batch)
        t_tv.append((t2 - t1) / batch)
        ratios.append((t2 - t1) / (t1 - t0))
    row = {
        "ours_us_per_image": statistics.median(t_ours) * 1e6,
        "pil_us_per_image": statistics.median(t_tv) * 1e6,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
    }
    print(
        f"  {size:3d} px num_ops={num_ops} batch {batch}: apply_batch "
        f"{row['ours_us_per_image']:7.1f} us/img, PIL RandAugment "
        f"{row['pil_us_per_image']:7.1f} us/img, PIL/ours per round "
        f"{' '.join(f'{r:.2f}' for r in ratios)}, median {row['median_ratio']:.2f}x",
        flush=True,
    )
    return row


def vs_pil(args: argparse.Namespace) -> dict[str, Any]:
    """apply_batch (sampling included) vs torchvision's RandAugment per PIL image, 1 thread."""
    torch.set_num_threads(1)
    return {
        f"{size}px_num_ops{k}_batch{b}": _vs_pil_case(size, b, k, args)
        for size, b, k in ((96, 64, 4), (224, 32, 2))
    }


# Aten ops that only make views, allocate, read a scalar or dispatch to other ops: not kernels.
_NOT_KERNELS = frozenset(
    "view view_as as_strided select slice expand expand_as unsqueeze squeeze reshape "
    "_reshape_alias _unsafe_view alias permute transpose t unbind narrow split chunk "
    "flatten unflatten detach detach_ empty empty_like empty_strided resize_ lift_fresh "
    "resolve_conj resolve_neg item _local_scalar_dense is_nonzero is_pinned result_type "
    "set_ contiguous to".split()
)


def _is_kernel(name: str) -> bool:
    """``aten::add_`` (profiler) or ``aten.add_`` (dispatch): does it launch a kernel?"""
    return name.removeprefix("aten::").removeprefix("aten.").split(".")[0] not in _NOT_KERNELS


def count_ops() -> dict[str, Any]:
    """Kernel launches per apply_batch call (profiler on CPU, and on the meta device)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            flat = tree_flatten((args, kwargs, out))[0]
            on_meta = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in flat)
            name = str(func.overloadpacket)
            if on_meta and _is_kernel(name):
                self.count += 1
            return out

    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    for name, batch, kwargs in (("randaugment", 256, {"num_ops": 2}), ("augmix", 64, {})):
        pol = build_policy(name, **kwargs)
        x = gradient_batch(batch, 224)
        p = pol.sample(torch.arange(batch), 0, 0)
        pol.apply_batch(x, p)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            pol.apply_batch(x, p)
        cpu = 0
        for e in prof.events():
            if not e.name.startswith("aten::") or not _is_kernel(e.name):
                continue
            if any(c.name.startswith("aten::") and _is_kernel(c.name) for c in e.cpu_children):
                continue  # counted through its children
            cpu += 1
        meta = Count()
        with meta:
            pol.apply_batch(torch.empty(batch, 3, 224, 224, dtype=torch.uint8, device="meta"), p)
        key = f"{name}_batch{batch}_224px"
        result[key] = {"cpu_profiler_kernels": cpu, "meta_device_ops": meta.count}
        print(
            f"  {key}: {cpu} kernel-like aten ops on CPU (profiler), {meta.count} on the device path (meta)",
            flush=True,
        )
    return result


def print_table(
    rows: list[dict[str, Any]], ratios: dict[str, dict[str, float]], env: dict[str, Any]
) -> None:
    title = f"augmentation throughput, {env['device']}, {env['threads']} thread(s), batch {env['batch']}, {env['size']} px"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency, but keep the script usable
        print(title)
        for r in rows:
            print(f"{r['policy']:15s} {r['method']:10s} {r['images_per_sec']:9.1f} img/s")
        print(json.dumps(ratios, indent=2))
        return
    table = Table(title=title)
    for col in ("policy", "method", "images/s", "ms/batch", "ours / this"):
        table.add_column(col, justify="right" if col not in ("policy", "method") else "left")
    for r in rows:
        ours = next(o for o in rows if o["policy"] == r["policy"] and o["method"] == "ours")
        table.add_row(
            r["policy"],
            r["method"],
            f"{r['images_per_sec']:.1f}",
            f"{r['median_s'] * 1e3:.1f}",
            f"{ours['images_per_sec'] / r['images_per_sec']:.2f}x",
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument(
        "--iters", type=int, default=5, help="timed batches per method (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per method")
    parser.add_argument("--policy", default="all", choices=("all", "randaugment", "trivialaugment"))
    parser.add_argument("--skip-pil", action="store_true", help="skip the torchvision PIL loop")
    parser.add_argument("--apply-one", action="store_true", help="also time apply_one backends")
    parser.add_argument("--ops", action="store_true", help="also time every op alone")
    parser.add_argument(
        "--vs-pil",
        action="store_true",
        help="only apply_batch vs torchvision's PIL RandAugment: 96 px/4 ops and 224 px/2 ops, 1 thread",
    )
    parser.add_argument(
        "--count-ops", action="store_true", help="only the kernel launches per apply_batch call"
    )
    parser.add_argument("--out", default="outputs/benchmark_augment.json")
    args = parser.parse_args(argv)
    if args.vs_pil or args.count_ops:
        result = {}
        if args.vs_pil:
            result["vs_pil"] = vs_pil(args)
        if args.count_ops:
            result["count_ops"] = count_ops()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
        return result

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = gradient_batch(args.batch, args.size).to(device)
    import kornia

    env = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "kornia": kornia.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "iters": args.iters,
        "warmup": args.warmup,
    }
    policies = ("randaugment", "trivialaugment") if args.policy == "all" else (args.policy,)
    rows: list[dict[str, Any]] = []
    for name in policies:
        rows += bench_policy(name, x, args)
    ratios: dict[str, dict[str, float]] = {}
    for name in policies:
        by = {r["method"]: r["images_per_sec"] for r in rows if r["policy"] == name}
        ratios[name] = {f"ours_vs_{m}": by["ours"] / v for m, v in by.items() if m != "ours"}
    result: dict[str, Any] = {"env": env, "results": rows, "ratios": ratios}
    if args.apply_one:
        result["apply_one"] = bench_apply_one(x.cpu(), args)
    if args.ops:
        result["ops"] = bench_ops(x, args)
    print_table(rows, ratios, env)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
