"""Compare dock end to end in a real viewer: two models, their disagreement, Dice between them and vs a reference."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from napari_covidseg._widgets.compare import CompareWidget
from napari_covidseg.analysis.compare import INFECTION_ROW
from napari_covidseg.analysis.metrics import INFECTION, score_image
from napari_covidseg.layers import CT_VIEW, GEOMETRY_KEY, layer_role
from tests.widgets.conftest import wait_for


def _dock(viewer) -> CompareWidget:
    dock = CompareWidget(viewer)
    viewer.window.add_dock_widget(dock)
    return dock


def test_compare_adds_both_results_and_their_disagreement(viewer_with_ct, small_phantom, qtbot):
    viewer = viewer_with_ct
    ct = viewer.layers["ct"]
    viewer.add_labels(small_phantom.lesions, name="truth", scale=ct.scale)
    dock = _dock(viewer)
    assert dock.image.currentText() == "ct"
    assert (dock.model_a.combo.currentText(), dock.model_b.combo.currentText()) == ("unet", "resattunet")
    assert dock.reference.currentText() == "(none)"
    dock.reference.setCurrentText("truth")
    assert not viewer.grid.enabled and not dock.grid.isChecked()
    dock.run_button.click()
    assert dock.run_button.text() == "Cancel"
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    assert dock.run_button.text() == "Compare"

    a_layer, b_layer = viewer.layers["ct lesions (unet)"], viewer.layers["ct lesions (resattunet)"]
    diff_layer = viewer.layers["ct disagreement (unet vs resattunet)"]
    # the grid: three panels, each the CT (or a view of its very array) under one result, named; the rest hidden
    views = [layer for layer in viewer.layers if layer_role(layer) == CT_VIEW]
    assert len(viewer.layers) == 7 and len(views) == 2 and not viewer.layers["truth"].visible
    assert all(view.data is ct.data for view in views)
    boxes = viewer.grid.iter_viewboxes(viewer.layers)
    panels = [tuple(viewer.layers[i] for i in indices) for _, indices in boxes if indices]
    assert [panel[1] for panel in panels] == [a_layer, b_layer, diff_layer]
    assert [panel[0] for panel in panels] == [ct, *views]
    assert all(panel[1].name_overlay.visible for panel in panels)
    for layer in (a_layer, b_layer, diff_layer):
        assert isinstance(layer, Labels)
        assert np.issubdtype(layer.data.dtype, np.integer) and layer.data.shape == ct.data.shape
        np.testing.assert_allclose(layer.scale, ct.scale)
        np.testing.assert_allclose(layer.translate, ct.translate)
        assert layer.metadata[GEOMETRY_KEY] == ct.metadata[GEOMETRY_KEY]

    a, b, diff = np.asarray(a_layer.data), np.asarray(b_layer.data), np.asarray(diff_layer.data)
    expected = np.zeros_like(diff)
    expected[(a > 0) & (b == 0)] = 1
    expected[(a == 0) & (b > 0)] = 2
    expected[(a > 0) & (b > 0) & (a != b)] = 3
    np.testing.assert_array_equal(diff, expected)
    assert set(np.unique(diff)) <= {0, 1, 2, 3}
    np.testing.assert_allclose(diff_layer.colormap.map(1), (1.0, 0.0, 1.0, 1.0), atol=1e-6)
    np.testing.assert_allclose(diff_layer.colormap.map(2), (0.0, 1.0, 1.0, 1.0), atol=1e-6)
    assert diff_layer.colormap.map(0)[3] == 0
    assert list(diff_layer.features["class"][1:3]) == ["lesion only in unet", "lesion only in resattunet"]

    assert viewer.grid.enabled and dock.grid.isChecked()
    # the view is on the slice where the two models disagree most
    per_slice = [int(np.count_nonzero(s)) for s in diff]
    assert max(per_slice) > 0  # the two bundled models do disagree on the phantom
    assert int(round(diff_layer.world_to_data(viewer.dims.point)[0])) == int(np.argmax(per_slice))

    # one row per lesion class of unet's card plus the infection group, in the table and in last_rows
    rows = dock.last_rows
    assert [row["class"] for row in rows] == ["ground-glass opacity", "consolidation", INFECTION_ROW]
    assert dock.table.rowCount() == 3 and dock.table.item(2, 0).text() == INFECTION_ROW
    headers = [dock.table.horizontalHeaderItem(c).text().replace("\n", " ") for c in range(dock.table.columnCount())]
    assert headers == ["class", "A ml", "B ml", "Dice A\u2013B", "Dice A\u2013ref", "Dice B\u2013ref"]
    assert "A = <b>unet</b>, B = <b>resattunet</b>" in dock.legend.text()
    assert dock.table.horizontalHeader().length() <= dock.table.viewport().width()  # no sideways scrolling
    ab = score_image(a, b, (1, 2), INFECTION)
    a_ref = score_image(a, small_phantom.lesions, (1, 2), INFECTION)
    b_ref = score_image(b, small_phantom.lesions, (1, 2), INFECTION)
    voxel_ml = float(np.prod(ct.scale)) / 1000
    for row, key, ids in zip(rows, ("ground-glass opacity", "consolidation", "infection"), ((1,), (2,), (1, 2))):
        np.testing.assert_allclose(row["dice A vs B"], ab[key]["dice"], atol=1e-6, equal_nan=True)
        assert np.isfinite(row["dice A vs reference"]) and np.isfinite(row["dice B vs reference"])
        np.testing.assert_allclose(row["dice A vs reference"], a_ref[key]["dice"], atol=1e-6)
        np.testing.assert_allclose(row["dice B vs reference"], b_ref[key]["dice"], atol=1e-6)
        np.testing.assert_allclose(row["volume A (ml)"], np.isin(a, ids).sum() * voxel_ml, rtol=1e-6)
        np.testing.assert_allclose(row["volume B (ml)"], np.isin(b, ids).sum() * voxel_ml, rtol=1e-6)
    for r, row in enumerate(rows):
        dice = dock.table.item(r, 3).text()
        assert dice == ("\u2013" if np.isnan(row["dice A vs B"]) else f"{row['dice A vs B']:.3f}")

    dock.grid.setChecked(False)  # the checkbox drives napari's grid, and follows it
    assert not viewer.grid.enabled
    # one view again: the CT views gone, the reference back, the disagreement on top, the two results hidden
    assert len(viewer.layers) == 5 and viewer.layers["truth"].visible
    assert viewer.layers[-1] is diff_layer and diff_layer.visible
    assert not a_layer.visible and not b_layer.visible and not diff_layer.name_overlay.visible
    viewer.grid.enabled = True  # napari's own grid button lays the comparison out again
    assert dock.grid.isChecked() and len(viewer.layers) == 7


def test_compare_reuses_an_equal_segment_result(viewer_with_ct, qtbot):
    """A result Segment already made is not added a second time ("ct lesions (unet) [1]"), nor the other way round."""
    from napari_covidseg._widgets.segment import SegmentWidget

    viewer = viewer_with_ct
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    segment.run_button.click()
    wait_for(qtbot, segment.runner)
    first = viewer.layers["ct lesions (unet)"]
    dock = _dock(viewer)
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert viewer.layers["ct lesions (unet)"] is first
    assert not any("[1]" in layer.name for layer in viewer.layers)
    dock.grid.setChecked(False)
    names = ["ct", "ct lesions (unet)", "ct lesions (resattunet)", "ct disagreement (unet vs resattunet)"]
    assert [layer.name for layer in viewer.layers] == names
    segment.run_button.click()  # and Segment after Compare: the same result, the same layer, shown again
    wait_for(qtbot, segment.runner)
    assert [layer.name for layer in viewer.layers] == names and first.visible


def test_cancel_right_after_run_adds_nothing(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = _dock(viewer)
    dock.run_button.click()
    dock.run_button.click()  # Cancel, before the event loop ran once
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "aborted"
    assert [layer.name for layer in viewer.layers] == ["ct"]
    assert "cancelled" in dock.status.text()
    assert dock.run_button.text() == "Compare" and dock.run_button.isEnabled()
    assert dock.last_rows == [] and not viewer.grid.enabled


def test_bad_reference_or_same_model_is_refused(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    viewer.add_labels(np.zeros((4, 32, 32), dtype=np.uint8), name="other scan")
    dock = _dock(viewer)
    dock.reference.setCurrentText("other scan")
    dock.run_button.click()
    assert "shape" in dock.status.text() and "other scan" in dock.status.text()
    assert not dock.runner.running and dock.runner.outcome == ""
    dock.reference.setCurrentText("(none)")
    dock.model_b.select("unet")
    dock.run_button.click()
    assert "two different models" in dock.status.text()
    assert not dock.runner.running
    assert [layer.name for layer in viewer.layers] == ["ct", "other scan"]
    assert dock.run_button.text() == "Compare"
