"""``.npy`` arrays already in display order, (y, x) or (z, y, x), 1 mm spacing assumed; never unpickled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io.checks import check_memory, check_pixel_type, reason
from napari_covidseg.io.volume import RawScan, display_order_scan
from napari_covidseg.units import dims, format_bytes, volume_bytes


def read_npy(path: Path) -> RawScan:
    """Read a .npy array already in display order: (y, x) or (z, y, x); 1 mm spacing is assumed.

    The header is checked first: arrays of Python objects are refused without unpickling anything, and a shape
    the file cannot hold or the memory cannot take is refused before allocating it.
    """
    shape, dtype, offset = _npy_header(path)
    if dtype.hasobject:
        raise InputError(
            f"{path}: the array holds Python objects (stored as a pickle), which are never loaded for safety; "
            "save a numeric array instead"
        )
    check_pixel_type(dtype, str(path))
    need = volume_bytes(shape, dtype.itemsize)
    size = path.stat().st_size
    if size < offset + need:
        raise InputError(
            f"{path}: the header describes a {dims(shape)} {dtype} array ({format_bytes(need)}) but the file holds "
            f"only {format_bytes(max(size - offset, 0))} of data: it is truncated (or its header is corrupt)"
        )
    check_memory(shape, str(path), what="array")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npy array ({reason(exc, path)})") from exc
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2-D slice or 3-D volume, got {data.ndim}-D shape {data.shape}")
    return display_order_scan(data, (1.0, 1.0, 1.0), str(path), None, {"format": "npy"})


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header, without reading the data."""
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = npy_format.read_array_header_2_0(fh)
            return tuple(int(s) for s in shape), np.dtype(dtype), fh.tell()
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({reason(exc, path)})") from exc
