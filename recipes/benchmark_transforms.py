"""Routed per-sample transforms against kornia's per-sample ones, per image, on one thread.

For ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` and ``GaussianBlur(23, sigma=(0.1, 2.0))`` at
``--size`` px, batch ``--batch``, on the CPU by default, each round times:

- ``ours``: ``sample`` + ``apply_batch`` of the routed transform on the uint8 batch (a new
  record every round, sampling included);
- ``kornia``: ``kornia.augmentation.ColorJitter(..., same_on_batch=False)`` /
  ``RandomGaussianBlur((23, 23), (0.1, 2.0), same_on_batch=False)`` with ``p=1`` on the same
  batch already converted to float in ``[0, 1]`` (the conversion is not timed: the comparison
  most favourable to kornia);
- ``tv-tensor``: torchvision v2's transform called per uint8 image (for reference).

Rounds are interleaved (ours, kornia, torchvision, ours, ...) so machine noise hits all alike;
each time is the thread's CPU time (``time.thread_time``: waiting for a core shared with other
processes is not counted). The report gives medians per image and the median over rounds of
each round's kornia/ours ratio.

``--costs`` prints instead every routed transform's time per applied image at ``--size`` px
relative to the op registry's Brightness (the unit of ``estimate_cost``).

``--pillow`` compares instead the kernels that replace Pillow's, each against Pillow itself on
the same inputs, per image, interleaved rounds of thread time:

- ``crop-bicubic`` / ``crop-bilinear``: the workers' random resized crop of a ``--size`` px
  RGB image to ``--size`` px (``--batch`` crops, boxes drawn as torchvision's
  RandomResizedCrop draws them): Pillow's ``image.crop(box).resize(...)`` against the native
  loop (``_pil_native.resize_crop``, the same bytes, written planar);
- ``gaussian-blur``: Pillow's ``image.filter(ImageFilter.GaussianBlur(sigma))`` per image
  against ``PillowGaussianBlur`` on the batch (sigma in (0.1, 2), every image blurred).

Examples::

    python recipes/benchmark_transforms.py --rounds 9
    python recipes/benchmark_transforms.py --costs
    python recipes/benchmark_transforms.py --pillow --rounds 9
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from ff_lightning.app.bench.images import gradient_batch
from ff_lightning.augment.functional import apply_op
from ff_lightning.augment.transforms import (
    ColorJitter,
    GaussianBlur,
    RandomAdjustSharpness,
    RandomAffine,
    RandomAutocontrast,
    RandomEqualize,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomInvert,
    RandomPosterize,
    RandomRotation,
    RandomSolarize,
)


def interleaved_times(
    methods: dict[str, Callable[[], Any]], rounds: int, per: int
) -> dict[str, list[float]]:
    """Thread CPU seconds per item (``per`` items a call) of every method, ``rounds`` rounds in
    turn, after one warm-up call each (caches, allocator, native build)."""
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for m, fn in methods.items():
            t0 = time.thread_time()
            fn()
            times[m].append((time.thread_time() - t0) / per)
    return times


def _cases(batch: int) -> dict[str, dict[str, Any]]:
    import kornia.augmentation as K

    return {
        "ColorJitter": {
            "ours": ColorJitter(0.4, 0.4, 0.4, 0.1),
            "kornia": K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0, same_on_batch=False),
            "tv": v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
        },
        "GaussianBlur": {
            "ours": GaussianBlur(23, (0.1, 2.0)),
            "kornia": K.RandomGaussianBlur((23, 23), (0.1, 2.0), p=1.0, same_on_batch=False),
            "tv": v2.GaussianBlur(23, (0.1, 2.0)),
        },
    }


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of ours / kornia / torchvision per case."""
    x = gradient_batch(args.batch, args.size)
    xf = x.float().div_(255)
    b = args.batch
    out: dict[str, Any] = {}
    for name, case in _cases(b).items():
        ours, kor, tv = case["ours"], case["kornia"], case["tv"]
        state = {"epoch": 0}

        def run_ours(ours: Any = ours, state: dict[str, int] = state) -> None:
            state["epoch"] += 1
            ours.apply_batch(x, ours.sample(torch.arange(b), state["epoch"], 0))

        methods: dict[str, Callable[[], Any]] = {
            "ours": run_ours,
            "kornia": lambda kor=kor: kor(xf),
            "tv-tensor": lambda tv=tv: [tv(x[i]) for i in range(b)],
        }
        times = interleaved_times(methods, args.rounds, b)
        ratios = [k / o for k, o in zip(times["kornia"], times["ours"], strict=True)]
        row = {
            "us_per_image": {m: statistics.median(t) * 1e6 for m, t in times.items()},
            "kornia_over_ours_per_round": ratios,
            "kornia_over_ours": statistics.median(ratios),
            "tv_over_ours": statistics.median(
                [t / o for t, o in zip(times["tv-tensor"], times["ours"], strict=True)]
            ),
        }
        us = row["us_per_image"]
        print(
            f"  {name:12s} ours {us['ours']:8.1f} us/img  kornia {us['kornia']:8.1f} us/img  "
            f"tv-tensor {us['tv-tensor']:8.1f} us/img  kornia/ours per round "
            f"{' '.join(f'{r:.2f}' for r in ratios)}  median {row['kornia_over_ours']:.2f}x",
            flush=True,
        )
        out[name] = row
    return out


def costs(args: argparse.Namespace) -> dict[str, float]:
    """Time per applied image of every routed transform, relative to Brightness."""
    x = gradient_batch(args.batch, args.size)
    b = args.batch

    def per_image(fn: Callable[[], Any]) -> float:
        fn()
        return (
            statistics.median(
                [
                    (lambda t0: (fn(), time.thread_time() - t0)[1])(time.thread_time())
                    for _ in range(5)
                ]
            )
            / b
        )

    unit = per_image(lambda: apply_op(x, "Brightness", torch.full((b,), 0.3)))
    transforms = [
        ColorJitter(brightness=0.4),
        ColorJitter(contrast=0.4),
        ColorJitter(saturation=0.4),
        ColorJitter(hue=0.1),
        GaussianBlur(23, (0.1, 2.0)),
        RandomGrayscale(1.0),
        RandomSolarize(128, 1.0),
        RandomPosterize(4, 1.0),
        RandomEqualize(1.0),
        RandomAutocontrast(1.0),
        RandomInvert(1.0),
        RandomAdjustSharpness(2.0, 1.0),
        RandomAffine(20, (0.1, 0.1), (0.9, 1.1), 5),
        RandomAffine(20, (0.1, 0.1), (0.9, 1.1), 5, interpolation="bilinear"),
        RandomRotation(30),
        RandomHorizontalFlip(1.0),
    ]
    result = {}
    for t in transforms:
        rec = t.sample(torch.arange(b), 0, 0)
        rel = per_image(lambda t=t, rec=rec: t.apply_batch(x, rec)) / unit
        est = float(t.estimate_cost(rec).mean())
        key = repr(t).split(", stream")[0]
        result[key] = rel
        print(f"  {key:70s} measured {rel:5.2f}  estimate_cost {est:5.2f}", flush=True)
    print(f"  (unit: Brightness, {unit * 1e6:.1f} us per image)")
    return result


def pillow(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of Pillow against the kernels that give its bytes."""
    import numpy as np
    from PIL import Image, ImageFilter

    from ff_lightning.augment import _pil_native
    from ff_lightning.augment.transforms import PillowGaussianBlur
    from ff_lightning.pipeline.worker.geometry import crop_boxes

    if _pil_native.lib() is None:
        raise SystemExit("error: --pillow needs the native library (FF_LIGHTNING_NATIVE is off?)")
    x = gradient_batch(args.batch, args.size)
    b, size = args.batch, args.size
    arrays = [np.ascontiguousarray(x[i].permute(1, 2, 0).numpy()) for i in range(b)]
    images = [Image.fromarray(a) for a in arrays]
    boxes = [
        (left, top, left + w, top + h)
        for top, left, h, w in crop_boxes(
            [(size, size)] * b, seed=0, epoch=0, indices=range(b), scale=(0.08, 1.0),
            ratio=(3 / 4, 4 / 3),
        )
    ]  # fmt: skip
    out = np.empty((b, 3, size, size), dtype=np.uint8)
    blur = PillowGaussianBlur((0.1, 2.0), p=1.0)
    record = blur.sample(torch.arange(b), 0, 0)
    sigmas = record["sigma"].tolist()

    def crops(resample: int) -> dict[str, Callable[[], Any]]:
        def theirs() -> None:
            for im, box in zip(images, boxes, strict=True):
                np.asarray(im.crop(box).resize((size, size), resample))

        def ours() -> None:
            for j, (a, box) in enumerate(zip(arrays, boxes, strict=True)):
                _pil_native.resize_crop(a, box, out[j], resample)

        return {"pillow": theirs, "ours": ours}

    cases = {
        "crop-bicubic": crops(Image.BICUBIC),
        "crop-bilinear": crops(Image.BILINEAR),
        "gaussian-blur": {
            "pillow": lambda: [
                im.filter(ImageFilter.GaussianBlur(s)) for im, s in zip(images, sigmas, strict=True)
            ],
            "ours": lambda: blur.apply_batch(x, record),
        },
    }
    result: dict[str, Any] = {}
    for name, methods in cases.items():
        times = interleaved_times(methods, args.rounds, b)
        ratios = [p / o for p, o in zip(times["pillow"], times["ours"], strict=True)]
        row = {
            "us_per_image": {m: statistics.median(t) * 1e6 for m, t in times.items()},
            "pillow_over_ours_per_round": ratios,
            "pillow_over_ours": statistics.median(ratios),
        }
        us = row["us_per_image"]
        print(
            f"  {name:14s} ours {us['ours']:8.1f} us/img  Pillow {us['pillow']:8.1f} us/img  "
            f"Pillow/ours per round {' '.join(f'{r:.2f}' for r in ratios)}  median "
            f"{row['pillow_over_ours']:.2f}x",
            flush=True,
        )
        result[name] = row
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds")
    parser.add_argument("--costs", action="store_true", help="relative costs instead")
    parser.add_argument(
        "--pillow", action="store_true", help="the native crop and blur against Pillow instead"
    )
    parser.add_argument("--out", default="outputs/benchmark_transforms.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import kornia

    env = {
        "torch": torch.__version__,
        "kornia": kornia.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")(),
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "rounds": args.rounds,
    }
    result: dict[str, Any] = {"env": env}
    if args.costs:
        result["costs"] = costs(args)
    elif args.pillow:
        result["pillow"] = pillow(args)
    else:
        result["compare"] = compare(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
