"""Segment dock end to end in a real viewer: labels on top of the CT, fixed colours, volumes, cancel, bad input."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap

from napari_covidseg._widgets.segment import SegmentWidget
from napari_covidseg.constants import LESION_COLOURS
from napari_covidseg.layers import GEOMETRY_KEY
from tests.widgets.conftest import wait_for


def test_segment_adds_labels_on_the_ct(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    assert dock.image.currentText() == "ct"
    assert dock.model.combo.currentText() == "unet"
    assert "trained on" in dock.model.combo.toolTip()
    dock.run_button.click()
    assert dock.run_button.text() == "Cancel"
    wait_for(qtbot, dock.runner)
    ct = viewer.layers["ct"]
    labels = viewer.layers["ct lesions (unet)"]
    assert isinstance(labels, Labels)
    assert labels.data.dtype == np.uint8 and labels.data.shape == ct.data.shape
    np.testing.assert_allclose(labels.scale, ct.scale)
    np.testing.assert_allclose(labels.translate, ct.translate)
    assert labels.metadata[GEOMETRY_KEY] == ct.metadata[GEOMETRY_KEY]
    assert isinstance(labels.colormap, DirectLabelColormap)
    for class_id in (1, 2):
        np.testing.assert_allclose(labels.colormap.map(class_id), LESION_COLOURS[class_id], atol=1e-6)
    assert list(labels.features["class"][:3]) == ["background", "ground-glass opacity", "consolidation"]
    assert set(np.unique(labels.data)) <= {0, 1, 2}
    # the volume table agrees with the voxel counts of the layer
    voxel_ml = float(np.prod(ct.scale)) / 1000
    ggo_ml = float(dock.table.item(0, 1).text())
    assert dock.table.item(0, 0).text() == "ground-glass opacity"
    assert abs(ggo_ml - (labels.data == 1).sum() * voxel_ml) < 0.01
    assert dock.run_button.text() == "Segment"


def test_cancel_leaves_no_layer(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.batch.setValue(1)  # 16 yields: plenty of chances to stop
    dock.run_button.click()
    dock.run_button.click()  # Cancel
    wait_for(qtbot, dock.runner)
    assert [layer.name for layer in viewer.layers] == ["ct"]
    assert "cancelled" in dock.status.text()
    assert dock.run_button.text() == "Segment" and dock.run_button.isEnabled()


def test_closing_the_viewer_mid_run_does_not_hang(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.batch.setValue(1)
    dock.run_button.click()
    runner = dock.runner
    viewer.close()
    wait_for(qtbot, runner, timeout=60_000)
    assert runner.outcome == "aborted"  # stopped at the next batch instead of computing for a closed window
    assert not any("lesions" in layer.name for layer in viewer.layers)


def test_deleting_the_image_mid_run_cancels(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.batch.setValue(1)
    dock.run_button.click()
    viewer.layers.remove("ct")
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "aborted"
    assert len(viewer.layers) == 0
    assert "was removed" in dock.status.text()


def test_a_user_model_appears_after_rescan_and_a_damaged_one_fails_with_a_message(
    viewer_with_ct, qtbot, tmp_path, monkeypatch
):
    """A model saved while the dock is open shows up on rescan (marked as the user's); a damaged weights file
    fails inside the worker and comes back as a message and a napari notification, with no layer added."""
    from napari.utils.notifications import notification_manager

    from napari_covidseg.models.checkpoint import save_checkpoint, user_models_dir
    from tests.helpers import build_for, segmentation_card

    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    viewer = viewer_with_ct
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    card = segmentation_card("my-tiny-unet")
    ckpt = save_checkpoint(build_for(card), card, user_models_dir())
    dock.model.refresh_button.click()
    assert dock.model.select("my-tiny-unet")
    assert dock.model.combo.currentText() == "my-tiny-unet (yours)"
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned"
    assert "ct lesions (my-tiny-unet)" in viewer.layers

    ckpt.weights.write_bytes(ckpt.weights.read_bytes()[:-16] + bytes(16))  # a damaged download or disk
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "errored"
    assert "failed" in dock.status.text() and "sha256" in dock.status.text().lower()
    assert "failed" in str(notification_manager.records[-1].message)
    assert [layer.name for layer in viewer.layers] == ["ct", "ct lesions (my-tiny-unet)"]
    assert dock.run_button.text() == "Segment" and dock.run_button.isEnabled()


def test_one_time_setup_runs_once_in_a_background_thread():
    """Docks start napari's/torch's slow one-time imports off the GUI thread, once per process."""
    import sys
    import threading

    from napari_covidseg._widgets._dock import warm_in_background, warm_layer_imports

    calls = []

    def covidseg_test_warm():
        calls.append(threading.current_thread().name)

    first = warm_in_background(covidseg_test_warm)
    assert first is not None
    first.join(10)
    assert warm_in_background(covidseg_test_warm) is None  # started before: not again
    assert calls == ["covidseg-covidseg_test_warm"]  # ran once, not in the GUI thread
    warm_layer_imports()  # what the background thread and each job's first step run
    assert {"pandas", "skimage.color.colorconv"} <= set(sys.modules)


def test_broken_cards_in_the_models_folder_do_not_break_the_dock(viewer_with_ct, qtbot, tmp_path, monkeypatch):
    """A folder named like a card, nested JSON and a card asking for a 1000-deep network: the dock still lists
    the bundled models and segments with them, says once what it skipped, and lists it on the rescan button."""
    from napari.utils.notifications import notification_manager

    from napari_covidseg.models.checkpoint import user_models_dir

    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    models = user_models_dir()
    models.mkdir(parents=True)
    (models / "x.json").mkdir()
    (models / "deep.json").write_text("[" * 10_000)
    for name in ("x", "deep"):  # weights beside them, so that the cards themselves are what is wrong
        (models / f"{name}.safetensors").write_bytes(b"")
    before = len(notification_manager.records)
    dock = SegmentWidget(viewer_with_ct)
    viewer_with_ct.window.add_dock_widget(dock)
    assert dock.model.select("unet")
    messages = [str(r.message) for r in notification_manager.records[before:]]
    assert any("model card(s) skipped" in m and "deep.json" in m for m in messages), messages
    assert "deep.json" in dock.model.refresh_button.toolTip() and "x.json" in dock.model.refresh_button.toolTip()
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned"
