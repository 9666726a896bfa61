"""COVID-19 chest-CT quantification as radiologists summarise it: lung and lesion volumes, percent involvement,
a 0-25 severity score over five zones, and model-free HU density bands.

``quantify(volume, lesions)`` takes a HU :class:`~napari_covidseg.io.volume.CTVolume` and a lesion label array on
the same grid (from a model or drawn by hand) and returns a :class:`Quantification` plus the lung mask it measured
against. Everything is counted from voxels: volume = voxel count x voxel volume (``CTVolume.voxel_volume_ml``).

Steps (``iter_quantify`` yields a :class:`~napari_covidseg.inference.segment.Progress` before each):

1. lung mask: the one given, else the classical HU mask :func:`~napari_covidseg.analysis.lungmask.lung_mask`
   (1 = right lung, image left; 2 = left lung);
2. folding (:func:`fold_lesions`): the classical mask misses dense lesions lying against the chest wall (effusion,
   peripheral consolidation), so lesion voxels outside it that lie within ``FOLD_MM`` of a lung, or that are
   3-D connected to an outside lesion component touching a lung, are added to the nearest lung. Lesion voxels
   farther away (false positives in the abdomen, the chest wall or outside the body) are excluded: not counted
   anywhere, but reported as ``excluded_ml``;
3. measuring: lung and lesion volumes per side and class, involvement (% of the lung's volume that is lesion,
   every lesion class counted, pleural effusion included), and the zone severity score (``SEVERITY_SCHEME``):
   each lung is split along z into equal-volume zones (right: 3, left: 2), each zone scored 0-5 by its
   involvement, the five scores summed to 0-25;
4. HU bands: the share of the (final) lung volume in fixed density bands (``HU_BANDS``), which needs no model.

Percentages are 0 (never NaN) for an empty lung side. Nothing here imports Qt or napari.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_covidseg.analysis.lungmask import LEFT_LUNG, RIGHT_LUNG, lung_mask
from napari_covidseg.constants import BACKGROUND, EFFUSION, LESION_CLASSES
from napari_covidseg.errors import InputError
from napari_covidseg.inference.segment import Progress, run_generator
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.io.writers import write_text_atomic

SIDES = ("right", "left", "total")
ZONES = ("right upper", "right middle", "right lower", "left upper", "left lower")  # 5 zones standing in for the lobes
# Density bands of the lung parenchyma, [lo, hi) in HU.
HU_BANDS: dict[str, tuple[float, float]] = {
    "aerated": (-950.0, -750.0),
    "ground-glass-like": (-750.0, -400.0),
    "consolidation-like": (-400.0, 0.0),
}
SEVERITY_SCHEME = (
    "0-25 CT severity score of Pan et al. (Radiology 2020;295:715-721): five zones each scored 0 (no involvement), "
    "1 (>0 to <5 %), 2 (5-25 %), 3 (>25-50 %), 4 (>50-75 %) or 5 (>75 % of the zone's lung volume involved by any "
    "lesion class) and summed, where the zones are equal-volume thirds (upper, middle, lower) of the right lung and "
    "halves (upper, lower) of the left lung along z, standing in for the five lobes because no lobe segmentation "
    "is available."
)
FOLD_MM = 10.0  # lesion voxels outside the lung mask within this distance of it are folded into the nearest lung
SPECKLE_PCT = 0.1  # a zone scored 1 from less than this % involvement gets a note (scattered voxels, not a lesion)

STAGES = ("lung mask", "folding lesions", "measuring", "HU bands")
# Zone names of each lung from inferior (low z) to superior (high z): z index increases inferior -> superior.
_SIDE_ZONES = {
    RIGHT_LUNG: ("right lower", "right middle", "right upper"),
    LEFT_LUNG: ("left lower", "left upper"),
}
_SIDE_NAMES = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}
_SCORE_LIMITS = (5.0, 25.0, 50.0, 75.0)  # upper limits (inclusive) of scores 1/2, 2, 3, 4; above 75 % -> 5
ALL_LESIONS = "all lesions"
BOTH_LUNGS = "both lungs"
OUTSIDE_LUNGS = "outside lungs"
_FACE = ndimage.generate_binary_structure(3, 1)  # 6-connectivity: "touching" and lesion components


@dataclass
class Quantification:
    """Result of :func:`quantify` for one CT and one lesion label array.

    Attributes:
        name, source: the CT's short name and file; ``spacing``: voxel size (z, y, x) in mm.
        model: the model card's name, or ``"mask: <file>"`` for a mask read from disk (free text).
        lung_ml: side ("right", "left", "total") -> lung volume in ml, after folding.
        lesion_ml: lesion class name -> side -> ml (only lesion counted inside the final lungs).
        involvement_pct: side -> % of that lung's volume that is lesion (any class).
        class_pct: class name -> side -> % of that lung's volume.
        zone_pct: zone (``ZONES``) -> % of the zone's lung volume that is lesion (any class).
        zone_score: zone -> 0..5 (``SEVERITY_SCHEME``); ``severity``: the sum, 0..25.
        hu_bands: band (``HU_BANDS``) -> side -> % of that lung's volume in the band; empty when the CT holds display
            intensities (no HU).
        hu_band_ml: band -> side -> ml (empty likewise).
        folded_ml: lesion volume outside the raw lung mask that was folded into the lungs (counted).
        excluded_ml: lesion volume far from any lung, not counted anywhere.
        notes: plain sentences on how the numbers were made and anything to watch.
    """

    name: str
    source: str
    spacing: tuple[float, float, float]
    model: str
    lung_ml: dict[str, float]
    lesion_ml: dict[str, dict[str, float]]
    involvement_pct: dict[str, float]
    class_pct: dict[str, dict[str, float]]
    zone_pct: dict[str, float]
    zone_score: dict[str, int]
    severity: int
    hu_bands: dict[str, dict[str, float]]
    hu_band_ml: dict[str, dict[str, float]]
    folded_ml: float
    excluded_ml: float
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """Tidy rows ``{"measure", "region", "class", "value", "unit"}``: every number there is to show.

        Regions are ``"right"``, ``"left"``, ``"total"`` for per-side measures, a zone name for zone measures,
        ``"both lungs"`` for the severity score and ``"outside lungs"`` for excluded lesion; ``class`` is a lesion
        class name or ``"all lesions"``, a HU band name for the band measures, and ``""`` for the lung volume.
        Order: lung volume, lesion volume, involvement, zone involvement, zone score, severity score,
        HU band volume, HU band fraction, folded into lung, excluded outside lung.
        """
        rows: list[dict] = []

        def add(measure: str, region: str, cls: str, value, unit: str) -> None:
            rows.append({"measure": measure, "region": region, "class": cls, "value": value, "unit": unit})

        for side in SIDES:
            add("lung volume", side, "", self.lung_ml[side], "ml")
        for side in SIDES:
            for cls, per_side in self.lesion_ml.items():
                add("lesion volume", side, cls, per_side[side], "ml")
            add("lesion volume", side, ALL_LESIONS, sum(v[side] for v in self.lesion_ml.values()), "ml")
        for side in SIDES:
            for cls, per_side in self.class_pct.items():
                add("involvement", side, cls, per_side[side], "%")
            add("involvement", side, ALL_LESIONS, self.involvement_pct[side], "%")
        for zone in ZONES:
            add("zone involvement", zone, ALL_LESIONS, self.zone_pct[zone], "%")
        for zone in ZONES:
            add("zone score", zone, ALL_LESIONS, self.zone_score[zone], "0-5")
        add("severity score", BOTH_LUNGS, ALL_LESIONS, self.severity, "0-25")
        for side in SIDES:
            for band, per_side in self.hu_band_ml.items():
                add("HU band volume", side, band, per_side[side], "ml")
        for side in SIDES:
            for band, per_side in self.hu_bands.items():
                add("HU band fraction", side, band, per_side[side], "%")
        add("folded into lung", "total", ALL_LESIONS, self.folded_ml, "ml")
        add("excluded outside lung", OUTSIDE_LUNGS, ALL_LESIONS, self.excluded_ml, "ml")
        return rows

    def to_dict(self) -> dict:
        """JSON-safe dict of every field, plus the scheme, fold distance and band limits used."""
        out = _json_safe(asdict(self))
        out["severity_scheme"] = SEVERITY_SCHEME
        out["fold_mm"] = FOLD_MM
        out["hu_band_limits"] = {k: list(v) for k, v in HU_BANDS.items()}
        return out


def _json_safe(obj):
    """Plain Python types only (numpy scalars/arrays converted, tuples to lists, non-finite floats to None)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


# --------------------------------------------------------------------------------------------------------- scoring


def zone_score_of(percent: float) -> int:
    """Score 0..5 of a zone from its involvement in %: 0 = 0, 1 = >0-<5, 2 = 5-25, 3 = >25-50, 4 = >50-75, 5 = >75."""
    if percent <= 0.0:
        return 0
    if percent < _SCORE_LIMITS[0]:
        return 1
    for score, limit in enumerate(_SCORE_LIMITS[1:], start=2):
        if percent <= limit:
            return score
    return 5


def zone_labels(lungs: np.ndarray) -> np.ndarray:
    """Zones of a 1/2 lung mask as uint8 (z, y, x): 0 outside, k + 1 for ``ZONES[k]``.

    Each lung is cut between slices into equal-volume parts by its cumulative voxel count along z (right lung: 3,
    left lung: 2); the high-z part is "upper". A slice goes to the part that holds the middle of its voxels.
    """
    lungs = np.asarray(lungs)
    out = np.zeros(lungs.shape, dtype=np.uint8)
    for side, names in _SIDE_ZONES.items():
        part = _slice_parts(np.count_nonzero((lungs == side).reshape(lungs.shape[0], -1), axis=1), len(names))
        for z in np.flatnonzero(part >= 0):
            out[z][lungs[z] == side] = ZONES.index(names[part[z]]) + 1
    return out


def _slice_parts(per_slice: np.ndarray, parts: int) -> np.ndarray:
    """Part index (0 = lowest z) of each slice for an equal-volume split; -1 for slices without lung."""
    per_slice = np.asarray(per_slice, dtype=np.float64)
    total = per_slice.sum()
    out = np.full(per_slice.shape, -1, dtype=np.int64)
    if total <= 0:
        return out
    middle = np.cumsum(per_slice) - 0.5 * per_slice  # lung voxels below the middle of each slice
    idx = np.minimum(np.floor(parts * middle / total).astype(np.int64), parts - 1)
    has = per_slice > 0
    out[has] = idx[has]
    return out


# --------------------------------------------------------------------------------------------------------- folding


def fold_lesions(
    lungs: np.ndarray, lesions: np.ndarray, spacing, fold_mm: float = FOLD_MM
) -> tuple[np.ndarray, np.ndarray]:
    """Fold lesion voxels lying just outside the lung mask into the nearest lung; drop those far away.

    A lesion voxel outside ``lungs`` is folded when it lies within ``fold_mm`` (Euclidean, in mm, with
    ``sampling=spacing``) of a lung voxel, or when it belongs to a 3-D (6-connected) component of outside lesion
    voxels that touches a lung (face neighbour): it is added to the lung whose voxel is nearest. Every other
    outside lesion voxel is excluded (set to 0 in the counted lesions).

    Args:
        lungs: (z, y, x) lung mask, 0 outside, 1 right, 2 left.
        lesions: (z, y, x) integer lesion labels 0..255 on the same grid.
        spacing: voxel size (z, y, x) in mm.
        fold_mm: folding distance in mm (>= 0).

    Returns:
        ``(lungs_folded, counted_lesions)``, both uint8 of the input shape: every non-zero voxel of
        ``counted_lesions`` lies inside ``lungs_folded``; lung voxels of ``lungs`` are never changed.
    """
    lungs, lesions = np.asarray(lungs), np.asarray(lesions)
    if lungs.shape != lesions.shape:
        raise InputError(f"lung mask shape {lungs.shape} does not match the lesions {lesions.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != lungs.ndim or min(spacing, default=0.0) <= 0:
        raise InputError(f"spacing {spacing} must be {lungs.ndim} positive voxel sizes in mm")
    if not fold_mm >= 0:
        raise InputError(f"fold distance must be >= 0 mm, got {fold_mm}")
    out_lungs = lungs.astype(np.uint8, copy=True)
    counted = lesions.astype(np.uint8, copy=True)
    outside = (counted > 0) & (out_lungs == 0)
    if not outside.any():
        return out_lungs, counted
    in_lung = out_lungs > 0
    if not in_lung.any():
        counted[outside] = 0
        return out_lungs, counted
    # Work in the bounding box of lungs and outside lesions (one voxel of margin for the touching test).
    box = _bbox(in_lung | outside, margin=1)
    sub_lungs, sub_out = out_lungs[box], outside[box]
    dist, idx = ndimage.distance_transform_edt(sub_lungs == 0, sampling=spacing, return_indices=True)
    fold = sub_out & (dist <= fold_mm)
    del dist
    comps, n = ndimage.label(sub_out, structure=_FACE)
    if n:
        touching = np.zeros(n + 1, dtype=bool)
        touching[np.unique(comps[sub_out & ndimage.binary_dilation(sub_lungs > 0, structure=_FACE)])] = True
        touching[0] = False
        fold |= touching[comps]
    del comps
    nearest = tuple(i[fold] for i in idx)
    del idx
    sub_lungs[fold] = sub_lungs[nearest]  # writes through the view into out_lungs
    sub_counted = counted[box]
    sub_counted[sub_out & ~fold] = 0
    return out_lungs, counted


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Bounding box of the True voxels, grown by ``margin`` voxels and clipped to the array."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(out)


# ------------------------------------------------------------------------------------------------------ quantifying


def quantify(
    volume: CTVolume,
    lesions: np.ndarray,
    *,
    lungs: np.ndarray | None = None,
    class_names: dict[int, str] | None = None,
    model: str = "",
) -> tuple[Quantification, np.ndarray]:
    """Quantify ``lesions`` on ``volume``: run :func:`iter_quantify` to the end.

    Returns the :class:`Quantification` and the final lung mask (uint8, 1 right / 2 left, folded lesions included).
    """
    return run_generator(iter_quantify(volume, lesions, lungs=lungs, class_names=class_names, model=model))


def iter_quantify(
    volume: CTVolume,
    lesions: np.ndarray,
    *,
    lungs: np.ndarray | None = None,
    lungs_note: str | None = None,
    class_names: dict[int, str] | None = None,
    model: str = "",
) -> Generator[Progress, None, tuple[Quantification, np.ndarray]]:
    """Generator form of :func:`quantify` for progress bars and cancelling (napari ``thread_worker``).

    Yields ``Progress(k, 4, STAGES[k])`` before stage k (0 "lung mask", 1 "folding lesions", 2 "measuring",
    3 "HU bands") and ``Progress(4, 4, "HU bands")`` when done; returns ``(Quantification, final lung mask)``.

    Args:
        volume: the CT (HU needed unless ``lungs`` is given; with display intensities there are no HU bands).
        lesions: (z, y, x) non-negative integer labels 0..255 on the CT grid (bool is taken as class 1).
        lungs: a precomputed lung mask (0 / 1 right / 2 left) on the CT grid; default: ``lung_mask(volume)``.
        lungs_note: what ``lungs`` is, for the notes (default "lung mask: given").
        class_names: label value -> class name; default ``LESION_CLASSES`` (background left out). Labels present
            but not named are reported as "class <k>".
        model: what made the lesions, for the report (a card name, or ``"mask: <file>"``).

    Raises:
        InputError: lesion or lung array of the wrong shape, negative, non-integer or above 255 values; a lung mask
            with values other than 0/1/2; a display-intensity volume without ``lungs``; no lung found.
    """
    if not isinstance(volume, CTVolume):
        raise InputError(f"quantify needs a CTVolume, got {type(volume).__name__}")
    labels = _check_labels(lesions, volume.shape, "lesions")
    names = _class_names(class_names, labels)
    notes: list[str] = []

    yield Progress(0, len(STAGES), STAGES[0])
    if lungs is None:
        raw = lung_mask(volume)  # InputError for display intensities
        notes.append("lung mask: classical HU lung mask (thresholds and morphology, no network)")
    else:
        raw = _check_labels(lungs, volume.shape, "lung mask")
        # values are 0..255 integers here: one max() instead of np.unique, which sorts the whole volume (~2 s)
        high = raw > max(RIGHT_LUNG, LEFT_LUNG) if raw.size and int(raw.max()) > max(RIGHT_LUNG, LEFT_LUNG) else None
        bad = set() if high is None else set(np.unique(raw[high]).tolist())
        if bad:
            raise InputError(f"lung mask values must be 0, 1 (right) or 2 (left); found {sorted(bad)}")
        notes.append(lungs_note or "lung mask: given")
    if not (raw > 0).any():
        raise InputError(
            f"no lung found in {volume.name!r}: the lung mask is empty (is this a chest CT in Hounsfield units?)"
        )

    yield Progress(1, len(STAGES), STAGES[1])
    voxel_ml = volume.voxel_volume_ml
    n_outside = int(np.count_nonzero((labels > 0) & (raw == 0)))
    final, counted = fold_lesions(raw, labels, volume.spacing)
    del raw
    n_excluded = int(np.count_nonzero(labels)) - int(np.count_nonzero(counted))
    folded_ml = (n_outside - n_excluded) * voxel_ml
    excluded_ml = n_excluded * voxel_ml
    if n_outside:
        notes.append(
            f"{folded_ml:.1f} ml of lesion lay outside the lung mask but within {FOLD_MM:g} mm of a lung or "
            "connected to a lesion touching it, and was folded into the nearest lung"
        )
    if n_excluded:
        notes.append(
            f"{excluded_ml:.1f} ml of lesion lay farther than {FOLD_MM:g} mm from the lungs and not connected to "
            "them; it is not counted (likely false positives outside the lungs)"
        )

    yield Progress(2, len(STAGES), STAGES[2])
    m = _measure(final, counted, names, voxel_ml)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        if not (final == side).any():
            notes.append(f"no {_SIDE_NAMES[side]} lung in the mask: its volumes and percentages are 0")
    if m["thin"]:
        notes.append(
            "a lung spans fewer slices than it has zones, so some zones are empty (scored 0): " + ", ".join(m["thin"])
        )
    speckle = [z for z in ZONES if 0.0 < m["zone_pct"][z] < SPECKLE_PCT]
    if speckle:
        notes.append(
            f"{', '.join(speckle)}: scored 1 from less than {SPECKLE_PCT:g} % of the zone involved; any lesion voxel "
            "scores 1, so scattered false-positive voxels raise the severity score"
        )
    if (counted == EFFUSION).any() and names.get(EFFUSION) == LESION_CLASSES[EFFUSION]:
        notes.append("involvement counts every lesion class, pleural effusion included")
    unnamed = [n for k, n in names.items() if class_names is not None and k not in class_names]
    if unnamed:
        notes.append(f"labels without a class name were reported as: {', '.join(unnamed)}")

    yield Progress(3, len(STAGES), STAGES[3])
    if volume.intensity == "HU":
        hu_pct, hu_ml = _hu_bands(volume.array, final, voxel_ml)
    else:
        hu_pct, hu_ml = {}, {}
        notes.append("HU bands not measured: the volume holds display intensities, not Hounsfield units")

    result = Quantification(
        name=volume.name,
        source=str(volume.source),
        spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
        model=str(model),
        lung_ml=m["lung_ml"],
        lesion_ml=m["lesion_ml"],
        involvement_pct=m["involvement_pct"],
        class_pct=m["class_pct"],
        zone_pct=m["zone_pct"],
        zone_score=m["zone_score"],
        severity=int(sum(m["zone_score"].values())),
        hu_bands=hu_pct,
        hu_band_ml=hu_ml,
        folded_ml=float(folded_ml),
        excluded_ml=float(excluded_ml),
        notes=notes,
    )
    yield Progress(len(STAGES), len(STAGES), STAGES[-1])
    return result, final


def _check_labels(array, shape: tuple[int, ...], what: str) -> np.ndarray:
    """An integer label array of ``shape`` with values 0..255 (bool accepted as 0/1), else InputError."""
    array = np.asarray(array)
    if array.shape != tuple(shape):
        raise InputError(f"{what} shape {array.shape} does not match the CT {tuple(shape)}")
    if array.dtype == bool:
        return array.view(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{what} must hold integer labels, got dtype {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
        raise InputError(f"{what} must hold labels 0..255, found {int(array.min())}..{int(array.max())}")
    return array


def _class_names(class_names: dict[int, str] | None, labels: np.ndarray) -> dict[int, str]:
    """Label value -> name for every lesion class to report: the named ones plus any unnamed label present."""
    base = dict(LESION_CLASSES) if class_names is None else {int(k): str(v) for k, v in class_names.items()}
    base.pop(BACKGROUND, None)
    counts = np.zeros(256, dtype=np.int64)
    for plane in labels.reshape(labels.shape[0], -1) if labels.ndim > 1 else labels[None]:
        counts += np.bincount(plane, minlength=256)[:256]  # a slice at a time: no int64 copy of the whole volume
    present = np.flatnonzero(counts[1:]) + 1
    for k in present.tolist():
        base.setdefault(int(k), f"class {k}")
    return dict(sorted(base.items()))


def _pct(part: float, whole: float) -> float:
    """100 * part / whole, 0 for an empty whole."""
    return 100.0 * float(part) / float(whole) if whole > 0 else 0.0


def _measure(lungs: np.ndarray, counted: np.ndarray, names: dict[int, str], voxel_ml: float) -> dict:
    """Lung and lesion volumes, involvement per side and class, zone involvement and scores."""
    # counts[side, label] with side 0 (outside) / 1 / 2, in one pass.
    code = lungs.astype(np.int32) * 256 + counted
    counts = np.bincount(code.ravel(), minlength=3 * 256).reshape(-1, 256)[:3].astype(np.int64)
    del code
    lung_n = {"right": counts[RIGHT_LUNG].sum(), "left": counts[LEFT_LUNG].sum()}
    lung_n["total"] = lung_n["right"] + lung_n["left"]
    cls_n = {
        name: {"right": counts[RIGHT_LUNG, k], "left": counts[LEFT_LUNG, k]} for k, name in names.items() if 0 < k < 256
    }
    for per_side in cls_n.values():
        per_side["total"] = per_side["right"] + per_side["left"]
    lesion_n = {s: counts[1:, 1:].sum() if s == "total" else counts[_side_id(s), 1:].sum() for s in SIDES}

    zone_pct: dict[str, float] = {}
    thin: list[str] = []
    nz = lungs.shape[0]
    for side, zone_names in _SIDE_ZONES.items():
        in_side = lungs == side
        per_slice = np.count_nonzero(in_side.reshape(nz, -1), axis=1)
        lesion_slice = np.count_nonzero((in_side & (counted > 0)).reshape(nz, -1), axis=1)
        del in_side
        part = _slice_parts(per_slice, len(zone_names))
        for p, zone in enumerate(zone_names):
            sel = part == p
            zone_pct[zone] = _pct(lesion_slice[sel].sum(), per_slice[sel].sum())
            if per_slice.sum() > 0 and not sel.any():
                thin.append(zone)
    zone_pct = {z: zone_pct[z] for z in ZONES}
    return {
        "lung_ml": {s: float(lung_n[s] * voxel_ml) for s in SIDES},
        "lesion_ml": {c: {s: float(n[s] * voxel_ml) for s in SIDES} for c, n in cls_n.items()},
        "involvement_pct": {s: _pct(lesion_n[s], lung_n[s]) for s in SIDES},
        "class_pct": {c: {s: _pct(n[s], lung_n[s]) for s in SIDES} for c, n in cls_n.items()},
        "zone_pct": zone_pct,
        "zone_score": {z: zone_score_of(p) for z, p in zone_pct.items()},
        "thin": thin,
    }


def _side_id(side: str) -> int:
    return RIGHT_LUNG if side == "right" else LEFT_LUNG


def _hu_bands(array: np.ndarray, lungs: np.ndarray, voxel_ml: float) -> tuple[dict, dict]:
    """Per band and side: % of the lung volume and ml with HU in [lo, hi)."""
    pct: dict[str, dict[str, float]] = {b: {} for b in HU_BANDS}
    ml: dict[str, dict[str, float]] = {b: {} for b in HU_BANDS}
    n = {}
    for side in (RIGHT_LUNG, LEFT_LUNG):
        values = array[lungs == side]
        name = _SIDE_NAMES[side]
        n[name] = values.size
        for band, (lo, hi) in HU_BANDS.items():
            ml[band][name] = float(np.count_nonzero((values >= lo) & (values < hi)))
    n["total"] = n["right"] + n["left"]
    for band in HU_BANDS:
        ml[band]["total"] = ml[band]["right"] + ml[band]["left"]
        for side in SIDES:
            pct[band][side] = _pct(ml[band][side], n[side])
            ml[band][side] *= voxel_ml
    return pct, ml


# ---------------------------------------------------------------------------------------------------------- writing


def _format(value, unit: str) -> str:
    """A CSV cell: integers as they are, ml with 2 decimals, % with 3."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.2f}" if unit == "ml" else f"{float(value):.3f}"


def write_csv(q: Quantification, path) -> Path:
    """Write ``q.rows()`` as CSV (header ``measure,region,class,value,unit``), atomically: temporary file beside
    ``path``, then ``os.replace``; a failure leaves any previous file intact and no temporary file behind."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a CSV file")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["measure", "region", "class", "value", "unit"])
    for row in q.rows():
        writer.writerow([row["measure"], row["region"], row["class"], _format(row["value"], row["unit"]), row["unit"]])
    write_text_atomic(path, text.getvalue())
    return path
