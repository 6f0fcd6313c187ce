"""Multi-view loaders, ours against the same views written the DINOv2 / SimCLR way.

For each case (``--case dino``: 2 x ``--global-size`` + ``--n-local`` x ``--local-size`` with
DINOv2's photometric settings; ``--case simclr``: 2 x ``--global-size`` with SimCLR's), the
loader alone (no model) with ``--workers`` workers and batch ``--batch-size`` on the embedded
synthetic images (``--source-size`` px JPEGs), in ``--rounds`` interleaved rounds of
``--batches`` batches each:

- ``ours``: ``Pipeline(views=...)``'s training loader, every batch finished (normalised) in this
  process, device share ``--ratio`` (default 0: all augmentation in the workers; above 0 this
  process augments that share, as a device would);
- ``torchvision``: a Dataset running torchvision's transforms on PIL view by view (DINOv2's
  ``DataAugmentationDINO``, SimCLR's two views), DINOv2's collate.

``--case simclr_lightly`` / ``dino_lightly`` (run by ``all`` when lightly is installed) hand
lightly's own ``SimCLRTransform`` / ``DINOTransform`` (lightly's defaults, the sizes above) to
both: ``ours`` is ``Pipeline(views=<the lightly object>)``, ``lightly`` a Dataset calling the
object per sample, as lightly's datasets do.

``--memory`` also measures the peak working memory of one worker per output pixel, for the
multi-view pipeline and the single-view pipeline of its first view. The report is printed and
written as JSON (``--out``, default ``benchmark_views.json`` in the working directory); the
main process runs with one torch thread.

Examples::

    python recipes/benchmark_views.py                        # short: both cases, 3 rounds
    python recipes/benchmark_views.py --case dino --rounds 5 --batches 6 --memory
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ff_lightning.app.bench.views import (
    CASES,
    LIGHTLY_CASES,
    BaselineDataset,
    ListViews,
    baseline_augmentation,
    collate_crops,
    interleaved,
    lightly_transform,
    loader_rate,
    our_views,
    worker_memory,
)
from ff_lightning.pipeline import Pipeline
from ff_lightning.pipeline.views import parse_views
from ff_lightning.sources import build_source


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=(*CASES, *LIGHTLY_CASES, "all"), default="all")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--batches", type=int, default=4, help="timed batches per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of both loaders")
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--n-local", type=int, default=8, help="local views (dino)")
    p.add_argument("--source-size", type=int, default=224, help="side of the synthetic JPEGs")
    p.add_argument("--train-per-class", type=int, default=500, help="synthetic images per class")
    p.add_argument("--val-per-class", type=int, default=100, help="(generated with them)")
    p.add_argument("--ratio", type=float, default=0.0, help="ours: device share (this process)")
    p.add_argument("--memory", action="store_true", help="also measure a worker's peak memory")
    p.add_argument("--out", type=Path, default=Path("benchmark_views.json"))
    return p.parse_args(argv)


def _case(case: str, args: argparse.Namespace, source: Any) -> dict[str, Any]:
    sizes = (args.global_size, args.local_size, args.n_local)
    if case in LIGHTLY_CASES:
        views: Any = lightly_transform(case, *sizes)
        baseline, augmentation = "lightly", ListViews(views)
    else:
        views = our_views(case, *sizes)
        baseline, augmentation = "torchvision", baseline_augmentation(case, *sizes)
    pipe = Pipeline(
        source,
        views=views,
        batch_size=args.batch_size,
        num_workers=args.workers,
        persistent_workers=False,
        seed=0,
        ratio=args.ratio,
    )
    theirs = BaselineDataset(source, augmentation)

    def ours() -> float:
        return loader_rate(
            pipe.train_loader, args.batches, args.batch_size, lambda b: pipe.transfer(b, "cpu")
        )

    def baseline_rate() -> float:
        def make() -> DataLoader:
            return DataLoader(
                theirs,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                collate_fn=collate_crops,
            )

        return loader_rate(make, args.batches, args.batch_size, None)

    print(f"  {case}: {pipe.describe()}", flush=True)
    result = interleaved({"ours": ours, baseline: baseline_rate}, args.rounds)
    ratio = result[f"ours_over_{baseline}"]
    print(f"  {case}: ours / {baseline} = {ratio:.2f}x", flush=True)
    if args.memory:
        single = Pipeline(
            source,
            transform=parse_views(views).groups[0].transform,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device_decode=False,
            seed=0,
        )
        multi = worker_memory(pipe, args.batches)
        one = worker_memory(single, args.batches)
        result["memory"] = {
            "multi_view": multi,
            "single_view": one,
            "per_pixel_ratio": multi["per_pixel"] / one["per_pixel"],
        }
        print(
            f"  {case}: worker peak {multi['peak_bytes'] / 2**20:.1f} MiB for "
            f"{multi['pixels'] / 1e6:.2f} M output values ({multi['per_pixel']:.2f} B each); "
            f"single view {one['peak_bytes'] / 2**20:.1f} MiB for {one['pixels'] / 1e6:.2f} M "
            f"({one['per_pixel']:.2f} B each): {result['memory']['per_pixel_ratio']:.2f}x",
            flush=True,
        )
    return result


def _has_lightly() -> bool:
    try:
        import lightly.transforms  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    torch.set_num_threads(1)  # the main process: one thread (the workers are single-threaded)
    source = build_source(
        "synthetic",
        "train",
        image_size=args.source_size,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
    )
    report: dict[str, Any] = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "cases": {},
    }
    cases: tuple[str, ...] = (args.case,)
    if args.case == "all":
        cases = CASES + (LIGHTLY_CASES if _has_lightly() else ())
    for case in cases:
        report["cases"][case] = _case(case, args, source)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"report: {args.out}")
    return report


if __name__ == "__main__":
    main()
