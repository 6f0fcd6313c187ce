"""The multi-view loader benchmark: our multi-view pipeline against the same views written the
way DINOv2 and SimCLR write them (torchvision on PIL, per view, in a Dataset).

Two cases, each built both ways from the same numbers:

- ``dino``: 2 global views (``global_size``, scale 0.32-1) and ``n_local`` local views
  (``local_size``, scale 0.05-0.32), bicubic crops and flips, ColorJitter(0.4, 0.4, 0.2, 0.1)
  p=0.8, grayscale p=0.2, Gaussian blur (kernel 9, sigma 0.1-2) p=1.0 / 0.1 / 0.5 (first
  global, second global, local), solarize p=0.2 on the second global view, ImageNet
  normalisation: DINOv2's ``DataAugmentationDINO`` (dinov2/data/augmentations.py);
- ``simclr``: 2 views (``global_size``, scale 0.08-1, bilinear), flip, ColorJitter(0.8, 0.8,
  0.8, 0.2) p=0.8, grayscale p=0.2, Gaussian blur (kernel 23, sigma 0.1-2) p=0.5, ImageNet
  normalisation (SimCLR's, as lightly's ``SimCLRTransform`` sets it).

**Ours** is ``Pipeline(views=...)`` with torchvision v2 transforms of those settings, its
training loader iterated with every batch finished as the model would receive it (normalised
in this process, which plays the device; the device share is 0, so all augmentation runs in
the workers). **Theirs** is a ``Dataset`` that decodes a sample and runs the torchvision (v1)
transforms on the PIL image view by view, collated as DINOv2 collates (global crops stacked,
then local crops). Both read the same source, with the same worker count and batch size.
Rounds interleave ours and theirs; a round times ``batches`` batches after the first of a fresh
loader (worker start-up excluded).

**Memory**: the peak resident memory a worker process reaches while it makes ``batches``
batches, above its resident memory before its first batch, per output pixel of a batch, for
the multi-view pipeline and for the single-view pipeline of the first view's transform.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "LIGHTLY_CASES",
    "BaselineDataset",
    "ListViews",
    "baseline_augmentation",
    "lightly_transform",
    "loader_rate",
    "our_views",
    "worker_memory",
]

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CASES = ("dino", "simclr")
#: The cases whose pipeline is lightly's own object, handed to both loaders unchanged.
LIGHTLY_CASES = ("simclr_lightly", "dino_lightly")


def lightly_transform(case: str, global_size: int, local_size: int, n_local: int) -> Any:
    """lightly's ``SimCLRTransform(input_size=global_size)`` or ``DINOTransform(global_crop_size,
    local_crop_size, n_local_views)`` with lightly's defaults otherwise; lightly must be
    installed (``pip install lightly``)."""
    try:
        from lightly.transforms import DINOTransform, SimCLRTransform
    except ImportError as err:
        raise SystemExit(
            f"error: case {case!r} runs lightly's own transform: pip install lightly ({err})"
        ) from None
    if case == "simclr_lightly":
        return SimCLRTransform(input_size=global_size)
    return DINOTransform(
        global_crop_size=global_size, local_crop_size=local_size, n_local_views=n_local
    )


class ListViews:
    """A multi-view object returning a list (lightly's) as the baseline's dict of crops, the
    views grouped by size (DINO's global views, then its local ones), as lightly collates."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> dict[str, list[torch.Tensor]]:
        crops: dict[str, list[torch.Tensor]] = {}
        for view in self.transform(image):
            crops.setdefault(f"{view.shape[-1]}px", []).append(view)
        return crops


# ==================================================================== the two ways
def our_views(case: str, global_size: int, local_size: int, n_local: int) -> list[tuple]:
    """The case's view groups as torchvision v2 transforms, for ``Pipeline(views=...)``."""
    from torchvision.transforms import v2

    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(_MEAN, _STD)]
    bicubic = v2.InterpolationMode.BICUBIC
    if case == "simclr":
        view = v2.Compose(
            [
                v2.RandomResizedCrop(global_size, scale=(0.08, 1.0)),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                v2.RandomGrayscale(0.2),
                v2.RandomApply([v2.GaussianBlur(23, (0.1, 2.0))], p=0.5),
                *tail,
            ]
        )
        return [("views", view, 2)]

    def colour(blur: float, solarize: float = 0.0) -> list[Any]:
        t = [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(0.2),
            v2.RandomApply([v2.GaussianBlur(9, (0.1, 2.0))], p=blur),
        ]
        return t + ([v2.RandomSolarize(128, p=solarize)] if solarize else []) + tail

    glob = [
        v2.RandomResizedCrop(global_size, scale=(0.32, 1.0), interpolation=bicubic),
        v2.RandomHorizontalFlip(),
    ]
    local = [
        v2.RandomResizedCrop(local_size, scale=(0.05, 0.32), interpolation=bicubic),
        v2.RandomHorizontalFlip(),
    ]
    return [
        ("global_crops", v2.Compose(glob + colour(1.0)), 1),
        ("global_crops", v2.Compose(glob + colour(0.1, 0.2)), 1),
        ("local_crops", v2.Compose(local + colour(0.5)), n_local),
    ]


class _Dinov2Style:
    """DINOv2's ``DataAugmentationDINO.__call__`` with torchvision (v1) on PIL."""

    def __init__(self, global_size: int, local_size: int, n_local: int) -> None:
        from torchvision import transforms as T

        bicubic = T.InterpolationMode.BICUBIC
        self.n_local = n_local
        self.geometric_global = T.Compose(
            [
                T.RandomResizedCrop(global_size, scale=(0.32, 1.0), interpolation=bicubic),
                T.RandomHorizontalFlip(p=0.5),
            ]
        )
        self.geometric_local = T.Compose(
            [
                T.RandomResizedCrop(local_size, scale=(0.05, 0.32), interpolation=bicubic),
                T.RandomHorizontalFlip(p=0.5),
            ]
        )
        jitter = T.Compose(
            [
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
            ]
        )

        def blur(p: float) -> Any:
            return T.RandomApply([T.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)

        normalize = T.Compose([T.ToTensor(), T.Normalize(_MEAN, _STD)])
        self.global1 = T.Compose([jitter, blur(1.0), normalize])
        self.global2 = T.Compose(
            [jitter, blur(0.1), T.RandomSolarize(threshold=128, p=0.2), normalize]
        )
        self.local = T.Compose([jitter, blur(0.5), normalize])

    def __call__(self, image: Any) -> dict[str, list[torch.Tensor]]:
        g1 = self.global1(self.geometric_global(image))
        g2 = self.global2(self.geometric_global(image))
        local = [self.local(self.geometric_local(image)) for _ in range(self.n_local)]
        return {"global_crops": [g1, g2], "local_crops": local}


class _SimclrStyle:
    """SimCLR's two views with torchvision (v1) on PIL (lightly's ``SimCLRTransform``'s
    settings)."""

    def __init__(self, size: int) -> None:
        from torchvision import transforms as T

        self.view = T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.08, 1.0)),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
                T.ToTensor(),
                T.Normalize(_MEAN, _STD),
            ]
        )

    def __call__(self, image: Any) -> dict[str, list[torch.Tensor]]:
        return {"views": [self.view(image), self.view(image)]}


def baseline_augmentation(case: str, global_size: int, local_size: int, n_local: int) -> Any:
    """The case written the DINOv2 / SimCLR way (a callable on one PIL image)."""
    if case == "simclr":
        return _SimclrStyle(global_size)
    return _Dinov2Style(global_size, local_size, n_local)


class BaselineDataset(Dataset):
    """``(augmentation(image), target)`` per sample, as the SSL libraries' datasets do."""

    def __init__(self, source: Any, augmentation: Any) -> None:
        self.source, self.augmentation = source, augmentation

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[dict[str, list[torch.Tensor]], int]:
        image, target = self.source[index]
        return self.augmentation(image), int(target)


def collate_crops(samples: list[tuple[dict[str, list[torch.Tensor]], int]]) -> dict[str, Any]:
    """DINOv2's collate: per key, view ``j`` of every sample, then view ``j + 1``, stacked."""
    out: dict[str, Any] = {}
    for key in samples[0][0]:
        n = len(samples[0][0][key])
        out[key] = torch.stack([s[0][key][j] for j in range(n) for s in samples])
    out["targets"] = torch.tensor([t for _, t in samples])
    return out


# ==================================================================== timing
def loader_rate(
    make: Callable[[], Iterable[Any]], batches: int, batch_size: int, finish: Callable | None
) -> float:
    """Samples per second of a fresh loader over ``batches`` batches after its first one."""
    it = iter(make())
    first = next(it)
    if finish is not None:
        finish(first)
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        if finish is not None:
            finish(batch)
    seconds = time.perf_counter() - t0
    del it
    return batches * batch_size / seconds


def interleaved(
    runs: dict[str, Callable[[], float]], rounds: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """``rounds`` rounds of every run in turn; medians and per-round ratios to ``ours``."""
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for name, run in runs.items():
            rates[name].append(run())
        log(f"    round {r + 1}: " + "  ".join(f"{k} {v[-1]:7.1f}/s" for k, v in rates.items()))
    out: dict[str, Any] = {"samples_per_sec": rates}
    for name in runs:
        if name != "ours":
            ratios = [o / t for o, t in zip(rates["ours"], rates[name], strict=True)]
            out[f"ours_over_{name}_per_round"] = ratios
            out[f"ours_over_{name}"] = statistics.median(ratios)
    return out


# ==================================================================== memory
def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class _Measured(Dataset):
    """A worker's dataset that stamps each batch with the process's peak resident memory above
    its resident memory before the first batch (read from ``/proc/self/status``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.base: int | None = None

    def __len__(self) -> int:
        return len(self.inner)

    def __getitems__(self, key: Any) -> Any:
        if self.base is None:
            # A forked worker may start with its parent's peak: reset the peak to the current
            # resident size (Linux's clear_refs "5").
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self.base = _status("VmRSS")
        batch = self.inner.__getitems__(key)
        batch["worker_peak_bytes"] = _status("VmHWM") - self.base
        return batch


def _output_pixels(batch: dict[str, Any]) -> int:
    images = batch["images"]
    images = images if isinstance(images, list) else [images]
    return sum(int(x.numel()) for x in images)


def worker_memory(pipeline: Any, batches: int) -> dict[str, float]:
    """Peak working memory of one DataLoader worker of ``pipeline``'s training loader over
    ``batches`` batches, in bytes and per output pixel (uint8 value) of a batch."""
    base = pipeline.train_loader()
    loader = DataLoader(
        _Measured(base.dataset),
        batch_sampler=base.batch_sampler,
        collate_fn=base.collate_fn,
        num_workers=1,
        worker_init_fn=base.worker_init_fn,
        prefetch_factor=1,
    )
    peak, pixels = 0, 0
    for i, batch in enumerate(loader):
        peak = max(peak, int(batch["worker_peak_bytes"]))
        pixels = max(pixels, _output_pixels(batch))
        if i + 1 >= batches:
            break
    return {"peak_bytes": float(peak), "pixels": float(pixels), "per_pixel": peak / pixels}
