"""Reorientation between on-disk voxel order and the display orientation, and back.

Display orientation: array axes (z, y, x) point to patient (Superior, Posterior, Left) — axial slices,
anterior up, patient right on image left. A NIfTI/DICOM array is reoriented with a nibabel orientation transform
(axis permutation + flips only, never resampling), which is remembered and inverted on save.
"""

from __future__ import annotations

import numpy as np
from nibabel import orientations as nio

DISPLAY_AXCODES = ("S", "P", "L")


def to_display(disk_array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a disk-order array to display order.

    Returns the display array and the orientation transform (``ornt``) that produced it.
    """
    ornt = display_ornt(affine)
    return np.ascontiguousarray(nio.apply_orientation(disk_array, ornt)), ornt


def display_ornt(affine: np.ndarray) -> np.ndarray:
    """The orientation transform (rows: disk axis -> (display axis, flip)) that :func:`to_display` applies."""
    return nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(DISPLAY_AXCODES))


def to_disk(display_array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo :func:`to_display`: bring a display-order array back to the on-disk voxel order."""
    return np.ascontiguousarray(nio.apply_orientation(display_array, invert_ornt(ornt)))


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt`` (rows: input axis -> (output axis, flip))."""
    ornt = np.asarray(ornt)
    inverse = np.zeros_like(ornt)
    for in_axis, (out_axis, flip) in enumerate(ornt):
        inverse[int(out_axis)] = (in_axis, flip)
    return inverse


def display_affine(disk_affine: np.ndarray, ornt: np.ndarray, disk_shape: tuple[int, ...]) -> np.ndarray:
    """Voxel-to-world matrix of the display array."""
    return np.asarray(disk_affine) @ nio.inv_ornt_aff(np.asarray(ornt), disk_shape)


def display_spacing(disk_affine: np.ndarray, ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the display axes (z, y, x)."""
    zooms = np.sqrt((np.asarray(disk_affine)[:3, :3] ** 2).sum(axis=0))
    out = [0.0, 0.0, 0.0]
    for disk_axis, (display_axis, _flip) in enumerate(np.asarray(ornt)):
        out[int(display_axis)] = float(zooms[disk_axis])
    return out[0], out[1], out[2]
