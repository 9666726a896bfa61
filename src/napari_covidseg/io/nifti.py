"""NIfTI, PNG/JPG and .npy readers. Each returns a :class:`CTVolume` in display orientation."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io.checks import as_greyscale_volume, guess_intensity
from napari_covidseg.io.orientation import display_spacing, to_display
from napari_covidseg.io.volume import CTVolume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_nifti(path: Path) -> CTVolume:
    """Read a .nii/.nii.gz file; intensities are scaled by the header's slope/intercept."""
    try:
        img = nib.load(str(path))
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files
        raise InputError(f"{path}: not a readable NIfTI file ({exc.__class__.__name__}: {exc})") from exc
    if raw.ndim == 4 and raw.shape[3] > 1:
        raise InputError(f"{path}: 4-D NIfTI with {raw.shape[3]} volumes; give one 3-D volume")
    disk = as_greyscale_volume(raw, str(path))
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: the header's voxel-to-world matrix is missing or degenerate")
    array, ornt = to_display(disk, affine)
    header = img.header
    meta = {
        "ornt": ornt,
        "disk_shape": disk.shape,
        "format": "nifti",
        "sform_code": int(header["sform_code"]) if "sform_code" in header else 1,
        "qform_code": int(header["qform_code"]) if "qform_code" in header else 1,
    }
    return CTVolume(array, display_spacing(affine, ornt), affine, guess_intensity(array), str(path), meta)


def display_volume(
    array_zyx: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    source: str,
    intensity: str,
    meta: dict | None = None,
) -> CTVolume:
    """Wrap an array already in display order (images, .npy) with a matching on-disk geometry.

    On disk the voxel order is (x, y, z) with an LPS-like affine ``diag(-sx, -sy, sz)``, so that saving writes a
    NIfTI any viewer shows in the same orientation.
    """
    sz, sy, sx = spacing_zyx
    affine = np.diag([-sx, -sy, sz, 1.0])
    disk = np.ascontiguousarray(array_zyx.transpose(2, 1, 0))
    array, ornt = to_display(disk, affine)
    meta = {"ornt": ornt, "disk_shape": disk.shape, **(meta or {})}
    return CTVolume(array, spacing_zyx, affine, intensity, source, meta)  # type: ignore[arg-type]


def read_image(path: Path) -> CTVolume:
    """Read one PNG/JPG slice as greyscale (intensity ``"display"``)."""
    return display_volume(_image_array(path)[np.newaxis], (1.0, 1.0, 1.0), str(path), "display", {"format": "image"})


def read_image_folder(folder: Path, files: list[Path]) -> CTVolume:
    """Stack same-sized PNG/JPG slices of a folder in natural name order (slice 0 is the first name)."""
    files = sorted(files, key=_natural_key)
    slices = [_image_array(f) for f in files]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise InputError(f"{folder}: the images differ in size {sorted(shapes)}; open them one at a time")
    return display_volume(
        np.stack(slices), (1.0, 1.0, 1.0), str(folder), "display", {"format": "image", "files": [f.name for f in files]}
    )


def read_npy(path: Path) -> CTVolume:
    """Read a .npy array already in display order: (y, x) or (z, y, x); 1 mm spacing is assumed."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from exc
    if data.ndim == 2:
        data = data[np.newaxis]
    array = as_greyscale_volume(data, str(path))
    if array.ndim != 3:
        raise InputError(f"{path}: expected (y, x) or (z, y, x), got shape {data.shape}")
    return display_volume(array, (1.0, 1.0, 1.0), str(path), guess_intensity(array), {"format": "npy"})


def _image_array(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            grey = im.convert("L") if im.mode not in ("L", "I", "I;16", "F") else im
            data = np.asarray(grey)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc
    out = as_greyscale_volume(data, str(path))
    return out[..., 0]


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]
