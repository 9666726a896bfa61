"""Right defaults in every dock: image pickers offer and preselect CT images (never a CAM); lesion pickers
preselect the latest lesion layer of the chosen CT (never the disagreement map or the lung mask); a choice made by
hand is kept while layers come and go."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covidseg._widgets._common import add_lesion_labels, add_lung_labels, placement
from napari_covidseg._widgets.classify import ClassifyWidget
from napari_covidseg._widgets.compare import CompareWidget
from napari_covidseg._widgets.correct import CorrectWidget
from napari_covidseg._widgets.quantify import QuantifyWidget
from napari_covidseg._widgets.segment import SegmentWidget
from napari_covidseg.layers import CAM, DISAGREEMENT, ROLE_KEY, SOURCE_KEY, image_layer_data

DOCKS = [SegmentWidget, ClassifyWidget, CompareWidget, QuantifyWidget, CorrectWidget]


def _derived_layers(viewer, phantom, image="ct"):
    """What the docks leave on top of a CT after a session: lesions of two models, a lung mask, a disagreement map
    and a CAM (same metadata as the docks write)."""
    ct = viewer.layers[image]
    like = placement(ct)
    volume = phantom.volume("phantom")
    classes = {0: "background", 1: "ground-glass opacity", 2: "consolidation"}
    for model in ("unet", "resattunet"):
        add_lesion_labels(viewer, phantom.lesions, volume, like, f"{image} lesions ({model})", classes, image=image)
    add_lung_labels(viewer, phantom.lungs, volume, like, f"{image} lungs")
    viewer.add_labels(
        np.zeros_like(phantom.lesions),
        name=f"{image} disagreement (unet vs resattunet)",
        scale=ct.scale,
        metadata={"classes": {0: "agree"}, "models": ["unet", "resattunet"], ROLE_KEY: DISAGREEMENT},
    )
    viewer.add_image(
        np.zeros(phantom.lesions.shape, np.float32),
        name=f"{image} CAM COVID-19 (daresnet18_3d)",
        scale=ct.scale,
        colormap="hot",
        metadata={"cam class": "COVID-19", ROLE_KEY: CAM, SOURCE_KEY: image},
    )


@pytest.mark.parametrize("dock_class", DOCKS, ids=lambda c: c.__name__)
def test_pickers_preselect_the_ct_and_its_latest_lesions(viewer_with_ct, small_phantom, dock_class):
    viewer = viewer_with_ct
    dock = dock_class(viewer)
    viewer.window.add_dock_widget(dock)
    _derived_layers(viewer, small_phantom)
    images = [dock.image.itemText(i) for i in range(dock.image.count())]
    assert images == ["ct"], images  # the CAM is not offered as an image
    assert dock.image.layer() is viewer.layers["ct"]
    lesions = getattr(dock, "lesions", None) or getattr(dock, "labels", None)
    if lesions is not None:
        offered = [lesions.itemText(i) for i in range(lesions.count())]
        assert offered == ["ct lesions (resattunet)", "ct lesions (unet)"], offered
        assert lesions.currentText() == "ct lesions (resattunet)"  # the latest, never the disagreement map
    reference = getattr(dock, "reference", None)
    if reference is not None:
        assert reference.currentText() == "(none)"  # ground truth is never guessed
        assert "ct disagreement (unet vs resattunet)" not in [reference.itemText(i) for i in range(reference.count())]


def test_a_choice_by_hand_is_kept_and_a_new_ct_brings_its_own_lesions(viewer_with_ct, small_phantom):
    viewer = viewer_with_ct
    dock = QuantifyWidget(viewer)
    viewer.window.add_dock_widget(dock)
    _derived_layers(viewer, small_phantom)
    dock.lesions.setCurrentText("ct lesions (unet)")  # chosen by hand
    viewer.layers["ct lesions (unet)"].name = "ct lesions corrected"
    assert dock.lesions.currentText() == "ct lesions corrected"  # renamed: still the choice
    like = placement(viewer.layers["ct"])
    add_lesion_labels(
        viewer, small_phantom.lesions, small_phantom.volume("phantom"), like, "ct lesions (v3)", {}, image="ct"
    )
    assert dock.lesions.currentText() == "ct lesions corrected"  # a new layer does not take over a hand choice
    data, kwargs, _ = image_layer_data(small_phantom.volume("phantom"), name="second")
    viewer.add_image(data, **kwargs)
    assert dock.image.currentText() == "second"  # the newest CT (no hand choice of image yet)
    _derived_layers(viewer, small_phantom, image="second")
    assert dock.image.currentText() == "second"
    assert dock.lesions.currentText() == "second lesions (resattunet)"
    dock.image.setCurrentText("ct")
    assert dock.lesions.currentText() == "ct lesions (v3)"  # the CT's own latest lesions
    viewer.add_image(np.zeros((4, 8, 8, 3), np.uint8), name="photo", rgb=True)
    assert dock.image.currentText() == "ct"
