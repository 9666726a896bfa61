"""npe2 reader and writer contributions (no napari import: they only build and consume layer-data tuples).

Reader: NIfTI, DICOM series folders and files, PNG/JPG slices (file or folder) -> one Image layer with
``scale`` = spacing and the scan's geometry in ``metadata``. Writer: a Labels layer -> uint8 NIfTI in the source
scan's on-disk geometry, so the mask overlays the original file in any viewer.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io import _looks_like_dicom, is_supported, load_ct
from napari_covidseg.io.images import IMAGE_SUFFIXES
from napari_covidseg.io.writers import save_labels
from napari_covidseg.layers import GEOMETRY_KEY, geometry_volume, image_layer_data, labels_layer_kwargs

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
            return read_for_napari if _folder_has_slices(p) else None
        if p.name.lower().endswith(".npy"):
            return None  # napari's own reader handles arrays; ours would guess an intensity convention
        return read_for_napari if p.is_file() and is_supported(p) else None
    except OSError:  # a name too long for the filesystem, a permission problem: not ours to read
        return None


def read_for_napari(path: str | list[str]) -> list[tuple]:
    """The reader napari calls: :func:`read_ct`, with bad input reported as a napari error notification whose first
    words are the cause.

    Raising would not do: napari replaces a reader's exception with its own "Tried to read <path> with plugin ...",
    so the red toast shows the start of a path and the cause hides behind "View Traceback". Bad input therefore
    returns napari's "nothing to add" sentinel after the notification; anything unexpected still raises.
    """
    try:
        layers = read_ct(path)
    except InputError as exc:
        from napari.utils.notifications import show_error

        show_error(cause_first(str(exc)))
        return [(None,)]
    notes = [n for _, kwargs, _ in layers for n in (kwargs.get("metadata") or {}).get("notes", [])]
    if notes:  # what the reader repaired (slices inserted, a scout left out, a 16-bit image rescaled): say it
        from napari.utils.notifications import show_warning

        show_warning(f"{Path(str(path)).name}: " + "; ".join(notes))
    return layers


def cause_first(message: str) -> str:
    """ "<path>: <cause>" -> "<cause> — <path>" (the start of a message is what a notification shows)."""
    head, sep, rest = message.partition(": ")
    if sep and rest and (os.sep in head or Path(head).exists()):
        return f"{rest} — {head}"
    return message


def read_ct(path: str | list[str]) -> list[tuple[np.ndarray, dict, str]]:
    """Load one CT (display orientation, HU for NIfTI/DICOM) as an Image layer-data tuple.

    A NIfTI that holds a label map (what ``covidseg segment -o`` and the writer save: whole numbers 0..255, at most
    ``MAX_LABEL_VALUES`` of them, nothing negative, which no CT in HU is) opens as a Labels layer in the same
    geometry, with the lesion colours when its values are lesion classes, so it overlays the scan it was made on.
    """
    if isinstance(path, list):
        path = path[0]
    volume = load_ct(path)
    if str(path).lower().endswith((".nii", ".nii.gz")):
        labels = _as_label_map(volume.array)
        if labels is not None:
            return [_labels_layer_data(volume, labels)]
    return [image_layer_data(volume)]


MAX_LABEL_VALUES = 32


def _as_label_map(array: np.ndarray) -> np.ndarray | None:
    """uint8 labels when ``array`` looks like a label map (see :func:`read_ct`), else None."""
    if array.size == 0 or float(array.min()) < 0 or float(array.max()) > 255:
        return None
    labels = array.astype(np.uint8)
    if not np.array_equal(labels, array):  # fractions: an image, not labels
        return None
    if np.count_nonzero(np.bincount(labels.ravel(), minlength=256)) > MAX_LABEL_VALUES:
        return None
    return labels


def _labels_layer_data(volume, labels: np.ndarray) -> tuple[np.ndarray, dict, str]:
    """Labels layer-data tuple: lung names for a lung mask (file name says so), lesion classes when the values are
    lesion class ids, else plain "label k" names."""
    from napari_covidseg.constants import LESION_CLASSES, LUNG_COLOURS, LUNG_NAMES

    _, like, _ = image_layer_data(volume)
    present = set(np.flatnonzero(np.bincount(labels.ravel(), minlength=256)).tolist()) | {0}
    lungs = "lung" in Path(volume.source).name.lower() and present <= set(LUNG_NAMES)
    if lungs:
        names = dict(LUNG_NAMES)
    elif present <= set(LESION_CLASSES):
        names = dict(LESION_CLASSES)
    else:
        names = {v: ("background" if v == 0 else f"label {v}") for v in sorted(present)}
    kwargs = labels_layer_kwargs(volume.name, like, names, {"source": volume.source})
    if lungs:
        kwargs["colormap"] = dict(LUNG_COLOURS)
    return labels, kwargs, "labels"


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
    from napari_covidseg.io.outputs import NIFTI_SUFFIXES, Output, check_outputs

    source = ((attributes.get("metadata") or {}).get(GEOMETRY_KEY) or {}).get("source")
    # never over the scan the labels were drawn on (a DICOM folder's files count too)
    check_outputs([Output("save as", out, NIFTI_SUFFIXES)], [source] if source and Path(source).exists() else [])
    save_labels(labels.reshape(like.shape), like, out)
    return [str(out)]


def _folder_has_slices(folder: Path) -> bool:
    for entry in islice((p for p in folder.rglob("*") if p.is_file()), _FOLDER_PEEK):
        if entry.suffix.lower() in IMAGE_SUFFIXES or _looks_like_dicom(entry):
            return True
    return False
