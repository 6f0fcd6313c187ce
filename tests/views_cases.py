"""Multi-view cases the view tests share: a small dataset, DINO-style view transforms at test
sizes, and stand-ins for the multi-view objects users bring (lightly is not installed here;
DINOv2 is not a package): each has the attributes and the ``__call__`` of the real one."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

GLOBAL, LOCAL = 32, 16
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def source(n: int = 20, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """uint8 ``[3, H, W]`` images of a few sizes, three classes."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 256, (3, 56 + i % 5, 64), dtype=torch.uint8, generator=g), i % 3)
        for i in range(n)
    ]


def normalize() -> list[Any]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def geometric(size: int, scale: tuple[float, float]) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(size, scale=scale), v2.RandomHorizontalFlip()])


def photometric(blur_p: float, solarize_p: float = 0.0) -> v2.Compose:
    """DINOv2's colour part: jitter p=0.8, grayscale p=0.2, blur with ``blur_p``, solarize."""
    t: list[Any] = [
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
        v2.RandomApply([v2.GaussianBlur(9, (0.1, 2.0))], p=blur_p),
    ]
    if solarize_p:
        t.append(v2.RandomSolarize(128, p=solarize_p))
    return v2.Compose([*t, *normalize()])


def global_view(blur_p: float = 1.0, solarize_p: float = 0.0) -> v2.Compose:
    return v2.Compose([geometric(GLOBAL, (0.32, 1.0)), photometric(blur_p, solarize_p)])


def local_view() -> v2.Compose:
    return v2.Compose([geometric(LOCAL, (0.05, 0.32)), photometric(0.5)])


def dino_groups(n_local: int = 3) -> list[tuple[Any, ...]]:
    """DINO's views as named groups: two global views (blur 1.0; blur 0.1 + solarize 0.2) and
    ``n_local`` local ones."""
    return [
        ("global_crops", global_view(1.0), 1),
        ("global_crops", global_view(0.1, 0.2), 1),
        ("local_crops", local_view(), n_local),
    ]


class MultiViewTransform:
    """lightly's ``MultiViewTransform``: ``transforms`` applied to one image, a list out."""

    def __init__(self, transforms: list[Any]) -> None:
        self.transforms = transforms

    def __call__(self, image: Any) -> list[Any]:
        return [t(image) for t in self.transforms]


class DINOTransform(MultiViewTransform):
    """lightly's ``DINOTransform``: two global views, then ``n_local`` of one local transform."""

    def __init__(self, n_local: int = 3) -> None:
        local = local_view()
        super().__init__([global_view(1.0), global_view(0.1, 0.2), *[local] * n_local])


class DataAugmentationDINO:
    """DINOv2's ``DataAugmentationDINO`` (dinov2/data/augmentations.py): its parts and its dict
    of crops."""

    def __init__(self, local_crops_number: int = 3) -> None:
        self.local_crops_number = local_crops_number
        self.geometric_augmentation_global = geometric(GLOBAL, (0.32, 1.0))
        self.geometric_augmentation_local = geometric(LOCAL, (0.05, 0.32))
        self.global_transfo1 = photometric(1.0)
        self.global_transfo2 = photometric(0.1, 0.2)
        self.local_transfo = photometric(0.5)

    def __call__(self, image: Any) -> dict[str, Any]:
        g1 = self.global_transfo1(self.geometric_augmentation_global(image))
        g2 = self.global_transfo2(self.geometric_augmentation_global(image))
        local = [
            self.local_transfo(self.geometric_augmentation_local(image))
            for _ in range(self.local_crops_number)
        ]
        return {
            "global_crops": [g1, g2],
            "global_crops_teacher": [g1, g2],
            "local_crops": local,
            "offsets": (),
        }
