"""Checks shared by every reader: the array must be a finite greyscale image or volume that fits in memory."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_covidseg.errors import InputError

MIN_SLICE_SIDE = 8  # pixels; anything narrower is not a CT slice (a 1x1 image, a single line)


def as_greyscale_volume(data: np.ndarray, source: str) -> np.ndarray:
    """Return ``data`` as a finite float32 3-D array, or raise :class:`InputError` saying what is wrong.

    2-D arrays become one-slice volumes; trailing axes of length 1 beyond the third are dropped (a 4-D NIfTI with
    one volume), any other 4-D or higher array is refused.
    """
    check_pixel_type(data.dtype, source)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise InputError(f"{source}: expected a 2-D slice or 3-D volume, got {data.ndim}-D shape {data.shape}")
    if min(data.shape) < 1:
        raise InputError(f"{source}: empty image of shape {data.shape} (no voxels)")
    out = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(out.size - np.count_nonzero(finite))
        raise InputError(f"{source}: contains {bad} NaN or infinite value{'s' if bad > 1 else ''}; a CT must be finite")
    return out


def check_pixel_type(dtype: np.dtype, source: str) -> None:
    """Refuse colour, complex, text and object pixel types with a message that says which."""
    dtype = np.dtype(dtype)
    if dtype.names is not None:
        kind = "colour (RGB/RGBA)" if set(dtype.names) <= set("RGBA") else f"structured ({', '.join(dtype.names)})"
        raise InputError(f"{source}: holds {kind} voxels, not a greyscale CT")
    if dtype.kind == "c":
        raise InputError(f"{source}: holds complex numbers ({dtype}), not a greyscale CT")
    if dtype.kind not in "biuf":
        raise InputError(f"{source}: pixel type {dtype} is not a number, so this is not a greyscale CT")


def check_slice_size(shape_zyx: Sequence[int], source: str) -> None:
    """Refuse volumes whose slices (y, x) are narrower than :data:`MIN_SLICE_SIDE` pixels."""
    _, h, w = shape_zyx
    if min(h, w) < MIN_SLICE_SIDE:
        raise InputError(
            f"{source}: slices of {h}x{w} pixels are too small for a CT "
            f"(need at least {MIN_SLICE_SIDE}x{MIN_SLICE_SIDE})"
        )


def dims(shape: Sequence[int]) -> str:
    """``(512, 512, 80)`` -> ``"512x512x80"``."""
    return "x".join(str(int(s)) for s in shape)


def volume_bytes(shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes of an array of ``shape`` (Python ints: no overflow for absurd header dimensions)."""
    return math.prod(int(s) for s in shape) * int(itemsize)


def format_bytes(n: int | float) -> str:
    """Human-readable size: GB with one decimal from 0.1 GB up, MB, kB or bytes below, TB for the absurd."""
    n = float(n)
    gb = n / 1024**3
    if gb >= 1024:
        return f"{gb / 1024:,.1f} TB"
    if gb >= 0.1:
        return f"{gb:.1f} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:.0f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} kB"
    return f"{max(int(n), 0)} bytes"


def check_memory(shape: Sequence[int], source: str, what: str = "volume") -> None:
    """Refuse, before reading any pixels, a ``shape`` whose float32 copy would not fit in the available memory."""
    from napari_covidseg.memory import check_fits  # lazy: memory imports io.checks

    check_fits(
        volume_bytes(shape, 4),
        f"{source}: reading the {dims(shape)} {what}",
        hint="close other programs or crop/downsample the scan; if the scan is not really this large, its header "
        "is corrupt",
    )


def guess_intensity(array: np.ndarray) -> str:
    """``"display"`` for 8-bit-range images (no negative values), else ``"HU"``."""
    return "display" if float(array.min()) >= 0.0 and float(array.max()) <= 255.0 else "HU"
