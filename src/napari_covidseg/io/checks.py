"""Checks shared by every reader: the array must be a finite greyscale image or volume."""

from __future__ import annotations

import numpy as np

from napari_covidseg.errors import InputError


def as_greyscale_volume(data: np.ndarray, source: str) -> np.ndarray:
    """Return ``data`` as a finite float32 3-D array, or raise :class:`InputError` saying what is wrong.

    2-D arrays become one-slice volumes; 4-D arrays are accepted only with a single volume in the last axis.
    """
    if data.dtype.names is not None or data.dtype.kind not in "biuf":
        raise InputError(f"{source}: pixel type {data.dtype} is not a greyscale CT (RGB or complex data?)")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise InputError(f"{source}: expected a 2-D slice or 3-D volume, got {data.ndim}-D shape {data.shape}")
    if min(data.shape) < 1:
        raise InputError(f"{source}: empty image of shape {data.shape}")
    out = np.asarray(data, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{source}: contains NaN or infinite values")
    return out


def guess_intensity(array: np.ndarray) -> str:
    """``"display"`` for 8-bit-range images (no negative values), else ``"HU"``."""
    return "display" if float(array.min()) >= 0.0 and float(array.max()) <= 255.0 else "HU"
