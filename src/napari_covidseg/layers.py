"""CT volumes <-> napari layer data, without importing napari (the reader, writer and sample data use this).

An Image layer made here carries ``scale`` = voxel spacing (mm, z y x) and, in ``metadata["covidseg"]``, the on-disk
geometry of the scan (affine, orientation transform, disk shape, intensity convention). Any Labels layer drawn on it
or computed from it copies that metadata, so napari's writer can save it as a NIfTI that overlays the original scan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_covidseg.constants import LESION_CLASSES, LESION_COLOURS, LUNG_WINDOW
from napari_covidseg.errors import InputError
from napari_covidseg.io.volume import CTVolume, display_volume

GEOMETRY_KEY = "covidseg"
# What a layer made by this plugin is, in its metadata: the docks' pickers offer CT images and lesion labels only,
# and preselect the latest lesion layer of the chosen CT (SOURCE_KEY: the name of the image layer it was made on).
ROLE_KEY = "covidseg role"
SOURCE_KEY = "covidseg image"
LESIONS, LUNGS, DISAGREEMENT, CAM = "lesions", "lungs", "disagreement", "cam"
CT_VIEW = "ct view"  # the Compare grid's view of a CT's own array under one result (not a CT to offer)


def layer_role(layer: Any) -> str | None:
    """The role of a layer made here (``ROLE_KEY``); layers of earlier versions are recognised by their metadata."""
    meta = getattr(layer, "metadata", None) or {}
    role = meta.get(ROLE_KEY)
    if role is None:
        if "cam class" in meta:
            role = CAM
        elif "models" in meta and "classes" in meta:
            role = DISAGREEMENT
    return role


# Voxels this far below 0 only occur in Hounsfield units (air is -1000 HU); 8-bit images never go below 0.
_HU_EVIDENCE = -200.0


def geometry_metadata(volume: CTVolume) -> dict[str, Any]:
    """What a layer needs to write results back in ``volume``'s on-disk geometry (plain lists, JSON friendly)."""
    return {
        "affine": np.asarray(volume.affine).tolist(),
        "ornt": np.asarray(volume.meta["ornt"]).tolist(),
        "disk_shape": [int(s) for s in volume.meta["disk_shape"]],
        "display_shape": [int(s) for s in volume.shape],
        "spacing": list(volume.spacing),
        "intensity": volume.intensity,
        "source": volume.source,
        "sform_code": int(volume.meta.get("sform_code", 1)),
        "qform_code": int(volume.meta.get("qform_code", 1)),
    }


def image_layer_data(volume: CTVolume, name: str | None = None) -> tuple[np.ndarray, dict, str]:
    """A napari layer-data tuple for a CT: grey, lung window for HU, ``scale`` = spacing, geometry in metadata."""
    limits = list(LUNG_WINDOW) if volume.intensity == "HU" else [0.0, 255.0]
    notes = volume.meta.get("notes")
    metadata = {GEOMETRY_KEY: geometry_metadata(volume), "spacing": list(volume.spacing)}
    if notes:
        metadata["notes"] = notes
    kwargs = {
        "name": name or volume.name,
        "scale": list(volume.spacing),
        "colormap": "gray",
        "contrast_limits": limits,
        "metadata": metadata,
    }
    return volume.array, kwargs, "image"


def volume_from_layer(data: Any, scale: Any, metadata: dict | None, name: str = "image") -> CTVolume:
    """Rebuild a :class:`CTVolume` from an Image layer's data, scale and metadata.

    Layers made by this plugin keep their exact geometry. Any other greyscale 2-D or 3-D layer works too: its
    spacing is taken from ``scale`` and its intensity convention guessed (values far below 0 mean Hounsfield units,
    otherwise an 8-bit style display image). ``meta["squeezed"]`` records that a 2-D layer got a z axis of 1.
    """
    metadata = metadata or {}
    array = np.asarray(data)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        raise InputError(f"layer {name!r} is an RGB image; convert it to greyscale (or open it with this plugin)")
    if array.ndim not in (2, 3):
        raise InputError(f"layer {name!r} has {array.ndim} dimensions; a 2-D slice or a 3-D (z, y, x) CT is needed")
    if not (np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)):
        raise InputError(f"layer {name!r} holds {array.dtype} values, not intensities")
    squeezed = array.ndim == 2
    array = np.asarray(array[np.newaxis] if squeezed else array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"layer {name!r} contains NaN or infinite values")
    geometry = metadata.get(GEOMETRY_KEY)
    if geometry and list(geometry.get("display_shape", [])) == list(array.shape):
        volume = CTVolume(
            array,
            tuple(geometry["spacing"]),
            np.asarray(geometry["affine"]),
            geometry["intensity"],
            geometry.get("source", name),
            {
                "ornt": np.asarray(geometry["ornt"]),
                "disk_shape": tuple(geometry["disk_shape"]),
                "sform_code": geometry.get("sform_code", 1),
                "qform_code": geometry.get("qform_code", 1),
            },
        )
    else:
        scale = [float(s) for s in (scale if scale is not None else [1.0] * array.ndim)][-3:]
        spacing = (1.0, *scale[-2:]) if squeezed else tuple(scale)
        if min(spacing) <= 0:
            raise InputError(f"layer {name!r} has a non-positive scale {tuple(scale)}")
        intensity = metadata.get("intensity") or guess_intensity(array)
        volume = display_volume(array, spacing, name, intensity, {"format": "napari layer"})
    volume.meta["squeezed"] = squeezed
    volume.meta["layer_name"] = name
    return volume


def guess_intensity(array: np.ndarray) -> str:
    """``"HU"`` if the values go well below zero (air is -1000 HU), else ``"display"`` (8-bit style)."""
    return "HU" if float(array.min(initial=0.0)) < _HU_EVIDENCE else "display"


def geometry_volume(shape: tuple[int, ...], scale: Any, metadata: dict | None) -> CTVolume:
    """A data-free CTVolume with the geometry a layer of ``shape`` would be written with (for the writer)."""
    shape3 = tuple(int(s) for s in shape)
    if len(shape3) == 2:
        shape3 = (1, *shape3)
    if len(shape3) != 3:
        raise InputError(f"labels have {len(shape)} dimensions; only 2-D and 3-D label layers can be written")
    empty = np.broadcast_to(np.float32(0), shape3)
    return volume_from_layer(empty if len(shape) == 3 else empty[0], scale, metadata, "labels")


def label_colours(class_ids: list[int] | None = None) -> dict[int | None, tuple[float, ...]]:
    """``{label: rgba}`` for a DirectLabelColormap: the fixed lesion colours, anything else transparent."""
    ids = list(LESION_CLASSES) if class_ids is None else class_ids
    colours: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0)}
    for i in ids:
        colours[int(i)] = LESION_COLOURS.get(int(i), (0.6, 0.6, 0.6, 1.0))
    return colours


def label_features(class_names: dict[int, str] | None = None) -> dict[str, list]:
    """Layer ``features``: napari shows the class name in the status bar when hovering a label."""
    names = dict(LESION_CLASSES if class_names is None else class_names)
    return {"index": list(names), "class": list(names.values())}


def labels_layer_kwargs(
    name: str, like: dict, class_names: dict[int, str] | None = None, extra_metadata: dict | None = None
) -> dict:
    """Keyword arguments for a lesion Labels layer placed exactly on the image described by ``like``.

    ``like`` holds the image layer's ``scale``, ``translate`` and ``metadata`` (its geometry travels along).
    The colormap is passed as a plain ``{label: rgba}`` dict; napari turns it into a DirectLabelColormap.
    """
    names = dict(LESION_CLASSES if class_names is None else class_names)
    metadata = {k: v for k, v in (like.get("metadata") or {}).items() if k in (GEOMETRY_KEY, "spacing")}
    metadata["classes"] = {int(k): v for k, v in names.items()}
    metadata.update(extra_metadata or {})
    return {
        "name": name,
        "scale": list(like.get("scale", [1.0, 1.0, 1.0])),
        "translate": list(like.get("translate", [0.0, 0.0, 0.0])),
        "metadata": metadata,
        "features": label_features(names),
        "colormap": label_colours(list(names)),
        "opacity": 0.6,
    }
