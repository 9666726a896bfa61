"""Find the lesions: after Segment the view is on the slice with the most lesion; previous / next step through the
lesion slices only, in the Segment and the Correct dock (real viewer, real model)."""

from __future__ import annotations

import numpy as np

from napari_covidseg._widgets._common import add_lesion_labels, placement
from napari_covidseg._widgets.correct import CorrectWidget
from napari_covidseg._widgets.segment import SegmentWidget
from tests.widgets.conftest import wait_for


def _viewer_slice(viewer, layer) -> int:
    return int(round(layer.world_to_data(viewer.dims.point)[0]))


def test_segment_moves_the_view_to_the_most_lesion(viewer_with_ct, qtbot):
    viewer = viewer_with_ct
    viewer.dims.set_point(0, viewer.layers["ct"].data_to_world((0, 0, 0))[0])
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    labels = viewer.layers["ct lesions (unet)"]
    counts = [int(np.count_nonzero(s)) for s in labels.data]
    assert max(counts) > 0, "the phantom's lesions were found"
    assert _viewer_slice(viewer, labels) == int(np.argmax(counts))
    assert "lesion on" in dock.navigator.where.text()
    # stepping visits every lesion slice, in order, and no other
    lesion_slices = [z for z, n in enumerate(counts) if n]
    dock.navigator.go_to(0)
    visited = []
    for _ in range(len(counts)):
        dock.navigator.next_button.click()
        z = _viewer_slice(viewer, labels)
        if visited and z == visited[-1]:
            break
        visited.append(z)
    assert visited == [z for z in lesion_slices if z > 0]
    dock.navigator.previous_button.click()
    assert _viewer_slice(viewer, labels) == (lesion_slices[-2] if len(lesion_slices) > 1 else lesion_slices[-1])


def test_correct_dock_follows_edits(viewer_with_ct, small_phantom):
    viewer = viewer_with_ct
    ct = viewer.layers["ct"]
    lesions = np.zeros_like(small_phantom.lesions)
    lesions[3, 10:20, 10:20] = 1
    classes = {0: "background", 1: "ground-glass opacity", 2: "consolidation"}
    layer = add_lesion_labels(
        viewer, lesions, small_phantom.volume("phantom"), placement(ct), "ct lesions (unet)", classes, image="ct"
    )
    dock = CorrectWidget(viewer)
    viewer.window.add_dock_widget(dock)
    assert dock.labels.currentText() == "ct lesions (unet)"
    dock.navigator.most_button.click()
    assert _viewer_slice(viewer, layer) == 3
    # a lesion painted later on slice 9, larger than the first one, is found without re-choosing the layer
    layer.data[9, 30:60, 30:60] = 2
    layer.refresh()
    dock.navigator.most_button.click()
    assert _viewer_slice(viewer, layer) == 9
    dock.navigator.previous_button.click()
    assert _viewer_slice(viewer, layer) == 3
    dock.navigator.next_button.click()
    assert _viewer_slice(viewer, layer) == 9
    dock.navigator.previous_button.click()
    assert _viewer_slice(viewer, layer) == 3
    dock.navigator.previous_button.click()
    assert _viewer_slice(viewer, layer) == 3 and "no lesion slice below" in dock.navigator.where.text()
