"""Quantify dock in a real viewer: the same numbers as the core (and so the CLI), a lung layer, CSV and report."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from napari.layers import Labels

from napari_covidseg._widgets.quantify import QuantifyWidget
from napari_covidseg.analysis.quantify import quantify
from napari_covidseg.layers import labels_layer_kwargs
from tests.widgets.conftest import wait_for


def add_reference(viewer, phantom):
    ct = viewer.layers["ct"]
    like = {"scale": ct.scale, "translate": ct.translate, "metadata": ct.metadata}
    return viewer.add_labels(phantom.lesions, **labels_layer_kwargs("reference lesions", like))


def test_quantify_shows_the_core_numbers_and_exports(viewer_with_ct, small_phantom, qtbot, tmp_path):
    viewer = viewer_with_ct
    add_reference(viewer, small_phantom)
    dock = QuantifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    assert not dock.csv_button.isEnabled()
    dock.lesions.setCurrentText("reference lesions")
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    q = dock.last[0]
    expected, lungs = quantify(small_phantom.volume("phantom"), small_phantom.lesions)
    assert q.severity == expected.severity and 0 <= q.severity <= 25
    for name, by_side in expected.lesion_ml.items():
        for side, ml in by_side.items():
            assert q.lesion_ml[name][side] == pytest.approx(ml)
    lung_layer = viewer.layers["ct lungs"]
    assert isinstance(lung_layer, Labels) and lung_layer.contour == 1
    np.testing.assert_array_equal(lung_layer.data, lungs)
    np.testing.assert_allclose(lung_layer.scale, viewer.layers["ct"].scale)
    # the table shows the lung volumes and total involvement as computed
    assert dock.table.item(0, 0).text() == "lung volume (ml)"
    assert float(dock.table.item(0, 3).text()) == pytest.approx(q.lung_ml["total"], abs=0.05)
    assert f"{q.severity} / 25" in dock.severity.text()
    assert dock.csv_button.isEnabled()
    rows = list(csv.DictReader(dock.export_csv(tmp_path / "q.csv").read_text().splitlines()))
    assert any(r["measure"] == "severity score" for r in rows)
    html = dock.save_report(tmp_path / "q.html").read_text()
    assert "not for diagnostic use" in html.lower()


def test_lesions_of_another_scan_give_a_message(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    viewer.add_labels(np.zeros((3, 16, 16), dtype=np.uint8), name="other")
    dock = QuantifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.lesions.setCurrentText("other")
    dock.run_button.click()
    assert "was not drawn on" in dock.status.text() and not dock.runner.running
    assert [layer.name for layer in viewer.layers] == ["ct", "other"]


def test_quantify_reuses_the_lung_mask_of_segment(viewer_with_ct, small_phantom, qtbot):
    """After Segment, Quantify takes the lung mask Segment made of that very CT (the same classical mask, not computed
    twice) and gives the numbers the core gives when it computes the mask itself."""
    from napari_covidseg._widgets.segment import SegmentWidget

    viewer = viewer_with_ct
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    segment.run_button.click()
    wait_for(qtbot, segment.runner)
    dock = QuantifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    assert dock.lesions.currentText() == "ct lesions (unet)"
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    q, _, lesions, lungs = dock.last
    assert any("made when segmenting" in note for note in q.notes)
    classes = {1: "ground-glass opacity", 2: "consolidation"}  # the unet card's lesion classes, as the dock passes
    expected, expected_lungs = quantify(small_phantom.volume("phantom"), lesions, class_names=classes)
    np.testing.assert_array_equal(lungs, expected_lungs)
    assert q.involvement_pct == pytest.approx(expected.involvement_pct)
    for name, by_side in expected.lesion_ml.items():
        assert q.lesion_ml[name] == pytest.approx(by_side)
    assert q.severity == expected.severity
