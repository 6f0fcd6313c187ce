"""timm's augmentation policies: our batched version against timm's own Pillow transform.

Default (speed): per image, one thread, ``TimmRandAugment`` (``policy.sample`` +
``policy.apply_batch`` on a batch, 224 px, batch 32) against timm's ``rand_augment_transform``
called on each PIL image (conversion to PIL not timed; timm's Posterize given Pillow < 11's result below 1 bit, which
Pillow 13 refuses). Ours and timm's run alternately, round
by round, so machine noise hits both alike; each round is timed with thread CPU time
(``time.thread_time``: waiting for a core shared with other processes is not counted) and the
median per-image times and the median of the per-round ratios are printed.

``--fidelity`` prints, per timm op, how far our batched result is from timm's Pillow op for the
same drawn parameters (mean absolute difference per image, its worst value, and the share of
bit-identical images), at ``--size`` px on ``--images`` synthetic images with levels
``N(m, 3)`` clipped to ``[0, 15]``.

Examples::

    python recipes/benchmark_timm.py --rounds 15
    python recipes/benchmark_timm.py --interpolation bicubic   # timm's create_transform(..., interpolation="bicubic")
    python recipes/benchmark_timm.py --fidelity --size 224 --images 24
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any
from unittest import mock

import numpy as np
import torch

from ff_lightning.app.bench.images import gradient_batch
from ff_lightning.augment import build_policy
from ff_lightning.augment.timm_ops import TIMM_OPS


def _pil_images(x: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()) for img in x]


def _hparams(size: int, interpolation: str) -> dict[str, Any]:
    """What timm's create_transform hands rand_augment_transform (ImageNet mean fill)."""
    hp: dict[str, Any] = {"translate_const": int(size * 0.45), "img_mean": (124, 116, 104)}
    if interpolation != "random":
        from PIL import Image

        hp["interpolation"] = getattr(Image.Resampling, interpolation.upper())
    return hp


def _posterize_compat(transform: Any) -> Any:
    """Pillow 13's ``posterize`` raises below 1 bit, which timm's PosterizeIncreasing reaches at
    magnitude 10 (about 2% of its applications with ``m9-mstd0.5``): give those the black image
    older Pillow gave (as ff_lightning does), so the timm baseline can run at all."""
    import timm.data.auto_augment as taa
    from PIL import Image

    def posterize(img, bits, **kwargs):
        return Image.new(img.mode, img.size) if bits < 1 else taa.posterize(img, bits, **kwargs)

    for op in transform.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize
    return transform


def speed(args: argparse.Namespace) -> dict[str, Any]:
    from timm.data.auto_augment import rand_augment_transform

    torch.set_num_threads(1)
    hp = _hparams(args.size, args.interpolation)
    ours = build_policy("timm_randaugment", config=args.config, hparams=dict(hp))
    theirs = _posterize_compat(rand_augment_transform(args.config, dict(hp)))
    x = gradient_batch(args.batch, args.size, low_contrast=True)
    pil = _pil_images(x)
    epoch = [0]

    def run_ours() -> None:
        epoch[0] += 1  # new parameters every round, sampling included in the time
        ours.apply_batch(x, ours.sample(torch.arange(args.batch), epoch[0], 0))

    def run_timm() -> None:
        for img in pil:
            theirs(img)

    run_ours()
    run_timm()
    t_ours, t_timm, ratios = [], [], []
    for _ in range(args.rounds):
        t0 = time.thread_time()
        run_ours()
        t1 = time.thread_time()
        run_timm()
        t2 = time.thread_time()
        t_ours.append((t1 - t0) / args.batch)
        t_timm.append((t2 - t1) / args.batch)
        ratios.append((t2 - t1) / (t1 - t0))
    return {
        "config": args.config,
        "interpolation": args.interpolation,
        "size": args.size,
        "batch": args.batch,
        "rounds": args.rounds,
        "ours_ms_per_image": 1e3 * statistics.median(t_ours),
        "timm_ms_per_image": 1e3 * statistics.median(t_timm),
        "timm_over_ours": statistics.median(ratios),
        "ratio_min_max": [min(ratios), max(ratios)],
    }


def fidelity(args: argparse.Namespace) -> dict[str, Any]:
    import timm.data.auto_augment as taa

    hp = dict(_hparams(args.size, "random"), magnitude_max=15)
    x = gradient_batch(args.images, args.size, seed=1, low_contrast=True)
    pil = _pil_images(x)
    rows = {}
    for name in TIMM_OPS:
        pol = build_policy(
            "timm_randaugment", config="rand-n1-p1.0-m7-mstd3", hparams=hp, transforms=[name]
        )
        rec = pol.sample(torch.arange(args.images), 0, 0)
        got = pol.apply_batch(x, rec)
        mads = []
        for i, img in enumerate(pil):
            level, sign = float(rec.levels[i, 0]), float(rec.signs[i, 0])
            bits = int(level / 10 * 4)
            bits = {"PosterizeIncreasing": 4 - bits, "PosterizeOriginal": bits + 4}.get(name, bits)
            if name.startswith("Posterize") and bits < 1:  # Pillow 13 raises; ours is black
                ref = np.zeros_like(np.asarray(img))
            else:
                op = taa.AugmentOp(name, 1.0, level, dict(hp, magnitude_std=0))
                op.kwargs["resample"] = int(rec.resample[i, 0])
                aux = float(rec.aux[i, 0])
                with (
                    mock.patch.object(taa.random, "random", side_effect=[float(sign < 0)]),
                    mock.patch.object(
                        taa.random, "uniform", side_effect=lambda a, b, u=aux: a + (b - a) * u
                    ),
                ):
                    ref = np.asarray(op(img))
            diff = np.abs(got[i].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
            mads.append(float(diff.mean()))
        rows[name] = {
            "mean_abs_diff": statistics.mean(mads),
            "worst_image_mad": max(mads),
            "bit_identical_images": sum(m == 0 for m in mads) / len(mads),
        }
    return {"size": args.size, "images": args.images, "ops": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="rand-m9-mstd0.5-inc1", help="timm's rand-* string")
    parser.add_argument(
        "--interpolation",
        default="random",
        choices=("random", "bilinear", "bicubic", "nearest"),
        help="hparams['interpolation'] (random: timm's default, bilinear or bicubic per op)",
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=11, help="interleaved timed rounds")
    parser.add_argument("--fidelity", action="store_true", help="per-op fidelity table instead")
    parser.add_argument("--images", type=int, default=16, help="images per op for --fidelity")
    args = parser.parse_args(argv)
    result = fidelity(args) if args.fidelity else speed(args)
    result["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    result["torch"] = torch.__version__
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
