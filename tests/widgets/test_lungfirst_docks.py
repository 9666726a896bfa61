"""Lung-first in the docks: the switch, the numbers inside / outside the lungs, the lung layer, masks opened back."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_covidseg._napari_io import read_ct
from napari_covidseg._widgets.compare import CompareWidget
from napari_covidseg._widgets.quantify import QuantifyWidget
from napari_covidseg._widgets.segment import SegmentWidget
from napari_covidseg.inference import segment_volume
from napari_covidseg.io import save_array, save_labels
from tests.widgets.conftest import wait_for


def _headers(table) -> list[str]:
    return [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]


def test_segment_dock_reports_lesions_inside_the_lungs_and_adds_the_lung_mask(viewer_with_ct, small_phantom, qtbot):
    viewer = viewer_with_ct
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    assert dock.lungs_only.isChecked() and dock.lungs_only.text() == "only inside the lungs"
    dock.show_lungs.setChecked(True)
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    lesions = viewer.layers["ct lesions (unet)"]
    assert lesions.metadata["framing"] == "lungs"
    lungs = viewer.layers["ct lungs"]
    assert isinstance(lungs, Labels) and lungs.contour == 1
    assert set(np.unique(lungs.data).tolist()) <= {0, 1, 2} and (lungs.data > 0).any()
    assert viewer.layers.selection.active is lesions  # the lesions stay the layer to correct
    assert _headers(dock.table) == ["class", "inside lungs (ml)"]
    seg = dock.last_result
    assert not lesions.data[seg.lung_region == 0].any()
    summary = seg.summary(small_phantom.spacing)
    assert f"{summary['lung_involved_pct']['total']:.2f} % of" in dock.summary.text()
    assert "lung-first" in dock.summary.text()
    # the same numbers as the API
    api = segment_volume(small_phantom.volume("phantom"), "unet", device="cpu")
    np.testing.assert_array_equal(api.labels, lesions.data)


def test_switching_lung_first_off_segments_whole_slices_and_says_what_lies_outside(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.lungs_only.setChecked(False)
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    assert viewer.layers["ct lesions (unet)"].metadata["framing"] == "whole"
    assert "ct lungs" not in viewer.layers  # only on request
    assert _headers(dock.table) == ["class", "inside lungs (ml)", "outside lungs (ml)"]
    assert "switched off" in dock.summary.text()


def test_compare_dock_uses_the_same_lung_first_segmentation(viewer_with_ct, small_phantom, qtbot):
    viewer = viewer_with_ct
    dock = CompareWidget(viewer)
    viewer.window.add_dock_widget(dock)
    assert dock.lungs_only.isChecked()
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    volume = small_phantom.volume("phantom")
    for model in ("unet", "resattunet"):
        expected = segment_volume(volume, model, device="cpu").labels
        np.testing.assert_array_equal(viewer.layers[f"ct lesions ({model})"].data, expected)


def test_quantify_table_shows_lesion_outside_the_lungs(viewer_with_ct, small_phantom, qtbot):
    viewer = viewer_with_ct
    lesions = small_phantom.lesions.copy()
    lesions[8, 2:6, 50:80] = 1  # in front of the body: far from any lung
    viewer.add_labels(lesions, name="lesions", scale=viewer.layers["ct"].scale)
    dock = QuantifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.lesions.setCurrentText("lesions")
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    q = dock.last[0]
    assert q.excluded_ml > 0
    rows = {dock.table.item(r, 0).text(): r for r in range(dock.table.rowCount())}
    row = rows["lesion OUTSIDE the lungs, not counted (ml)"]
    assert float(dock.table.item(row, 3).text()) == pytest.approx(q.excluded_ml, abs=0.05)
    assert dock.table.item(row, 1).text() == ""  # a total, not per lung


def test_a_saved_mask_opens_as_labels_on_its_scan(small_phantom, tmp_path):
    volume = small_phantom.volume("phantom")
    seg = segment_volume(volume, "unet", device="cpu")
    mask = save_labels(seg.labels, like=volume, path=tmp_path / "phantom_lesions.nii.gz")
    lungs = save_labels(seg.lungs, like=volume, path=tmp_path / "phantom_lungs.nii.gz")
    ct = save_array(np.rint(volume.array).astype(np.int16), like=volume, path=tmp_path / "phantom_ct.nii.gz")
    ((data, kwargs, kind),) = read_ct(str(mask))
    assert kind == "labels" and data.dtype == np.uint8
    np.testing.assert_array_equal(data, seg.labels)
    np.testing.assert_allclose(kwargs["scale"], volume.spacing)
    assert kwargs["features"]["class"][1] == "ground-glass opacity"
    ((data, kwargs, kind),) = read_ct(str(lungs))
    assert kind == "labels" and kwargs["features"]["class"][1] == "right lung"
    ((_, _, kind),) = read_ct(str(ct))
    assert kind == "image"  # a CT in HU has negative values: never taken for labels
