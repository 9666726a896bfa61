"""NIfTI (.nii, .nii.gz) reader: the voxels in on-disk order and their voxel-to-world matrix (a :class:`RawScan`)."""

from __future__ import annotations

import gzip
import logging
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io.checks import check_memory, check_pixel_type, check_spacing, reason
from napari_covidseg.io.volume import RawScan
from napari_covidseg.units import dims, format_bytes, volume_bytes

# NIfTI intent codes of vector and colour data (nifti1.h)
NIFTI_INTENT_VECTOR, NIFTI_INTENT_RGB, NIFTI_INTENT_RGBA = 1007, 2003, 2004
# deflate cannot compress better than about 1032:1, so a .gz file of n bytes never holds more than this many times n
MAX_DEFLATE_RATIO = 1100


def read_nifti(path: Path) -> RawScan:
    """Read a .nii/.nii.gz file; intensities are scaled by the header's slope/intercept.

    Everything the header alone can tell is checked before any voxel is read: the shape and pixel type, the
    voxel-to-world matrix, whether the file can hold the voxels its header promises, and whether their float32 copy
    fits in memory. nibabel's own header repairs are not printed; they are kept in ``meta["notes"]``.
    """
    with _nibabel_log() as repairs:  # nibabel checks (and repairs) the header while loading it
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for truncated/corrupt/foreign files
            raise InputError(f"{path}: not a readable NIfTI file ({reason(exc, path)})") from exc
    shape = tuple(int(s) for s in img.shape)
    _check_nifti_header(path, img, shape)
    affine = _checked_affine(path, img, len(shape))
    _check_nifti_size(path, img, shape)
    check_memory(shape[:3], str(path))
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the voxel data ({reason(exc, path)})") from exc
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():  # NaN/inf from a damaged .gz (nibabel never reads
        damage = _gzip_damage(path)  # the CRC): say so instead of blaming the values
        if damage:
            raise InputError(f"{path}: the compressed data is corrupt ({damage})")
    header = img.header
    meta = {
        "format": "nifti",
        "sform_code": int(header["sform_code"]) if "sform_code" in header else 1,
        "qform_code": int(header["qform_code"]) if "qform_code" in header else 1,
    }
    if repairs:
        meta["notes"] = [f"NIfTI header repaired on reading: {'; '.join(repairs)}"]
    return RawScan(raw, affine, str(path), meta)


_NIBABEL_LOG_LOCK = threading.Lock()  # the logger is global: one reader at a time swaps its handlers


@contextmanager
def _nibabel_log():
    """Collect what nibabel logs about header repairs instead of letting it print to stderr."""
    from nibabel.imageglobals import logger

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    with _NIBABEL_LOG_LOCK:
        saved, propagate = list(logger.handlers), logger.propagate
        collector = _Collect()
        for handler in saved:
            logger.removeHandler(handler)
        logger.addHandler(collector)
        logger.propagate = False
        try:
            yield messages
        finally:
            logger.removeHandler(collector)
            for handler in saved:
                logger.addHandler(handler)
            logger.propagate = propagate


def _check_nifti_header(path: Path, img, shape: tuple[int, ...]) -> None:
    """Shape and pixel type from the header: one greyscale 2-D/3-D volume with at least one voxel."""
    if any(s < 0 for s in shape):
        raise InputError(f"{path}: the header gives a negative dimension {shape}: the file is corrupt")
    check_pixel_type(img.get_data_dtype(), str(path))
    extra = shape[3:]
    while extra and extra[-1] == 1:
        extra = extra[:-1]
    if extra:
        intent = int(img.header["intent_code"]) if "intent_code" in img.header else 0
        colour = intent in (NIFTI_INTENT_VECTOR, NIFTI_INTENT_RGB, NIFTI_INTENT_RGBA) or extra[-1] in (3, 4)
        kind = " (a colour or vector image?)" if colour else ""
        if len(extra) == 1:
            raise InputError(f"{path}: 4-D NIfTI with {extra[0]} volumes{kind}; give one 3-D greyscale volume")
        raise InputError(f"{path}: {len(shape)}-D NIfTI of shape {shape}{kind}; give one 3-D greyscale volume")
    if 0 in shape:
        raise InputError(f"{path}: the header describes an empty image of shape {shape} (no voxels)")


def _checked_affine(path: Path, img, ndim: int) -> np.ndarray:
    """The voxel-to-world matrix, refusing a voxel size of 0/NaN and all-zero or flat (degenerate) matrices.

    With no sform the matrix is built from pixdim; nibabel silently turns a 0 or NaN pixdim into 1 mm, which would
    make every volume in ml wrong, so the raw header is checked and such a file is refused instead.
    """
    header = img.header
    sform_code = int(header["sform_code"]) if "sform_code" in header else 0
    if sform_code == 0:
        from nibabel.openers import ImageOpener

        try:
            with ImageOpener(str(path)) as fh:
                raw = type(header).from_fileobj(fh, check=False)
            pixdim = np.asarray(raw["pixdim"], dtype=np.float64)[1 : 1 + min(ndim, 3)]
        except Exception:  # unreadable raw header: nibabel's checked one is all there is
            pixdim = np.ones(1)
        if not np.isfinite(pixdim).all() or (pixdim == 0).any():
            raise InputError(
                f"{path}: the header's voxel size (pixdim) is {tuple(float(p) for p in pixdim)} mm and there is no "
                "sform matrix, so the voxel spacing is unknown; fix the header (set pixdim to the voxel size in mm)"
            )
    affine = np.asarray(img.affine, dtype=np.float64)
    source = "sform" if sform_code else "qform" if int(header.get("qform_code", 0)) else "pixdim"
    if not np.isfinite(affine).all():
        raise InputError(f"{path}: the header's voxel-to-world matrix ({source}) holds NaN or infinite values")
    if np.isfinite(affine).all() and affine[:3, :3].any():
        check_spacing(affine, str(path))  # 1e-6 or 1e30 mm voxels: say so, not "degenerate"
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        what = "all zeros" if not affine[:3, :3].any() else "flat (two voxel axes point the same way)"
        raise InputError(f"{path}: the header's voxel-to-world matrix ({source}) is degenerate: {what}; fix the header")
    return affine


def _check_nifti_size(path: Path, img, shape: tuple[int, ...]) -> None:
    """Refuse a file too short to hold the voxels its header promises, before reading (or allocating) them."""
    need = volume_bytes(shape, img.get_data_dtype().itemsize)
    offset = int(getattr(img.dataobj, "offset", 352))  # the loaded header's vox_offset is reset to 0
    size = path.stat().st_size
    described = f"the header describes {dims(shape)} voxels ({format_bytes(need)})"
    if path.name.lower().endswith(".gz"):
        if size * MAX_DEFLATE_RATIO < offset + need:
            raise InputError(
                f"{path}: {described} but {format_bytes(size)} of gzip data cannot hold that much: the file is "
                "truncated or its header is corrupt"
            )
    elif size < offset + need:
        raise InputError(
            f"{path}: {described} but the file holds only {format_bytes(max(size - offset, 0))} of voxel data: "
            "it is truncated (or its header is corrupt)"
        )


def _gzip_damage(path: Path) -> str | None:
    """Why a .gz file's deflate stream is damaged (bad data, truncated, CRC or length mismatch), or None if intact.

    Streams the whole file once; used only after reading went wrong, to tell corruption from odd voxel values.
    """
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except EOFError:
        return "the compressed data ends early"
    except (OSError, zlib.error) as exc:
        return " ".join(str(exc).split())
    return None
