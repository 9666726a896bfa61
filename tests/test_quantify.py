"""Quantification: volumes and involvement against a phantom's truth, folding, zone severity, HU bands, CSV."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from napari_covidseg.analysis.lungmask import LEFT_LUNG, RIGHT_LUNG, lung_mask
from napari_covidseg.analysis.quantify import (
    HU_BANDS,
    SEVERITY_SCHEME,
    SIDES,
    ZONES,
    fold_lesions,
    iter_quantify,
    quantify,
    write_csv,
    zone_labels,
    zone_score_of,
)
from napari_covidseg.constants import LESION_CLASSES
from napari_covidseg.errors import InputError
from napari_covidseg.inference.segment import Progress
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.sample import Phantom, make_phantom

MEASURES = (
    "lung volume",
    "lesion volume",
    "involvement",
    "zone involvement",
    "zone score",
    "severity score",
    "HU band volume",
    "HU band fraction",
    "folded into lung",
    "excluded outside lung",
)
SIDE_IDS = {"right": (RIGHT_LUNG,), "left": (LEFT_LUNG,), "total": (RIGHT_LUNG, LEFT_LUNG)}


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(seed=0, shape=(24, 128, 128))


@pytest.fixture(scope="module")
def known(phantom):
    """Quantified against the phantom's own lung mask."""
    return quantify(phantom.volume(), phantom.lesions, lungs=phantom.lungs, model="truth")


@pytest.fixture(scope="module")
def classical(phantom):
    """Quantified against the classical lung mask (computed)."""
    return quantify(phantom.volume(), phantom.lesions, model="truth")


def true_ml(phantom: Phantom, label: int, side: str) -> float:
    voxel_ml = float(np.prod(phantom.spacing)) / 1000.0
    return int(np.count_nonzero((phantom.lesions == label) & np.isin(phantom.lungs, SIDE_IDS[side]))) * voxel_ml


def box_volume(shape=(30, 10, 20), value: float = -850.0, intensity: str = "HU") -> CTVolume:
    return CTVolume(np.full(shape, value, dtype=np.float32), (2.0, 1.0, 1.0), np.eye(4), intensity, "box.nii.gz")


def box_lungs(shape=(30, 10, 20)) -> np.ndarray:
    """Right lung = image left half (x < 10), left lung = right half: 100 voxels per slice each."""
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[:, :, : shape[2] // 2] = RIGHT_LUNG
    lungs[:, :, shape[2] // 2 :] = LEFT_LUNG
    return lungs


# ------------------------------------------------------------------------------------------------- phantom, truth


def test_lesion_volumes_equal_mask_counts(phantom, known):
    q, final = known
    np.testing.assert_array_equal(final, phantom.lungs)
    for label in (1, 2, 3):
        name = LESION_CLASSES[label]
        for side in SIDES:
            assert q.lesion_ml[name][side] == pytest.approx(true_ml(phantom, label, side), rel=1e-9, abs=1e-9)
    total_true = np.count_nonzero(phantom.lesions) * float(np.prod(phantom.spacing)) / 1000.0
    assert sum(v["total"] for v in q.lesion_ml.values()) == pytest.approx(total_true, rel=1e-9)
    assert q.folded_ml == 0.0 and q.excluded_ml == 0.0


def test_involvement_and_lung_volume_match_phantom(phantom, known):
    q, _ = known
    voxel_ml = float(np.prod(phantom.spacing)) / 1000.0
    for side, ids in SIDE_IDS.items():
        lung = np.isin(phantom.lungs, ids)
        expected = 100.0 * np.count_nonzero(lung & (phantom.lesions > 0)) / np.count_nonzero(lung)
        assert q.involvement_pct[side] == pytest.approx(expected, rel=0.02)
        assert q.lung_ml[side] == pytest.approx(np.count_nonzero(lung) * voxel_ml, rel=1e-9)
    assert q.involvement_pct["total"] > 0
    assert 0 <= q.severity <= 25 and q.severity == sum(q.zone_score.values())
    assert q.name == "phantom" and q.model == "truth"


def test_classical_mask_with_folding_keeps_lesion_volumes(phantom, classical):
    q, final = classical
    raw = lung_mask(phantom.volume())
    lesion = phantom.lesions > 0
    # the classical mask alone misses a real share of the lesions (dense ones at the chest wall) ...
    assert np.count_nonzero(lesion & (raw == 0)) > 0.05 * np.count_nonzero(lesion)
    # ... folding brings them back: every lesion voxel counted, inside the final mask
    assert not np.any(lesion & (final == 0))
    assert np.all(final[raw > 0] == raw[raw > 0])
    for label in (1, 2, 3):
        name = LESION_CLASSES[label]
        assert q.lesion_ml[name]["total"] == pytest.approx(true_ml(phantom, label, "total"), rel=0.02)
    assert q.folded_ml > 0 and q.excluded_ml == 0.0
    true_lung = np.count_nonzero(phantom.lungs) * float(np.prod(phantom.spacing)) / 1000.0
    assert q.lung_ml["total"] == pytest.approx(true_lung, rel=0.06)


def test_far_blob_is_excluded_and_touching_blob_folded(phantom):
    lesions = phantom.lesions.copy()
    lesions[10:13, 2:6, 2:6] = 1  # outside the body, in the corner of the field of view
    z, y, x = np.argwhere(phantom.lungs == RIGHT_LUNG)[0]
    lesions[z, y, max(x - 30, 0) : x] = 2  # a line in the chest wall touching the right lung, up to 36 mm long
    touching = np.count_nonzero((lesions == 2) & (phantom.lesions == 0) & (phantom.lungs == 0))
    q, final = quantify(phantom.volume(), lesions, lungs=phantom.lungs)
    voxel_ml = float(np.prod(phantom.spacing)) / 1000.0
    assert q.excluded_ml == pytest.approx(3 * 4 * 4 * voxel_ml)
    assert q.folded_ml == pytest.approx(touching * voxel_ml)
    assert np.all(final[z, y, max(x - 30, 0) : x] == RIGHT_LUNG)
    assert np.all(final[10:13, 2:6, 2:6] == 0)
    assert any("not counted" in n for n in q.notes)


def test_fold_rules_on_boxes():
    shape = (10, 60, 60)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[2:8, 10:25, 5:20] = RIGHT_LUNG
    lungs[2:8, 10:25, 35:50] = LEFT_LUNG
    lesions = np.zeros(shape, dtype=np.uint8)
    lesions[4, 12:15, 8:11] = 1  # inside
    lesions[4, 25:50, 10] = 2  # touching the right lung, reaching 25 mm away: folded by connection
    lesions[4, 5:8, 40] = 1  # 3 mm above the left lung, not touching: folded by distance
    lesions[4, 55:59, 28:31] = 3  # 31 mm from any lung, not connected: excluded
    folded, counted = fold_lesions(lungs, lesions, (2.0, 1.0, 1.0))
    assert folded.dtype == np.uint8 and counted.dtype == np.uint8
    assert np.all(folded[4, 25:50, 10] == RIGHT_LUNG)
    assert np.all(folded[4, 5:8, 40] == LEFT_LUNG)
    assert np.all(counted[4, 55:59, 28:31] == 0) and np.all(folded[4, 55:59, 28:31] == 0)
    assert np.all(folded[lungs > 0] == lungs[lungs > 0])
    assert not np.any((counted > 0) & (folded == 0))
    np.testing.assert_array_equal(counted[counted > 0], lesions[counted > 0])
    # a smaller fold distance leaves the detached piece out but still folds the connected one
    folded2, counted2 = fold_lesions(lungs, lesions, (2.0, 1.0, 1.0), fold_mm=2.0)
    assert np.all(counted2[4, 5:8, 40] == 0) and np.all(folded2[4, 25:50, 10] == RIGHT_LUNG)


# -------------------------------------------------------------------------------------------------------- severity


@pytest.mark.parametrize(
    "percent, score",
    [(0.0, 0), (1e-6, 1), (4.9, 1), (5.0, 2), (25.0, 2), (26.0, 3), (50.0, 3), (60.0, 4), (75.0, 4), (80.0, 5)],
)
def test_zone_score_boundaries(percent, score):
    assert zone_score_of(percent) == score


def fill_zone(lesions: np.ndarray, zones: np.ndarray, zone: str, n: int) -> None:
    idx = np.flatnonzero(zones.ravel() == ZONES.index(zone) + 1)[:n]
    lesions.ravel()[idx] = 1


@pytest.mark.parametrize(
    "counts, scores",
    [
        # zone voxels: right zones 1000 each (10 slices), left zones 1500 each (15 slices)
        (
            {"right upper": 0, "right middle": 49, "right lower": 50, "left upper": 375, "left lower": 390},
            {"right upper": 0, "right middle": 1, "right lower": 2, "left upper": 2, "left lower": 3},
        ),
        (
            {"right upper": 600, "right middle": 800, "right lower": 1000, "left upper": 750, "left lower": 1125},
            {"right upper": 4, "right middle": 5, "right lower": 5, "left upper": 3, "left lower": 4},
        ),
        (
            {z: 10**6 for z in ZONES},
            {z: 5 for z in ZONES},
        ),
    ],
)
def test_zone_scores_on_box_lungs(counts, scores):
    lungs = box_lungs()
    zones = zone_labels(lungs)
    # equal-volume zones; "upper" is high z
    assert set(np.unique(zones[:, :, :10])) == {1, 2, 3} and set(np.unique(zones[:, :, 10:])) == {4, 5}
    assert np.all(zones[20:, :, :10] == ZONES.index("right upper") + 1)
    assert np.all(zones[:10, :, :10] == ZONES.index("right lower") + 1)
    assert np.all(zones[15:, :, 10:] == ZONES.index("left upper") + 1)
    lesions = np.zeros_like(lungs)
    for zone, n in counts.items():
        fill_zone(lesions, zones, zone, n)
    q, _ = quantify(box_volume(), lesions, lungs=lungs)
    size = {z: 1000 if z.startswith("right") else 1500 for z in ZONES}
    for zone in ZONES:
        assert q.zone_pct[zone] == pytest.approx(100.0 * min(counts[zone], size[zone]) / size[zone])
    assert q.zone_score == scores
    assert q.severity == sum(scores.values())
    assert 0 <= q.severity <= 25


def test_empty_side_gives_zero_not_nan():
    lungs = box_lungs()
    lungs[lungs == LEFT_LUNG] = 0
    lesions = np.zeros_like(lungs)
    lesions[5, 2:4, 2:4] = 2
    q, _ = quantify(box_volume(), lesions, lungs=lungs)
    assert q.lung_ml["left"] == 0.0 and q.involvement_pct["left"] == 0.0
    assert q.zone_pct["left upper"] == 0.0 and q.zone_score["left lower"] == 0
    assert all(math.isfinite(r["value"]) for r in q.rows())
    assert any("no left lung" in n for n in q.notes)


# -------------------------------------------------------------------------------------------------------- HU bands


def test_hu_bands_on_known_values():
    volume, lungs = box_volume(), box_lungs()
    # right lung (3000 voxels): 10 % each below -950 and at 0 (no band), 20 % -900, 10 % -750 (the [lo, hi) edge ->
    # ground-glass-like), 20 % -500, 10 % -400 (-> consolidation-like), 20 % -100; left lung: -950 (aerated) only
    values = np.repeat([-1000.0, -900.0, -900.0, -750.0, -500.0, -500.0, -400.0, -100.0, -100.0, 0.0], 300)
    volume.array[lungs == RIGHT_LUNG] = values
    volume.array[lungs == LEFT_LUNG] = -950.0
    q, _ = quantify(volume, np.zeros_like(lungs), lungs=lungs)
    expected = {
        "aerated": {"right": 20.0, "left": 100.0, "total": 60.0},
        "ground-glass-like": {"right": 30.0, "left": 0.0, "total": 15.0},
        "consolidation-like": {"right": 30.0, "left": 0.0, "total": 15.0},
    }
    assert set(q.hu_bands) == set(HU_BANDS)
    for band, per_side in expected.items():
        for side, pct in per_side.items():
            assert q.hu_bands[band][side] == pytest.approx(pct)
            n_lung = 3000 if side != "total" else 6000
            assert q.hu_band_ml[band][side] == pytest.approx(pct / 100.0 * n_lung * volume.voxel_volume_ml)
    assert q.severity == 0 and q.involvement_pct["total"] == 0.0


# ----------------------------------------------------------------------------------------------- rows, CSV, output


def test_rows_cover_every_measure(known):
    q, _ = known
    rows = q.rows()
    assert {r["measure"] for r in rows} == set(MEASURES)
    assert all(set(r) == {"measure", "region", "class", "value", "unit"} for r in rows)
    by = {(r["measure"], r["region"], r["class"]): r for r in rows}
    assert by[("severity score", "both lungs", "all lesions")]["value"] == q.severity
    assert by[("involvement", "total", "all lesions")]["value"] == q.involvement_pct["total"]
    assert by[("lung volume", "left", "")]["value"] == q.lung_ml["left"]
    assert by[("HU band fraction", "right", "ground-glass-like")]["value"] == q.hu_bands["ground-glass-like"]["right"]
    assert by[("lesion volume", "total", "all lesions")]["value"] == pytest.approx(
        sum(v["total"] for v in q.lesion_ml.values())
    )
    for zone in ZONES:
        assert by[("zone score", zone, "all lesions")]["value"] == q.zone_score[zone]
    assert json.loads(json.dumps(q.to_dict()))["severity_scheme"] == SEVERITY_SCHEME
    assert "Pan" in SEVERITY_SCHEME and "lobe" in SEVERITY_SCHEME


def test_write_csv_round_trip(known, tmp_path):
    q, _ = known
    path = write_csv(q, tmp_path / "out" / "quant.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["measure", "region", "class", "value", "unit"]
        got = list(reader)
    rows = q.rows()
    assert len(got) == len(rows)
    for row, back in zip(rows, got, strict=True):
        assert (back["measure"], back["region"], back["class"], back["unit"]) == (
            row["measure"],
            row["region"],
            row["class"],
            row["unit"],
        )
        assert float(back["value"]) == pytest.approx(row["value"], abs=0.006)
    assert sorted(p.name for p in path.parent.iterdir()) == ["quant.csv"]


def test_write_csv_is_atomic(known, tmp_path, monkeypatch):
    q, _ = known
    path = tmp_path / "quant.csv"
    path.write_text("previous\n")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(InputError, match="disk full"):
        write_csv(q, path)
    assert path.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quant.csv"]


def test_progress_stages(phantom):
    gen = iter_quantify(phantom.volume(), phantom.lesions, lungs=phantom.lungs)
    seen = []
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as done:
        q, final = done.value
    assert [(p.done, p.total) for p in seen] == [(k, 4) for k in range(5)]
    assert [p.stage for p in seen[:4]] == ["lung mask", "folding lesions", "measuring", "HU bands"]
    assert all(isinstance(p, Progress) for p in seen)
    assert q.severity >= 0 and final.shape == phantom.lungs.shape


# ------------------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused(phantom):
    volume = phantom.volume()
    with pytest.raises(InputError, match="shape"):
        quantify(volume, phantom.lesions[:-1], lungs=phantom.lungs)
    with pytest.raises(InputError, match="shape"):
        quantify(volume, phantom.lesions, lungs=phantom.lungs[:, :-1])
    with pytest.raises(InputError, match="integer"):
        quantify(volume, phantom.lesions.astype(np.float32), lungs=phantom.lungs)
    with pytest.raises(InputError, match="0..255"):
        quantify(volume, phantom.lesions.astype(np.int16) - 1, lungs=phantom.lungs)
    with pytest.raises(InputError, match="lung mask values"):
        quantify(volume, phantom.lesions, lungs=phantom.lungs * 2)
    with pytest.raises(InputError, match="no lung"):
        quantify(volume, phantom.lesions, lungs=np.zeros_like(phantom.lungs))


def test_display_volume_needs_given_lungs():
    lungs = box_lungs()
    lesions = np.zeros_like(lungs)
    lesions[0, 0, 0] = 1
    display = box_volume(value=128.0, intensity="display")
    with pytest.raises(InputError, match="HU"):
        quantify(display, lesions)
    q, _ = quantify(display, lesions, lungs=lungs)
    assert q.hu_bands == {} and q.hu_band_ml == {}
    assert q.lesion_ml[LESION_CLASSES[1]]["right"] == pytest.approx(display.voxel_volume_ml)
    assert any("display intensities" in n for n in q.notes)
    assert "HU band fraction" not in {r["measure"] for r in q.rows()}


def test_module_imports_no_gui():
    import subprocess
    import sys

    code = (
        "import sys, napari_covidseg.analysis.quantify; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PySide2', 'magicgui')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_speckle_scoring_one_is_noted():
    shape = (30, 40, 20)
    lungs = box_lungs(shape)
    lesions = np.zeros_like(lungs)
    lesions[25, 0, 0] = 1  # one voxel of 4000 in the right upper zone: 0.025 %
    lesions[2, :5, 12:] = 1  # 40 voxels of 6000 in the left lower zone: 0.67 %
    q, _ = quantify(box_volume(shape), lesions, lungs=lungs)
    assert q.zone_score["right upper"] == 1 and q.zone_score["left lower"] == 1 and q.severity == 2
    speckle = [n for n in q.notes if "scattered" in n]
    assert len(speckle) == 1 and speckle[0].startswith("right upper:")
