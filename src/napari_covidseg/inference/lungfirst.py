"""Lung-first framing: find the lungs, show the network each slice cropped to them, keep lesions only there.

The MedSeg training slices are cropped tightly to the lungs: the networks have never seen a patient table, clothes,
the neck or the abdomen, and answer nonsense there (on a normal scan nearly all of the ~300 ml "lesion" the whole
slice gave lay outside the lungs). So a HU scan is segmented as:

1. lungs: the classical mask of :func:`~napari_covidseg.analysis.lungmask.lung_mask` (1 right, 2 left);
2. lung region: per slice and lung, the mask closed with a ``FILL_MM`` disk and its holes filled (dense
   consolidation and vessels inside the lung, bites of peripheral consolidation), then grown by ``MARGIN_MM``
   (consolidation and effusion along the chest wall and the diaphragm, which no HU threshold tells from the wall);
   each region voxel belongs to the nearer lung;
3. crop box per slice: the region's bounding box plus ``CROP_MARGIN`` of its size on each side (the training slices
   show a sliver of chest wall), at least ``MIN_BOX_FRACTION`` of the volume's lung box so that an apex or base
   slice is not blown up far beyond the training scale; slices with less than ``MIN_SLICE_LUNG_MM2`` of lung get
   no box and no lesions;
4. after the network: lesion pixels inside the region are kept, and so is every in-plane lesion component that
   touches the region (a consolidated lobe the lung mask lost is one component with the lesion inside the lung),
   whose outside pixels then join the region; everything else is dropped.

Steps 1-2 run on a coarse in-plane grid (``lung_mask``'s ``GRID_MM``, then ``REGION_GRID_MM`` for the region's
morphology) so that a 300-slice 512x512 scan takes a few seconds, not the time of the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_covidseg.analysis.lungmask import LEFT_LUNG, RIGHT_LUNG, lung_mask
from napari_covidseg.errors import InputError
from napari_covidseg.io.volume import CTVolume

FILL_MM = 10.0  # in-plane closing radius per lung and slice
MARGIN_MM = 10.0  # the region reaches this far beyond the filled lungs
REGION_GRID_MM = 3.0  # the region's morphology runs on blocks of about this size (it is a tolerance band)
CROP_MARGIN = 0.05  # crop box: region box + this fraction of its height/width on each side
MIN_BOX_FRACTION = 0.5  # crop box at least this fraction of the volume's lung box (height and width)
MIN_SLICE_LUNG_MM2 = 100.0  # a slice with less lung than this (1 cm^2) has no lung: no box, no lesions
_PLANE = np.zeros((3, 3, 3), dtype=bool)
_PLANE[1] = ndimage.generate_binary_structure(2, 1)
_FAR = 1.0e6  # "sampling" across slices in 3-D distance transforms: distances stay within each slice


@dataclass
class LungRegion:
    """Where a HU scan's lungs are, for lung-first segmentation (all arrays (z, y, x) on the CT grid).

    Attributes:
        lungs: uint8 classical lung mask, 0 outside, 1 right lung (image left), 2 left lung.
        region: uint8, the lungs filled and grown by ``MARGIN_MM``, each voxel 1/2 by the nearer lung: lesions are
            kept only here.
        boxes: per slice the in-plane crop ``(ys, xs)`` shown to the network, or None (no lung in that slice).
        seconds: wall time of finding them.
        notes: plain sentences (e.g. no lungs found).
    """

    lungs: np.ndarray
    region: np.ndarray
    boxes: list[tuple[slice, slice] | None]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def copy(self) -> LungRegion:
        """A copy whose region may be grown (segmentation adds kept lesions to it) without touching this one."""
        return LungRegion(self.lungs, self.region.copy(), list(self.boxes), self.seconds, list(self.notes))

    @property
    def slices_with_lung(self) -> int:
        return sum(b is not None for b in self.boxes)


def find_lungs(volume: CTVolume) -> LungRegion:
    """Lung mask, lung region and per-slice crop boxes of a HU volume (``InputError`` for display images)."""
    start = time.perf_counter()
    if volume.intensity != "HU":
        raise InputError(f"finding the lungs needs a CT in Hounsfield units; {volume.name!r} holds display values")
    try:
        lungs = lung_mask(volume)
    except InputError:  # HU, but no voxel as dark as air: nothing lung-like (a phantom without air)
        lungs = np.zeros(volume.shape, dtype=np.uint8)
    region, factor = _region(lungs, volume.spacing)
    boxes = _boxes(lungs, region, factor, volume.spacing)
    full = _upsample(region, factor, lungs.shape)
    notes = []
    if not any(b is not None for b in boxes):
        notes.append(
            "no lungs found in this scan (no air-filled lung in any slice: not a chest CT, an abdomen or neck "
            "series, or a phantom without air), so no lesions are reported"
        )
    return LungRegion(lungs, full, boxes, time.perf_counter() - start, notes)


def keep_in_region(labels: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lesion labels (y, x) kept inside ``region`` (0 outside, 1/2 by lung), and the region grown by what was kept.

    Kept: every lesion pixel in the region and every 8-connected lesion component that touches it (a dense lesion
    the lung mask lost continues the lesion inside the lung); such outside pixels join the region, each on the side
    of the nearest region pixel, so that "inside the lungs" holds every kept lesion. Returns new uint8 arrays.
    """
    out = labels.astype(np.uint8, copy=True)
    grown = region.astype(np.uint8, copy=True)
    lesion = out > 0
    if not lesion.any():
        return out, grown
    inside = grown > 0
    comps, n = ndimage.label(lesion, structure=np.ones((3, 3), dtype=bool))
    touching = np.zeros(n + 1, dtype=bool)
    touching[np.unique(comps[lesion & inside])] = True
    touching[0] = False
    keep = touching[comps]
    out[~keep] = 0
    extra = keep & ~inside
    if extra.any():
        idx = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
        grown[extra] = grown[idx[0][extra], idx[1][extra]]
    return out, grown


def _region(lungs: np.ndarray, spacing) -> tuple[np.ndarray, int]:
    """The lung region on a grid coarsened ``factor`` times in-plane (any lung in a block counts)."""
    factor = max(1, int(REGION_GRID_MM // min(spacing[1], spacing[2])))
    coarse = _block_max(lungs, factor)
    cs = (_FAR, spacing[1] * factor, spacing[2] * factor)
    filled = np.zeros(coarse.shape, dtype=np.uint8)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        mask = coarse == side
        if not mask.any():
            continue
        box = _bbox(mask, pad=int(np.ceil(FILL_MM / min(cs[1:]))) + 2)
        sub = mask[box]
        grown = ndimage.distance_transform_edt(~sub, sampling=cs) <= FILL_MM
        closed = ~(ndimage.distance_transform_edt(grown, sampling=cs) <= FILL_MM)
        closed = ndimage.binary_fill_holes(closed | sub, structure=_PLANE)
        target = filled[box]
        target[closed & (target == 0)] = side
    if not filled.any():
        return filled, factor
    dist, idx = ndimage.distance_transform_edt(filled == 0, sampling=cs, return_indices=True)
    region = filled[tuple(idx)]
    region[dist > MARGIN_MM] = 0
    return region, factor


def _boxes(lungs: np.ndarray, region: np.ndarray, factor: int, spacing) -> list[tuple[slice, slice] | None]:
    """Per-slice crop boxes on the CT grid (see the module docstring, step 3)."""
    z, h, w = lungs.shape
    pixel_mm2 = float(spacing[1] * spacing[2])
    lung_px = np.count_nonzero(lungs.reshape(z, -1), axis=1)
    rows, cols = region.any(axis=2), region.any(axis=1)  # (z, coarse y), (z, coarse x)
    present = (lung_px * pixel_mm2 >= MIN_SLICE_LUNG_MM2) & rows.any(axis=1)
    if not present.any():
        return [None] * z
    all_rows, all_cols = rows[present].any(axis=0), cols[present].any(axis=0)
    min_h = MIN_BOX_FRACTION * _extent(all_rows) * factor
    min_w = MIN_BOX_FRACTION * _extent(all_cols) * factor
    boxes: list[tuple[slice, slice] | None] = []
    for k in range(z):
        if not present[k]:
            boxes.append(None)
            continue
        ys = _span(rows[k], factor, h, min_h)
        xs = _span(cols[k], factor, w, min_w)
        boxes.append((ys, xs))
    return boxes


def _extent(flags: np.ndarray) -> int:
    idx = np.flatnonzero(flags)
    return int(idx[-1] - idx[0] + 1)


def _span(flags: np.ndarray, factor: int, size: int, min_len: float) -> slice:
    """Crop interval on the CT grid from a coarse occupancy row: margin added, widened to ``min_len``, clipped."""
    idx = np.flatnonzero(flags)
    lo, hi = float(idx[0] * factor), float(min((idx[-1] + 1) * factor, size))
    pad = CROP_MARGIN * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_len:
        centre = (lo + hi) / 2.0
        lo, hi = centre - min_len / 2.0, centre + min_len / 2.0
    lo_i, hi_i = max(0, int(np.floor(lo))), min(size, int(np.ceil(hi)))
    return slice(lo_i, max(hi_i, lo_i + 1))


def _block_max(a: np.ndarray, factor: int) -> np.ndarray:
    """Largest value over factor x factor in-plane blocks (edges padded with zeros)."""
    if factor == 1:
        return a.copy()
    z, y, x = a.shape
    py, px = (-y) % factor, (-x) % factor
    if py or px:
        a = np.pad(a, ((0, 0), (0, py), (0, px)))
    return a.reshape(z, a.shape[1] // factor, factor, a.shape[2] // factor, factor).max(axis=(2, 4))


def _upsample(a: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    if factor > 1:
        a = np.repeat(np.repeat(a, factor, axis=1), factor, axis=2)
    return np.ascontiguousarray(a[: shape[0], : shape[1], : shape[2]])


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown in-plane by ``pad`` voxels, clipped to the array."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    ys = np.flatnonzero(mask.any(axis=(0, 2)))
    xs = np.flatnonzero(mask.any(axis=(0, 1)))
    h, w = mask.shape[1:]
    return (
        slice(zs[0], zs[-1] + 1),
        slice(max(0, ys[0] - pad), min(h, ys[-1] + 1 + pad)),
        slice(max(0, xs[0] - pad), min(w, xs[-1] + 1 + pad)),
    )
