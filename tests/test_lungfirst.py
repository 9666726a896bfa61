"""Lung-first segmentation: lungs found, slices cropped to them, lesions kept only inside the lungs (and the switch)."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_covidseg.constants import CONSOLIDATION, EFFUSION, GGO
from napari_covidseg.errors import InputError
from napari_covidseg.inference import segment_volume
from napari_covidseg.inference.lungfirst import find_lungs, keep_in_region
from napari_covidseg.inference.preprocess import prepare_slices
from napari_covidseg.io import load_ct
from napari_covidseg.sample import make_phantom
from tests.conftest import shared


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(0, (16, 128, 128))


def _restrict(lesions: np.ndarray, region) -> np.ndarray:
    """Apply the per-slice rule of iter_segment to a whole label volume (slices without a box get nothing)."""
    out = np.zeros_like(lesions)
    grid = region.region.copy()
    for k, box in enumerate(region.boxes):
        if box is None:
            continue
        ys, xs = box
        out[k, ys, xs], grid[k, ys, xs] = keep_in_region(lesions[k, ys, xs], grid[k, ys, xs])
    return out


def test_lesions_outside_the_lungs_are_dropped_inside_kept(phantom):
    region = find_lungs(phantom.volume())
    assert region.boxes[0] is None and region.boxes[-1] is None  # the phantom's end slices hold no lung
    assert all(b is not None for b in region.boxes[1:-1])
    lesions = phantom.lesions.copy()
    body = ndimage.binary_fill_holes(phantom.ct > -500)
    # a "lesion" on the table / outside the body, one in the anterior chest wall far from the lungs, one in a
    # lung-free end slice (like the abdomen or neck)
    outside = np.zeros(lesions.shape, dtype=bool)
    outside[5:9, 120:126, 40:80] = True
    outside &= ~body
    wall = np.zeros(lesions.shape, dtype=bool)
    wall[5:9, 18:22, 58:70] = True
    assert not (wall & (phantom.lungs > 0)).any()
    assert ndimage.distance_transform_edt(phantom.lungs[6] == 0, sampling=phantom.spacing[1:])[20, 64] > 15
    lesions[outside | wall] = GGO
    lesions[0, 40:60, 30:60] = CONSOLIDATION
    kept = _restrict(lesions, region)
    assert not kept[outside | wall].any()
    assert not kept[0].any()
    truth = phantom.lesions > 0
    assert np.array_equal(kept[truth], phantom.lesions[truth])  # every phantom lesion, effusion included
    assert (phantom.lesions == EFFUSION).any()


def test_consolidation_touching_the_chest_wall_is_kept(phantom):
    region = find_lungs(phantom.volume())
    cons = phantom.lesions == CONSOLIDATION
    touching = cons & ndimage.binary_dilation(phantom.lungs == 0, structure=ndimage.generate_binary_structure(3, 1))
    assert touching.sum() > 10  # the phantom places consolidation against the pleura
    kept = _restrict(phantom.lesions, region)
    assert (kept[touching] == CONSOLIDATION).all()


def test_a_lesion_continuing_outside_the_region_is_kept_and_joins_it():
    region = np.zeros((40, 40), dtype=np.uint8)
    region[5:20, 5:20] = 2
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[10:30, 15:18] = CONSOLIDATION  # one component, half outside the region
    labels[32:36, 32:36] = GGO  # alone, far away
    kept, grown = keep_in_region(labels, region)
    assert (kept[10:30, 15:18] == CONSOLIDATION).all() and not kept[32:36, 32:36].any()
    assert (grown[10:30, 15:18] == 2).all() and not grown[32:36, 32:36].any()
    assert (grown[region > 0] == 2).all()


def test_lung_first_is_the_default_and_reports_inside_and_outside(phantom):
    volume = phantom.volume()
    seg = segment_volume(volume, "unet", device="cpu")
    assert seg.framing == "lungs" and seg.lungs is not None and "lung-first" in seg.notes[0]
    assert not seg.labels[seg.lung_region == 0].any()
    summary = seg.summary(volume.spacing)
    assert summary["framing"] == "lungs"
    assert all(v == 0 for v in summary["outside_lungs_ml"].values())
    assert sum(summary["inside_lungs_ml"].values()) == pytest.approx(sum(summary["volume_ml"].values()))
    assert summary["lung_ml"]["total"] > 0 and 0 < summary["lung_involved_pct"]["total"] < 100
    # the phantom's lesions are found inside its lungs (the bundled unet finds most of the infection)
    truth, found = phantom.lesions > 0, seg.labels > 0
    assert 2 * (truth & found).sum() / (truth.sum() + found.sum()) > 0.4

    whole = segment_volume(volume, "unet", device="cpu", framing="whole")
    assert whole.framing == "whole" and "switched off" in whole.notes[0]
    w = whole.summary(volume.spacing)
    assert w["inside_lungs_ml"] is not None and w["outside_lungs_ml"] is not None
    total = sum(w["volume_ml"].values())
    assert sum(w["inside_lungs_ml"].values()) + sum(w["outside_lungs_ml"].values()) == pytest.approx(total)


def test_slices_without_lung_get_no_lesions_and_a_scan_without_lungs_says_so(phantom):
    ct = phantom.ct.copy()
    ct[ct < -500] = 40.0  # a "phantom without air": body and lungs solid, no air anywhere
    airless = make_phantom(0, (16, 128, 128))
    airless.ct = ct
    seg = segment_volume(airless.volume(), "unet", device="cpu")
    assert seg.framing == "lungs" and not seg.labels.any()
    assert any("no lungs found" in note for note in seg.notes)
    summary = seg.summary(airless.spacing)
    assert summary["lung_ml"]["total"] == 0 and summary["lung_involved_pct"]["total"] == 0

    ct = phantom.ct.copy()
    ct[phantom.lungs > 0] = 40.0  # lungs solid, air only outside the patient: no lungs either
    airless.ct = ct
    seg = segment_volume(airless.volume(), "unet", device="cpu")
    assert not seg.labels.any() and any("no lungs found" in note for note in seg.notes)


def test_a_single_full_field_slice_is_segmented_lung_first(phantom, tmp_path):
    path = tmp_path / "one_slice.nii.gz"
    nib.save(nib.Nifti1Image(phantom.ct[8].T[:, :, None].astype(np.int16), np.diag([1.2, 1.2, 5.0, 1.0])), path)
    volume = load_ct(path)
    assert volume.shape[0] == 1
    seg = segment_volume(volume, "unet", device="cpu")
    assert seg.framing == "lungs" and seg.labels.shape == volume.shape
    assert not seg.labels[seg.lung_region == 0].any()


def test_lung_cropped_8bit_slices_are_segmented_whole_as_before(tmp_path):
    medseg = shared("medseg_covid_semiseg_infnet/TrainingSet/MultiClassInfection-Train/Imgs/0.jpg")
    volume = load_ct(medseg)
    assert volume.intensity == "display"
    seg = segment_volume(volume, "unet", device="cpu")
    assert seg.framing == "whole" and seg.lungs is None
    assert "already lung-cropped" in seg.notes[0]
    assert np.array_equal(seg.labels, segment_volume(volume, "unet", device="cpu", framing="whole").labels)
    assert seg.labels.any()  # a COVID-19 slice: lesions found, as before lung-first existed
    summary = seg.summary(volume.spacing)
    assert summary["lung_ml"] is None and summary["inside_lungs_ml"] is None
    with pytest.raises(InputError, match="Hounsfield"):
        segment_volume(volume, "unet", device="cpu", framing="lungs")
    with pytest.raises(InputError, match="framing"):
        segment_volume(volume, "unet", device="cpu", framing="sideways")


def test_hu_training_slices_are_framed_like_inference(phantom):
    """Corrections saved from full-field HU scans are prepared lung-first, display images as whole slices."""
    from napari_covidseg.models.checkpoint import resolve_model

    card = resolve_model("unet").card
    volume = phantom.volume()
    x, y = prepare_slices(volume, card, phantom.lesions)
    assert x.shape[0] == y.shape[0] == volume.shape[0]
    # lung-first zooms in on the lungs: the lesions cover more of the network input than with the body box
    crop_share = float((y > 0).float().mean())
    from napari_covidseg.inference.preprocess import prepare_array

    _, y_body = prepare_array(volume.array, "HU", card, phantom.lesions)  # no spacing: the old body-box framing
    assert crop_share > 1.2 * float((y_body > 0).float().mean())
    assert int((y == EFFUSION).sum()) > 0  # the effusion at the chest wall stays in the frame


def test_cli_segment_default_and_whole_slice(phantom, tmp_path):
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(phantom.ct.transpose(2, 1, 0).astype(np.int16), np.diag([1.2, 1.2, 5.0, 1.0])), ct)
    runs = {}
    for flag in ([], ["--whole-slice"]):
        out = tmp_path / f"m{len(flag)}.nii.gz"
        extra = ["--lungs-out", str(tmp_path / "lungs.nii.gz")] if not flag else []
        proc = subprocess.run(
            [sys.executable, "-m", "napari_covidseg", "segment", str(ct), "-o", str(out), "--device", "cpu", *flag]
            + extra,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        runs[bool(flag)] = json.loads(proc.stdout)
        assert "lesion inside the lungs" in proc.stderr
    assert runs[False]["framing"] == "lungs" and runs[True]["framing"] == "whole"
    assert all(v == 0 for v in runs[False]["outside_lungs_ml"].values())
    lungs = nib.load(tmp_path / "lungs.nii.gz")
    assert set(np.unique(np.asarray(lungs.dataobj)).tolist()) <= {0, 1, 2} and lungs.shape == (128, 128, 16)
    png = tmp_path / "slice.png"
    Image.fromarray(np.full((64, 64), 120, dtype=np.uint8)).save(png)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_covidseg",
            "segment",
            str(png),
            "-o",
            str(tmp_path / "p.nii.gz"),
            "--lungs-out",
            str(tmp_path / "pl.nii.gz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Hounsfield" in proc.stderr
