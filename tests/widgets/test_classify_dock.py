"""Classify dock in a real viewer: probabilities, a CAM layer on the CT, the model's note, cancel, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image

from napari_covidseg._widgets.classify import ClassifyWidget
from napari_covidseg.constants import CAM_THRESHOLD, DIAGNOSIS_CLASSES
from napari_covidseg.layers import GEOMETRY_KEY
from tests.widgets.conftest import wait_for


def test_classify_shows_probabilities_and_adds_a_cam(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    assert dock.image.currentText() == "ct"
    assert dock.model.combo.currentText() == "daresnet18_3d"
    dock.run_button.click()
    assert dock.run_button.text() == "Cancel"
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    result = dock.last_result
    assert list(result.probabilities) == list(DIAGNOSIS_CLASSES)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    for name, p in result.probabilities.items():
        bar = dock.prob_bars[name]
        assert bar.value() == round(100 * p)
        assert name in bar.text() and f"{100 * p:.1f} %" in bar.text()
    assert dock.prob_bars[result.predicted].font().bold()

    ct = viewer.layers["ct"]
    cam = viewer.layers[f"ct CAM {result.cam_class} (daresnet18_3d)"]
    assert result.cam_class == result.predicted
    assert isinstance(cam, Image)
    assert cam.data.dtype == np.float32 and cam.data.shape == ct.data.shape
    assert float(cam.data.min()) >= 0.0 and float(cam.data.max()) <= 1.0
    # readable over the CT: transparent below the threshold, translucent above it, a colour bar, right above its CT
    # (under the lesion labels), and plain words in the dock
    assert cam.colormap.name == "covidseg CAM" and str(cam.blending) == "translucent"
    assert cam.colormap.map(np.array([0.0, CAM_THRESHOLD - 0.05]))[:, 3].max() == 0
    assert 0 < cam.colormap.map(np.array([0.9]))[0, 3] < 1
    assert cam.colorbar.visible
    assert viewer.layers.index(cam) == viewer.layers.index(ct) + 1
    assert (
        result.cam_class in dock.cam_text.text()
        and "not where disease is" in dock.cam_text.text()
        and dock.cam_text.toolTip()
    )
    assert tuple(cam.contrast_limits) == (0.0, 1.0)
    np.testing.assert_allclose(cam.scale, ct.scale)
    np.testing.assert_allclose(cam.translate, ct.translate)
    assert cam.metadata[GEOMETRY_KEY] == ct.metadata[GEOMETRY_KEY]
    assert cam.metadata["diagnosis probabilities"] == result.probabilities
    assert cam.metadata["model"] == "daresnet18_3d"

    # demonstration weights: the card's warning is on screen, under the result
    assert result.card.notes and result.card.notes in dock.note.text()
    assert "do not use for diagnosis" in dock.note.text()
    assert dock.note.isVisibleTo(dock)
    assert dock.run_button.text() == "Classify" and dock.run_button.isEnabled()


def test_cam_for_a_chosen_class(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.cam_for.setCurrentText("normal")
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.last_result.cam_class == "normal"
    assert "ct CAM normal (daresnet18_3d)" in viewer.layers


def test_cancel_leaves_no_layer(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.run_button.click()
    dock.run_button.click()  # Cancel before the event loop runs: the worker stops at its first yield
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "aborted"
    assert [layer.name for layer in viewer.layers] == ["ct"]
    assert "cancelled" in dock.status.text()
    assert dock.last_result is None
    assert dock.run_button.text() == "Classify" and dock.run_button.isEnabled()


def test_a_2d_slice_gets_a_2d_cam(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    ct = viewer.layers["ct"]
    viewer.add_image(np.asarray(ct.data[8]), name="slice", scale=ct.scale[1:])
    dock = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.image.setCurrentText("slice")
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    cam = viewer.layers[f"slice CAM {dock.last_result.cam_class} (daresnet18_3d)"]
    assert cam.data.shape == ct.data.shape[1:] and cam.data.dtype == np.float32
    np.testing.assert_allclose(cam.scale, ct.scale[1:])
