"""Reading CT scans with their geometry and writing results back in that geometry.

``load_ct(path)`` accepts a NIfTI file, a DICOM series folder or a single DICOM file, PNG/JPG slices (one file or a
folder of them) and .npy arrays, and returns a :class:`CTVolume` in display orientation.
``save_labels(labels, like=volume, path=...)`` writes a NIfTI that overlays the original scan exactly.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from napari_covidseg.errors import InputError
from napari_covidseg.io.checks import check_slice_size, validate_scan
from napari_covidseg.io.dicom import read_dicom
from napari_covidseg.io.images import IMAGE_SUFFIXES, read_image, read_image_folder
from napari_covidseg.io.nifti import read_nifti
from napari_covidseg.io.npy import read_npy
from napari_covidseg.io.volume import CTVolume, RawScan, source_stem, to_volume
from napari_covidseg.io.writers import save_array, save_labels

__all__ = ["CTVolume", "load_ct", "save_array", "save_labels", "source_stem", "is_supported"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def load_ct(path: str | Path) -> CTVolume:
    """Load a CT scan (NIfTI, DICOM folder/file, PNG/JPG, .npy) in display orientation with its geometry.

    One module per format reads the voxels and their geometry (``nifti``, ``dicom``, ``images``, ``npy``); the result
    then passes :func:`~napari_covidseg.io.checks.validate_scan` once. Anything unusable (missing, unreadable,
    truncated, corrupt, not a greyscale CT, too large for the memory, slices under 8x8 pixels, an implausible voxel
    size) raises :class:`InputError` with a message that names the file and the problem.
    """
    path = Path(path)
    try:
        raw = _load(path)
        volume = to_volume(raw, validate_scan(raw.disk, raw.affine, str(path)))  # the one validation pass
    except InputError:
        raise
    except OSError as exc:  # permissions, names too long, I/O errors while reading
        reason = (exc.strerror or str(exc) or "cannot be read").lower()
        raise InputError(f"{path}: {reason}") from exc
    except MemoryError as exc:
        raise InputError(f"{path}: not enough memory to read this scan") from exc
    check_slice_size(volume.shape, str(path))
    return volume


def _load(path: Path) -> RawScan:
    if not path.exists():
        if path.is_symlink():
            target = os.readlink(path)
            try:
                os.stat(path)
                why = "its target is missing"
            except OSError as exc:
                why = "the links form a loop" if exc.errno == errno.ELOOP else "its target is missing"
            raise InputError(f"{path}: symbolic link to {target} cannot be followed ({why})")
        raise InputError(f"{path}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    name = path.name.lower()
    if path.is_dir():
        images = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        has_dicom = any(_looks_like_dicom(p) for p in path.rglob("*") if p.is_file())
        if has_dicom:
            return read_dicom(path)
        if images:
            return read_image_folder(path, images)
        if name.endswith(NIFTI_SUFFIXES + IMAGE_SUFFIXES + (".npy", ".dcm")):
            raise InputError(f"{path}: is a folder, not a file (and holds no DICOM series or PNG/JPG slices)")
        if not any(path.iterdir()):
            raise InputError(f"{path}: the folder is empty")
        found = sorted(p.name for p in path.iterdir())
        listed = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise InputError(f"{path}: folder holds no DICOM series and no PNG/JPG slices (found: {listed})")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file or folder")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(IMAGE_SUFFIXES):
        return read_image(path)
    if name.endswith(".npy"):
        return read_npy(path)
    if name.endswith(".dcm") or _looks_like_dicom(path):
        return read_dicom(path)
    raise InputError(f"{path}: unsupported file type (use NIfTI, DICOM, PNG/JPG or .npy)")


def is_supported(path: str | Path) -> bool:
    """Cheap check (no pixel reading) whether ``load_ct`` would try to read ``path``."""
    path = Path(path)
    if path.is_dir():
        return True
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES + IMAGE_SUFFIXES + (".npy", ".dcm")) or _looks_like_dicom(path)


def _looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 files have 'DICM' at byte 128; also accept the .dcm suffix."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False
