"""Batch augmentation for 2D slices: one affine resampling per batch (rotation, flip, scale, crop) + intensity jitter.

Geometry follows the ResAttUNet paper (rotations by 90/180/270 degrees, scaling by 0.5-1.5) plus flips and random
crops. Image and mask share one sampling grid: bilinear for the image, nearest for the mask, so labels stay
integers. Padding is 0, which after windowing is air, as it is when inference pads a slice to a square.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Augmentation settings.

    Attributes:
        scale: zoom factor range (0.5 shrinks the anatomy to half size, 1.5 enlarges it).
        rotate90: random multiples of 90 degrees.
        flip: random left-right mirror.
        crop: output side in pixels (a random window of the zoomed slice); ``None`` keeps the full slice.
        contrast: multiplicative intensity jitter, ``1 ± contrast``.
        brightness: additive intensity jitter, ``± brightness`` (intensities are in [0, 1]).
        gamma: gamma jitter, exponent in ``[1 - gamma, 1 + gamma]``.
    """

    scale: tuple[float, float] = (0.5, 1.5)
    rotate90: bool = True
    flip: bool = True
    crop: int | None = None
    contrast: float = 0.1
    brightness: float = 0.05
    gamma: float = 0.2


NONE = Augment(scale=(1.0, 1.0), rotate90=False, flip=False, crop=None, contrast=0.0, brightness=0.0, gamma=0.0)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, settings: Augment = Augment()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images ``x`` (B, 1, S, S) in [0, 1] and labels ``y`` (B, S, S) int64 with the same geometry.

    Returns tensors of side ``settings.crop`` (or S). Random numbers come from ``gen`` only (reproducible).
    """
    b, _, h, w = x.shape
    out = settings.crop or h
    # theta maps output coordinates to input coordinates in [-1, 1] units: input = A @ output + t
    zoom = torch.exp(_uniform(b, *torch.log(torch.tensor(settings.scale)).tolist(), gen))  # log-uniform
    extent = (out / h) / zoom  # half-width of the sampled window in input units
    k = torch.randint(0, 4, (b,), generator=gen) if settings.rotate90 else torch.zeros(b, dtype=torch.long)
    angle = k.float() * (torch.pi / 2)
    cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
    mirror = (
        torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if settings.flip else torch.ones(b)
    )  # left-right
    # windows smaller than the slice move anywhere inside it; larger ones (zoom out) move within the padding
    room = (1 - extent).abs()
    tx, ty = (2 * torch.rand(b, generator=gen) - 1) * room, (2 * torch.rand(b, generator=gen) - 1) * room
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * extent * mirror, -sin * extent
    theta[:, 1, 0], theta[:, 1, 1] = sin * extent * mirror, cos * extent
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, 1, out, out], align_corners=False)
    xa = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ya = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    ya = ya[:, 0].round().long()
    if settings.gamma:
        g = _uniform(b, 1 - settings.gamma, 1 + settings.gamma, gen).view(b, 1, 1, 1).to(x.device)
        xa = xa.clamp_min(0) ** g
    if settings.contrast or settings.brightness:
        c = _uniform(b, 1 - settings.contrast, 1 + settings.contrast, gen).view(b, 1, 1, 1).to(x.device)
        s = _uniform(b, -settings.brightness, settings.brightness, gen).view(b, 1, 1, 1).to(x.device)
        xa = xa * c + s
    return xa.clamp(0, 1), ya
