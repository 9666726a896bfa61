"""Bad input in any dock (they share JobDock.run): a message in the dock, no job, no layer, no traceback."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covidseg._widgets.classify import ClassifyWidget
from napari_covidseg._widgets.compare import CompareWidget
from napari_covidseg._widgets.segment import SegmentWidget


@pytest.mark.parametrize("dock_class", [SegmentWidget, ClassifyWidget, CompareWidget])
def test_wrong_layer_gives_a_message(make_napari_viewer, dock_class):
    viewer = make_napari_viewer()
    dock = dock_class(viewer)
    viewer.window.add_dock_widget(dock)
    dock.run_button.click()  # no image at all
    assert "choose an image layer" in dock.status.text()
    viewer.add_labels(np.zeros((4, 32, 32), dtype=np.uint8), name="masks")
    assert dock.image.count() == 0  # Labels are not offered as images
    viewer.add_image(np.zeros((4, 32, 32, 3), dtype=np.uint8), name="photo", rgb=True)
    dock.image.setCurrentText("photo")
    dock.run_button.click()
    assert "RGB" in dock.status.text()
    viewer.add_image(np.zeros((2, 3, 16, 16), dtype=np.float32), name="4-D")
    dock.image.setCurrentText("4-D")
    dock.run_button.click()
    assert "4 dimensions" in dock.status.text()
    assert not dock.runner.running and dock.run_button.text() == dock.RUN_TEXT
    assert [layer.name for layer in viewer.layers] == ["masks", "photo", "4-D"]
