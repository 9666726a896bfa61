"""Preparing CT slices for a network and mapping its output back onto the CT grid.

The same functions serve inference and training, so a model always sees its input prepared one way:
intensity window -> [0, 1]; crop to the body; pad to a square (aspect ratio kept); resize to the model input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_covidseg.constants import BODY_THRESHOLD_HU
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.models.card import ModelCard

BODY_MARGIN_PX = 8
CHUNK = 32  # slices per chunk when scanning a whole volume, to keep memory bounded


def normalise(array: np.ndarray, intensity: str, card: ModelCard) -> np.ndarray:
    """Map HU (or 8-bit display values) through the card's window to float32 in [0, 1]."""
    lo, hi = card.intensity["hu_window"] if intensity == "HU" else card.intensity["display_window"]
    out = (np.asarray(array, dtype=np.float32) - lo) / float(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def body_box(array: np.ndarray, intensity: str) -> tuple[slice, slice]:
    """In-plane (y, x) bounding box of the body over all slices, with a margin.

    HU volumes: the largest connected region above ``BODY_THRESHOLD_HU`` in the slice-wise maximum projection
    (which drops the table and air). Display images are already cropped, so the whole slice is kept.
    """
    z, h, w = array.shape
    full = (slice(0, h), slice(0, w))
    if intensity != "HU":
        return full
    projection = np.zeros((h, w), dtype=bool)
    for z0 in range(0, z, CHUNK):
        projection |= (array[z0 : z0 + CHUNK] > BODY_THRESHOLD_HU).any(axis=0)
    labels, n = ndimage.label(projection)
    if n == 0:
        return full
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    if sizes.max() < 0.01 * h * w:
        return full
    ys, xs = np.nonzero(largest.any(axis=1))[0], np.nonzero(largest.any(axis=0))[0]
    y0, y1 = max(0, ys[0] - BODY_MARGIN_PX), min(h, ys[-1] + 1 + BODY_MARGIN_PX)
    x0, x1 = max(0, xs[0] - BODY_MARGIN_PX), min(w, xs[-1] + 1 + BODY_MARGIN_PX)
    return slice(y0, y1), slice(x0, x1)


@dataclass(frozen=True)
class SquareFit:
    """How a (h, w) crop was padded to a square and resized to (size_h, size_w); inverted by :func:`unfit`."""

    h: int
    w: int
    pad_top: int
    pad_left: int
    side: int


def fit(batch: torch.Tensor, size: tuple[int, int], labels: bool = False) -> tuple[torch.Tensor, SquareFit]:
    """Pad (B, C, h, w) to a centred square with zeros (the window floor: air) and resize to ``size``.

    ``labels=True`` resizes with nearest neighbour (for masks) instead of antialiased bilinear.
    """
    h, w = batch.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    padded = F.pad(batch, (left, side - w - left, top, side - h - top))
    if (side, side) != tuple(size):
        if labels:
            padded = F.interpolate(padded.float(), size=tuple(size), mode="nearest-exact").to(batch.dtype)
        else:
            padded = F.interpolate(
                padded, size=tuple(size), mode="bilinear", align_corners=False, antialias=side > size[0]
            )
    return padded, SquareFit(h, w, top, left, side)


def prepare_slices(volume: CTVolume, card: ModelCard, labels: np.ndarray | None = None):
    """All slices of ``volume`` as the network sees them: (Z, 1, H, W) float in [0, 1], and labels (Z, H, W).

    Used by training so that training input is prepared exactly as :func:`iter_segment` prepares it.
    """
    return prepare_array(volume.array, volume.intensity, card, labels, spacing=volume.spacing)


def prepare_array(
    array: np.ndarray,
    intensity: str,
    card: ModelCard,
    labels: np.ndarray | None = None,
    spacing: tuple[float, float, float] | None = None,
):
    """:func:`prepare_slices` for a bare (z, y, x) array with its intensity convention ("HU" or "display").

    HU slices are framed lung-first as :func:`~napari_covidseg.inference.segment.iter_segment` frames them by
    default (each slice cropped to its lungs, :func:`~napari_covidseg.inference.lungfirst.find_lungs`; slices
    without lung keep the body box), so corrections saved from full-field scans train the network on the framing
    it is used with. Display images (already lung-cropped 8-bit slices) keep the whole slice.
    """
    ys, xs = body_box(array, intensity)
    boxes = [(ys, xs)] * array.shape[0]
    if intensity == "HU" and spacing is not None:
        from napari_covidseg.errors import InputError
        from napari_covidseg.inference.lungfirst import find_lungs

        try:
            found = find_lungs(CTVolume(np.asarray(array, dtype=np.float32), tuple(spacing), np.eye(4), "HU"))
        except InputError:  # no air at all in these slices: no lungs to frame by
            found = None
        if found is not None:
            boxes = [box if box is not None else (ys, xs) for box in found.boxes]
    size = tuple(card.input_size)
    xs_out, ys_out = [], []
    for group in _same_box_runs(boxes):
        (by, bx), z0, z1 = boxes[group[0]], group[0], group[-1] + 1
        x, _ = fit(torch.from_numpy(normalise(array[z0:z1, by, bx], intensity, card))[:, None], size)
        xs_out.append(x)
        if labels is not None:
            lab = torch.from_numpy(np.ascontiguousarray(labels[z0:z1, by, bx]).astype(np.int64))[:, None]
            ys_out.append(fit(lab, size, labels=True)[0][:, 0])
    return torch.cat(xs_out), (torch.cat(ys_out) if labels is not None else None)


def _same_box_runs(boxes: list[tuple[slice, slice]]) -> list[list[int]]:
    """Consecutive slice indices grouped where they share one crop box (one resize per group)."""
    runs: list[list[int]] = []
    for k, box in enumerate(boxes):
        if runs and boxes[runs[-1][-1]] == box:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def unfit(output: torch.Tensor, geom: SquareFit) -> torch.Tensor:
    """Undo :func:`fit` on network output (B, K, H, W): resize to the square, then cut the padding away."""
    if output.shape[-1] != geom.side or output.shape[-2] != geom.side:
        output = F.interpolate(output, size=(geom.side, geom.side), mode="bilinear", align_corners=False)
    return output[..., geom.pad_top : geom.pad_top + geom.h, geom.pad_left : geom.pad_left + geom.w]
