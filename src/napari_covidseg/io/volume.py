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
