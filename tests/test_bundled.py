"""The bundled weights: they load (sha256 checked), stay small, and their cards say what they are and are not."""

from __future__ import annotations

import pytest

from napari_covidseg.constants import DIAGNOSIS_CLASSES, MEDSEG_HU_WINDOW
from napari_covidseg.models.checkpoint import list_checkpoints, resolve_model

BUNDLED = {c.name: c for c in list_checkpoints() if c.bundled}
MAX_BYTES = 10 * 1024 * 1024


def test_the_expected_models_are_bundled():
    assert {"unet", "resattunet", "daresnet18_3d"} <= set(BUNDLED)


@pytest.mark.parametrize("name", ["unet", "resattunet"])
def test_segmentation_weights_are_medseg_trained_and_say_so(name):
    ckpt = BUNDLED[name]
    assert ckpt.weights.stat().st_size < MAX_BYTES
    card = resolve_model(name, task="segmentation").card  # loads the weights: shapes and sha256 verified
    assert card.architecture == name
    assert card.class_names == ["background", "ground-glass opacity", "consolidation"]
    assert "never predicts pleural effusion" in card.notes
    assert "MedSeg" in card.training["data"] and card.training["slices"] == 50
    assert card.intensity["hu_window"] == list(MEDSEG_HU_WINDOW) and card.intensity["display_window"] == [0, 255]
    values = card.metrics["values"]
    assert "cross-validation" in card.metrics["protocol"]
    for score in ("dice ground-glass opacity", "dice consolidation", "dice infection"):
        assert len(values[score]["per_fold"]) == 5 and 0.0 <= values[score]["mean"] <= 1.0


def test_classifier_weights_are_a_demonstration_and_say_so():
    ckpt = BUNDLED["daresnet18_3d"]
    assert ckpt.weights.stat().st_size < MAX_BYTES
    card = resolve_model("daresnet18_3d", task="classification").card
    assert card.class_names == list(DIAGNOSIS_CLASSES)
    assert "pipeline check, not an accuracy" in card.notes and "do not use for diagnosis" in card.notes
    assert "leave-one-out" in card.metrics["protocol"]
