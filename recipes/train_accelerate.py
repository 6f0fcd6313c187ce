"""Train without a Lightning Trainer: a plain Accelerate loop with cooperative augmentation.

    python recipes/train_accelerate.py                        # 1 epoch, auto, embedded dataset
    python recipes/train_accelerate.py --mode off --epochs 3  # CPU-only baseline
    python recipes/train_accelerate.py --mode fixed --ratio 0.3 --steps-limit 20
    accelerate launch recipes/train_accelerate.py --epochs 10 # several GPUs (one shard per rank)
    torchrun --nproc_per_node 2 recipes/train_accelerate.py   # several CPU processes (gloo)

Several processes on CPU: use torchrun. ``accelerate launch --num_processes 2 --cpu`` starts
one process (Accelerate's CPU launcher), and the recipe prints the world size it got.

A small CNN learns the embedded synthetic dataset (10 shape/texture classes, generated on first
use) with RandAugment; ``FusionAccelerate`` splits each batch's augmentation between the
DataLoader workers and the device. Prints per-epoch training samples/s, validation accuracy and
the device share, then the final share. Needs ``pip install ff-lightning[accelerate]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (per process)")
    p.add_argument("--mode", default="auto", choices=("auto", "off", "gpu", "fixed"))
    p.add_argument("--ratio", type=float, default=None, help="device share for --mode fixed")
    p.add_argument("--interval", default="steps", choices=("epoch", "steps"), help="decide when")
    p.add_argument("--every-n-steps", type=int, default=20, help="steps between decisions")
    p.add_argument("--steps-limit", type=int, default=None, help="at most this many steps/epoch")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--image-size", type=int, default=96, help="crop side fed to the model")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--report-dir",
        default="outputs/train_accelerate",
        help="where fusionflow_report.json and fusionflow.png go",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
    except ImportError:
        print("error: this recipe needs Accelerate: pip install ff-lightning[accelerate]")
        sys.exit(2)
    from ff_lightning.app.meters import ThroughputMeter
    from ff_lightning.app.models import build_backbone
    from ff_lightning.errors import FFLightningError, one_line
    from ff_lightning.frontends.accelerate import FusionAccelerate
    from ff_lightning.pipeline import Pipeline
    from ff_lightning.sources.datasets import build_source

    t_start = time.perf_counter()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.is_main_process:
        # The adapter's decisions (with their reasons) go to the "ff_lightning" logger.
        logging.basicConfig(format="%(message)s")
        logging.getLogger("ff_lightning").setLevel(logging.INFO)
    set_seed(args.seed)
    accelerator.print(
        f"world size {accelerator.num_processes} ({accelerator.distributed_type}); "
        "under `accelerate launch --cpu` this is 1 process: use torchrun for several"
    )
    try:
        with accelerator.main_process_first():  # the first run generates the dataset
            train_set = build_source("synthetic", "train")
            val_set = build_source("synthetic", "val")
        pipeline = Pipeline(
            train_set,
            val_set,
            policy="randaugment",
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            seed=args.seed,
            crop_scale=(0.25, 1.0),
            val_crop_fraction=1.0,
        )
        fusion = FusionAccelerate(
            pipeline,
            mode=args.mode,
            ratio=args.ratio,
            interval=args.interval,
            every_n_steps=args.every_n_steps,
            accelerator=accelerator,
            log_fn=accelerator.log,
            report=True,
            report_dir=args.report_dir,
        )
    except FFLightningError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)

    model = build_backbone("simple_cnn", 10)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps = len(fusion.train_loader)  # already this rank's shard
    if args.steps_limit:
        steps = min(steps, args.steps_limit)
    # Not passed to accelerator.prepare: it would step num_processes times per step, which
    # suits a loader it shards itself; ours is already sharded per rank.
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps
    )
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(fusion)  # save_state/load_state keep the share

    meter = ThroughputMeter()
    val_acc = float("nan")
    for epoch in range(args.epochs):
        model.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        meter.start()
        for images, targets in fusion.train_epoch(epoch, max_steps=args.steps_limit):
            loss = F.cross_entropy(model(images), targets)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach()  # read once per epoch: no sync per step
            meter.add(images.shape[0] * accelerator.num_processes)
        meter.end_epoch()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, targets in fusion.eval_batches():
                preds = model(images).argmax(dim=1)
                preds, targets = accelerator.gather_for_metrics((preds, targets))
                correct += int((preds == targets).sum())
                total += targets.numel()
        val_acc = correct / max(total, 1)
        ep = meter.epochs[-1]
        accelerator.print(
            f"epoch {epoch}: {ep['samples_per_sec']:.1f} samples/s ({int(ep['samples'])} samples "
            f"in {ep['seconds']:.1f} s), train_loss {loss_sum.item() / max(steps, 1):.3f}, "
            f"val_acc {val_acc:.3f}, device share {fusion.ratio:.2f}"
        )
    fusion.finish()  # the end-of-fit report, on the main process
    metrics = {
        "val_acc": val_acc,
        "train_samples_per_sec": meter.samples_per_sec,
        "offload_ratio": fusion.ratio,
        "epochs": args.epochs,
        "decisions": len(fusion.history) - 1,
        "wall_seconds": time.perf_counter() - t_start,
    }
    accelerator.print(
        f"final device share {fusion.ratio:.2f} (mode {args.mode}, {metrics['decisions']} "
        f"decisions); {meter.samples_per_sec:.1f} training samples/s; val_acc {val_acc:.3f}; "
        f"wall {metrics['wall_seconds']:.1f} s"
    )
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
