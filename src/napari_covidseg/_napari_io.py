"""npe2 reader and writer contributions (no napari import: they only build and consume layer-data tuples).

Reader: NIfTI, DICOM series folders and files, PNG/JPG slices (file or folder) -> one Image layer with
``scale`` = spacing and the scan's geometry in ``metadata``. Writer: a Labels layer -> uint8 NIfTI in the source
scan's on-disk geometry, so the mask overlays the original file in any viewer.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io import _looks_like_dicom, is_supported, load_ct
from napari_covidseg.io.nifti import IMAGE_SUFFIXES
from napari_covidseg.io.writers import save_labels
from napari_covidseg.layers import geometry_volume, image_layer_data

_FOLDER_PEEK = 64  # a folder is claimed if one of its first files looks like DICOM or an image slice


def get_reader(path: str | list[str]):
    """Return a reader function when ``path`` is something :func:`load_ct` reads, else None (napari asks others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    try:
        if p.is_dir():
            return read_ct if _folder_has_slices(p) else None
        if p.name.lower().endswith(".npy"):
            return None  # napari's own reader handles arrays; ours would guess an intensity convention
        return read_ct if p.is_file() and is_supported(p) else None
    except OSError:  # a name too long for the filesystem, a permission problem: not ours to read
        return None


def read_ct(path: str | list[str]) -> list[tuple[np.ndarray, dict, str]]:
    """Load one CT (display orientation, HU for NIfTI/DICOM) as an Image layer-data tuple."""
    if isinstance(path, list):
        path = path[0]
    return [image_layer_data(load_ct(path))]


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer as a uint8 NIfTI in the geometry of the scan it was drawn on (``.nii.gz`` added if
    the name has no NIfTI suffix). Layers without plugin geometry are written with their ``scale`` as spacing."""
    out = Path(path)
    if not out.name.endswith((".nii.gz", ".nii")):
        out = out.with_name(out.name + ".nii.gz")
    labels = np.asarray(data)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{attributes.get('name', 'layer')}: labels must be integers, got {labels.dtype}")
    like = geometry_volume(labels.shape, attributes.get("scale"), attributes.get("metadata"))
    save_labels(labels.reshape(like.shape), like, out)
    return [str(out)]


def _folder_has_slices(folder: Path) -> bool:
    for entry in islice((p for p in folder.rglob("*") if p.is_file()), _FOLDER_PEEK):
        if entry.suffix.lower() in IMAGE_SUFFIXES or _looks_like_dicom(entry):
            return True
    return False
