"""`CTVolume`: a CT array in display orientation together with the geometry needed to write results back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Intensity = Literal["HU", "display"]


@dataclass
class CTVolume:
    """A CT scan in display orientation with its on-disk geometry.

    Attributes:
        array: float32 intensities, axes (z, y, x) in display orientation: z from inferior to superior, y from
            anterior (row 0) to posterior, x from patient right (column 0) to patient left (radiological view).
        spacing: voxel size in mm along (z, y, x) of ``array``.
        affine: 4x4 voxel-to-world (RAS+, mm) matrix of the data *as stored on disk* (NIfTI convention; for DICOM
            the matrix a NIfTI converter would write). ``save_labels`` writes it back unchanged.
        intensity: ``"HU"`` for Hounsfield units, ``"display"`` for 8-bit windowed images (PNG/JPG).
        source: the file or folder it was read from.
        meta: ``ornt`` (nibabel orientation transform from disk voxel order to display), ``disk_shape``,
            DICOM tags worth keeping, notes such as which series was chosen.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    intensity: Intensity = "HU"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"CTVolume.array must be 3-D (z, y, x), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.affine = np.asarray(self.affine, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of ``array`` (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def display_affine(self) -> np.ndarray:
        """4x4 matrix from display voxel indices (z, y, x) to world RAS+ mm."""
        from napari_covidseg.io.orientation import display_affine

        return display_affine(self.affine, self.meta["ornt"], tuple(self.meta["disk_shape"]))

    @property
    def name(self) -> str:
        """A short name for layers and reports: the file name without CT extensions."""
        return source_stem(self.source) if self.source else "ct"


def source_stem(path: str | Path) -> str:
    """File or folder name without ``.nii.gz``/``.nii``/``.dcm``/image extensions."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".dcm", ".npy", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


@dataclass
class RawScan:
    """What a format reader returns: the voxels in on-disk order and their geometry, before validation.

    Attributes:
        disk: the voxel array as stored (any numeric dtype; 2-D or 3-D, NIfTI may add axes of length 1).
        affine: 4x4 voxel-to-world (RAS+, mm) matrix of ``disk``.
        source: the file or folder read.
        meta: format, tags, notes; ``intensity``: "HU", "display" or None (guessed from the values).
    """

    disk: np.ndarray
    affine: np.ndarray
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    intensity: Intensity | None = None


def display_order_scan(array_zyx: np.ndarray, spacing_zyx, source: str, intensity, meta: dict | None = None):
    """A :class:`RawScan` for an array already in display order (images, .npy, napari layers, the phantom).

    On disk the voxel order is (x, y, z) with an LPS-like affine ``diag(-sx, -sy, sz)``, so that saving writes a
    NIfTI any viewer shows in the same orientation.
    """
    sz, sy, sx = (float(s) for s in spacing_zyx)
    array_zyx = np.asarray(array_zyx)
    if array_zyx.ndim == 2:
        array_zyx = array_zyx[np.newaxis]
    affine = np.diag([-sx, -sy, sz, 1.0])
    return RawScan(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine, source, dict(meta or {}), intensity)


def to_volume(raw: RawScan, array: np.ndarray | None = None) -> CTVolume:
    """The :class:`CTVolume` of a raw scan (``array``: its validated disk-order voxels, default ``raw.disk``)."""
    from napari_covidseg.io.checks import guess_intensity
    from napari_covidseg.io.orientation import display_spacing, to_display

    disk = raw.disk if array is None else array
    display, ornt = to_display(disk, raw.affine)
    meta = {"ornt": ornt, "disk_shape": disk.shape, **raw.meta}
    intensity = raw.intensity or guess_intensity(display)
    return CTVolume(display, display_spacing(raw.affine, ornt), raw.affine, intensity, raw.source, meta)


def display_volume(
    array_zyx: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    source: str,
    intensity: str,
    meta: dict | None = None,
) -> CTVolume:
    """Wrap an in-memory array already in display order (napari layers, the phantom) as a CTVolume."""
    return to_volume(display_order_scan(array_zyx, spacing_zyx, source, intensity, meta))
