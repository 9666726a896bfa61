"""DICOM reader: a series folder or a single file -> :class:`CTVolume` in HU.

Slices are sorted by their position along the slice normal (ImagePositionPatient . (row x column cosines)),
not by file name or InstanceNumber, and RescaleSlope/RescaleIntercept are applied to get HU. A folder with several
series yields the largest one and says so in ``meta["notes"]``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io.checks import as_greyscale_volume
from napari_covidseg.io.orientation import display_spacing, to_display
from napari_covidseg.io.volume import CTVolume

# Tags kept in meta: useful for provenance and model cards, nothing that identifies the patient.
KEPT_TAGS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "KVP",
    "ConvolutionKernel",
    "SliceThickness",
    "SeriesDescription",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "BodyPartExamined",
)
# Modalities we refuse: a CT model run on them gives meaningless output.
NON_CT_MODALITIES = {"MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SEG", "RTSTRUCT", "SR", "PR"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_dicom(path: Path) -> CTVolume:
    """Read a DICOM series from a folder (largest series wins) or one DICOM file (one slice)."""
    headers = _read_headers([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()))
    if not headers:
        raise InputError(f"{path}: no readable DICOM image files found")
    series = defaultdict(list)
    for f, ds in headers:
        series[str(getattr(ds, "SeriesInstanceUID", "unknown"))].append((f, ds))
    notes = []
    uid, members = max(series.items(), key=lambda kv: len(kv[1]))
    if len(series) > 1:
        sizes = ", ".join(str(len(m)) for m in sorted(series.values(), key=len, reverse=True))
        notes.append(f"{len(series)} series found (slices: {sizes}); using the largest ({len(members)} slices)")
    members = _same_geometry(members, notes)
    modality = str(getattr(members[0][1], "Modality", "")).upper()
    if modality in NON_CT_MODALITIES:
        raise InputError(f"{path}: modality is {modality}, not CT; this tool segments CT only")
    members, affine = _sort_and_affine(members)
    slices = [_hu_slice(f) for f, _ in members]
    disk = np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))  # (columns, rows, slices)
    disk = as_greyscale_volume(disk, str(path))
    array, ornt = to_display(disk, affine)
    first = members[0][1]
    meta = {
        "ornt": ornt,
        "disk_shape": disk.shape,
        "format": "dicom",
        "series_uid": uid,
        "files": [str(f) for f, _ in members],
        "tags": {t: str(getattr(first, t)) for t in KEPT_TAGS if hasattr(first, t)},
        "notes": notes,
    }
    return CTVolume(array, display_spacing(affine, ornt), affine, "HU", str(path), meta)


def _read_headers(files: list[Path]) -> list:
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError):
            continue
        if "Rows" in ds and "Columns" in ds:
            out.append((f, ds))
    return out


def _same_geometry(members: list, notes: list[str]) -> list:
    """Keep the slices sharing the most common size and orientation (a series should have just one)."""
    groups = defaultdict(list)
    for f, ds in members:
        iop = tuple(round(float(v), 4) for v in getattr(ds, "ImageOrientationPatient", (1, 0, 0, 0, 1, 0)))
        groups[(int(ds.Rows), int(ds.Columns), iop)].append((f, ds))
    best = max(groups.values(), key=len)
    if len(groups) > 1:
        notes.append(f"dropped {len(members) - len(best)} slices whose size or orientation differs")
    return best


def _sort_and_affine(members: list) -> tuple[list, np.ndarray]:
    ds0 = members[0][1]
    iop = np.array([float(v) for v in getattr(ds0, "ImageOrientationPatient", (1, 0, 0, 0, 1, 0))])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    dy, dx = (float(v) for v in getattr(ds0, "PixelSpacing", (1.0, 1.0)))
    if all(hasattr(ds, "ImagePositionPatient") for _, ds in members):
        positions = {id(ds): np.array([float(v) for v in ds.ImagePositionPatient]) for _, ds in members}
        members = sorted(members, key=lambda m: float(positions[id(m[1])] @ normal))
        origin = positions[id(members[0][1])]
        if len(members) > 1:
            step = (positions[id(members[-1][1])] - origin) / (len(members) - 1)
            if np.linalg.norm(step) < 1e-6:
                raise InputError("several slices share one position: this folder mixes series or repeats slices")
        else:
            step = normal * float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
    else:  # no geometry: fall back to InstanceNumber order and nominal spacing
        members = sorted(members, key=lambda m: int(getattr(m[1], "InstanceNumber", 0) or 0))
        origin = np.zeros(3)
        step = normal * float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dx  # +column index moves along the row direction
    lps[:3, 1] = col_cos * dy  # +row index moves along the column direction
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return members, LPS_TO_RAS @ lps


def _hu_slice(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as exc:  # missing decoder plugins, corrupt pixel data
        raise InputError(f"{path}: cannot decode the pixel data ({exc})") from exc
    if pixels.ndim != 2:
        raise InputError(f"{path}: expected one greyscale slice per file, got pixel array {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept
