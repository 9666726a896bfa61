"""Reading CT scans with their geometry and writing results back in that geometry.

``load_ct(path)`` accepts a NIfTI file, a DICOM series folder or a single DICOM file, PNG/JPG slices (one file or a
folder of them) and .npy arrays, and returns a :class:`CTVolume` in display orientation.
``save_labels(labels, like=volume, path=...)`` writes a NIfTI that overlays the original scan exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_covidseg.errors import InputError
from napari_covidseg.io.dicom import read_dicom
from napari_covidseg.io.nifti import IMAGE_SUFFIXES, read_image, read_image_folder, read_nifti, read_npy
from napari_covidseg.io.volume import CTVolume, source_stem
from napari_covidseg.io.writers import save_array, save_labels

__all__ = ["CTVolume", "load_ct", "save_array", "save_labels", "source_stem", "is_supported"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def load_ct(path: str | Path) -> CTVolume:
    """Load a CT scan (NIfTI, DICOM folder/file, PNG/JPG, .npy) in display orientation with its geometry."""
    path = Path(path)
    if not path.exists():
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
        raise InputError(f"{path}: folder holds no DICOM series and no PNG/JPG slices")
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
