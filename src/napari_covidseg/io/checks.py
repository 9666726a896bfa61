"""The one validation pass every reader's result goes through (:func:`validate_scan`), and header-time checks.

Readers (``nifti``, ``dicom``, ``images``, ``npy``) check what their headers alone can tell before reading any
voxels (pixel type, size against the file and the memory); :func:`napari_covidseg.io.load_ct` then passes the
array and geometry they return through :func:`validate_scan` exactly once: one finite greyscale float32 volume,
slices of at least ``MIN_SLICE_SIDE`` pixels, a voxel size a CT can have.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.memory import check_fits
from napari_covidseg.units import dims, format_bytes, volume_bytes

__all__ = [
    "MIN_SLICE_SIDE",
    "SPACING_RANGE_MM",
    "check_memory",
    "check_pixel_type",
    "check_slice_size",
    "check_spacing",
    "dims",
    "format_bytes",
    "guess_intensity",
    "reason",
    "validate_scan",
    "volume_bytes",
]

MIN_SLICE_SIDE = 8  # pixels; anything narrower is not a CT slice (a 1x1 image, a single line)
# voxel sizes a CT (or a CT slice saved as an image) can have; anything else is a broken header, and would turn
# into absurd volumes (1e30 mm voxels: 1e90 ml)
SPACING_RANGE_MM = (0.01, 100.0)


def validate_scan(disk: np.ndarray, affine: np.ndarray, source: str) -> np.ndarray:
    """The disk-order array as a finite float32 3-D volume with a plausible voxel size, or :class:`InputError`.

    2-D arrays become one-slice volumes; trailing axes of length 1 beyond the third are dropped (a 4-D NIfTI with
    one volume); any other 4-D or higher array is refused.
    """
    data = np.asarray(disk)
    check_pixel_type(data.dtype, source)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise InputError(f"{source}: expected a 2-D slice or 3-D volume, got {data.ndim}-D shape {data.shape}")
    if min(data.shape) < 1:
        raise InputError(f"{source}: empty image of shape {data.shape} (no voxels)")
    check_spacing(affine, source)
    out = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(out.size - np.count_nonzero(finite))
        raise InputError(f"{source}: contains {bad} NaN or infinite value{'s' if bad > 1 else ''}; a CT must be finite")
    return out


def check_spacing(affine: np.ndarray, source: str) -> None:
    zooms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    lo, hi = SPACING_RANGE_MM
    if not np.isfinite(zooms).all() or (zooms < lo).any() or (zooms > hi).any():
        shown = " x ".join(f"{z:.3g}" for z in zooms)
        raise InputError(
            f"{source}: voxel size {shown} mm is not plausible for a CT (each axis should be {lo:g}-{hi:g} mm); "
            "the header's spacing is wrong — fix it (e.g. pixdim or the sform) and try again"
        )


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


def check_memory(shape: Sequence[int], source: str, what: str = "volume") -> None:
    """Refuse, before reading any pixels, a ``shape`` whose float32 copy would not fit in the available memory."""
    check_fits(
        volume_bytes(shape, 4),
        f"{source}: reading the {dims(shape)} {what}",
        hint="close other programs or crop/downsample the scan; if the scan is not really this large, its header "
        "is corrupt",
    )


def guess_intensity(array: np.ndarray) -> str:
    """``"display"`` for 8-bit-range images (no negative values), else ``"HU"``."""
    return "display" if float(array.min()) >= 0.0 and float(array.max()) <= 255.0 else "HU"


def reason(exc: BaseException, path: Path) -> str:
    """A library exception (raised reading ``path``) as a short reason, without its class name or the path."""
    text = str(exc).replace(f'"{path}"', "the file").replace(str(path), "the file").strip()
    if isinstance(exc, EOFError) or "ended before the end-of-stream" in text:
        return "the file is truncated: the compressed data ends early"
    if isinstance(exc, zlib.error) or "CRC check failed" in text or "invalid" in text and "decompress" in text:
        return f"the compressed data is corrupt: {text}"
    if "not a gzip file" in text:
        return "the name ends in .gz but the content is not gzip-compressed"
    if "Cannot work out file type" in text:
        return "no NIfTI header found: another kind of file, or a damaged or truncated one"
    expected = re.search(r"Expected (\d+) bytes, got (\d+) bytes", text)
    if expected:
        want, got = (int(v) for v in expected.groups())
        return f"the file is truncated: {format_bytes(want)} of voxel data expected, {format_bytes(got)} found"
    text = " ".join(text.split())  # one line
    return text or "unknown problem"
