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
from napari_covidseg.io.checks import as_greyscale_volume, check_memory
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
    modality = str(getattr(members[0][1], "Modality", "")).upper()
    if modality in NON_CT_MODALITIES:
        raise InputError(f"{path}: modality is {modality}, not CT; this tool segments CT only")
    try:
        members = _same_geometry(members, notes)
        rows, cols = int(members[0][1].Rows), int(members[0][1].Columns)
        check_memory((len(members), rows, cols), str(path), what="series (slices x rows x columns)")
        members, affine = _sort_and_affine(members, path)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        if isinstance(exc, InputError):
            raise
        detail = " ".join(str(exc).split())
        raise InputError(
            f"{path}: malformed DICOM geometry tags (size, orientation, position or spacing: {detail})"
        ) from exc
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
        iop = tuple(round(v, 4) for v in _numbers(ds, f, "ImageOrientationPatient", 6, (1, 0, 0, 0, 1, 0)))
        groups[(int(ds.Rows), int(ds.Columns), iop)].append((f, ds))
    best = max(groups.values(), key=len)
    if len(groups) > 1:
        notes.append(f"dropped {len(members) - len(best)} slices whose size or orientation differs")
    return best


def _sort_and_affine(members: list, path: Path) -> tuple[list, np.ndarray]:
    f0, ds0 = members[0]
    iop = np.array(_numbers(ds0, f0, "ImageOrientationPatient", 6, (1, 0, 0, 0, 1, 0)))
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if np.linalg.norm(normal) < 0.5:
        raise InputError(f"{f0}: ImageOrientationPatient {tuple(iop)} does not give two perpendicular directions")
    dy, dx = _numbers(ds0, f0, "PixelSpacing", 2, (1.0, 1.0))
    if dy <= 0 or dx <= 0:
        raise InputError(f"{f0}: PixelSpacing must be positive, got {dy} x {dx} mm")
    if all(hasattr(ds, "ImagePositionPatient") for _, ds in members):
        positions = {id(ds): np.array(_numbers(ds, f, "ImagePositionPatient", 3, ())) for f, ds in members}
        members = sorted(members, key=lambda m: float(positions[id(m[1])] @ normal))
        origin = positions[id(members[0][1])]
        if len(members) > 1:
            step = (positions[id(members[-1][1])] - origin) / (len(members) - 1)
            if np.linalg.norm(step) < 1e-6:
                raise InputError(
                    f"{path}: several slices share one position: this folder mixes series or repeats slices"
                )
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


def _numbers(ds, path: Path, keyword: str, n: int, default: tuple) -> list[float]:
    """``n`` finite numbers from a multi-valued DICOM tag (``default`` when absent), else :class:`InputError`."""
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return [float(v) for v in default]
    values = [value] if isinstance(value, str | bytes) or not hasattr(value, "__iter__") else list(value)
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != n or not all(np.isfinite(numbers)):
        raise InputError(f"{path}: {keyword} should hold {n} numbers, got {' '.join(str(value).split())}")
    return numbers


def _hu_slice(path: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # the header was readable, the rest of the file is not: truncated or corrupt
        raise InputError(f"{path}: cannot read the DICOM file ({' '.join(str(exc).split())})") from exc
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as exc:  # missing decoder plugins, corrupt pixel data
        raise InputError(f"{path}: cannot decode the pixel data ({' '.join(str(exc).split())})") from exc
    if pixels.ndim != 2:
        raise InputError(
            f"{path}: expected one greyscale slice per file, got pixel array {pixels.shape} "
            "(a colour image or a multi-frame file?)"
        )
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept
