"""The correction loop in a real viewer: segment, repaint as consolidation, autosave, save, fine-tune, segment again;
what was saved survives a new viewer (a napari restart)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covidseg._widgets.correct import EDITED_KEY, CorrectWidget
from napari_covidseg._widgets.finetune import WHOLE_FOLDER, FinetuneWidget
from napari_covidseg._widgets.segment import SegmentWidget
from napari_covidseg.constants import CONSOLIDATION
from napari_covidseg.corrections import list_corrections, read_autosave
from napari_covidseg.models.checkpoint import list_checkpoints, user_models_dir
from tests.widgets.conftest import wait_for


@pytest.fixture
def home(tmp_path, monkeypatch):
    """User models and corrections in a fresh folder (never the real home)."""
    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def segment(viewer, qtbot, model: str | None = None) -> SegmentWidget:
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    if model is not None:
        assert dock.model.select(model)
    dock.run_button.click()
    wait_for(qtbot, dock.runner)
    assert dock.runner.outcome == "returned", dock.status.text()
    return dock


def test_segment_correct_save_finetune_and_segment_again(viewer_with_ct, small_phantom, qtbot, home):
    viewer = viewer_with_ct
    seg_dock = segment(viewer, qtbot)
    labels = viewer.layers["ct lesions (unet)"]

    correct = CorrectWidget(viewer)
    viewer.window.add_dock_widget(correct)
    correct.labels.setCurrentText(labels.name)
    correct.class_buttons.button(CONSOLIDATION).click()
    assert labels.selected_label == CONSOLIDATION and labels.mode == "paint"
    # repaint what the model got wrong inside the phantom's lesions as consolidation, on two slices, through
    # napari's undoable editing path (what the brush and fill tools call)
    wrong = (small_phantom.lesions > 0) & (labels.data != CONSOLIDATION)
    z1, z2 = np.flatnonzero(wrong.reshape(len(wrong), -1).any(axis=1))[[0, -1]]
    region = np.zeros_like(wrong)
    region[[z1, z2]] = wrong[[z1, z2]]
    labels.data_setitem(np.nonzero(region), CONSOLIDATION)
    assert correct.edited() == [z1, z2]
    assert correct.edited_list.count() == 2
    # the debounced autosave writes the sidecar a moment after the last edit
    folder, volume = correct._folder(), correct._volume(viewer.layers["ct"])
    qtbot.waitUntil(lambda: read_autosave(folder, volume) is not None, timeout=10_000)
    autosaved = read_autosave(folder, volume)
    assert autosaved.edited == [z1, z2]
    np.testing.assert_array_equal(autosaved.labels, labels.data)

    checked = next(z for z in range(len(wrong)) if z not in (z1, z2))
    viewer.dims.set_point(0, labels.data_to_world((checked, 0, 0))[0])
    correct.mark_button.click()  # a reviewed, unchanged slice counts too
    assert correct.edited() == sorted([z1, z2, checked])
    correct.save_button.click()
    entries = list_corrections(home / "corrections")
    assert [e.z for e in entries] == sorted([z1, z2, checked])
    assert all(CONSOLIDATION in e.classes for e in entries if e.z in (z1, z2))
    assert "saved 3" in correct.status.text()
    assert read_autosave(folder, volume) is None  # saved: the sidecar is gone

    tune = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    assert tune.base.selected_name() == "unet"
    tune.steps.setValue(3)
    tune.run_button.click()
    assert tune.run_button.text() == "Cancel"
    wait_for(qtbot, tune.runner)
    assert tune.runner.outcome == "returned", tune.status.text()
    result = tune.last_result
    new = result.checkpoint.name
    assert new == "unet-ft1" and len(tune.loss_plot.losses) == 3
    assert sorted(result.train_keys) == sorted(e.key for e in entries)
    assert "training slices" in result.evaluated_on  # 3 slices: too few to hold any back, and it says so
    card = result.checkpoint.card
    assert card.training["parent"] == "unet" and card.training["date"]
    # the new model is selected in the Segment dock at once, and segmenting with it works
    assert seg_dock.model.selected_name() == new
    seg_dock.run_button.click()
    wait_for(qtbot, seg_dock.runner)
    assert f"ct lesions ({new})" in viewer.layers
    assert viewer.layers[f"ct lesions ({new})"].data.shape == labels.data.shape


def test_work_survives_a_restart(make_napari_viewer, viewer_with_ct, qtbot, home):
    """Unsaved edits come back from the autosave in a new viewer; saved corrections and models are listed."""
    viewer = viewer_with_ct
    segment(viewer, qtbot)
    labels = viewer.layers["ct lesions (unet)"]
    correct = CorrectWidget(viewer)
    viewer.window.add_dock_widget(correct)
    correct.labels.setCurrentText(labels.name)
    labels.data_setitem((np.array([3, 3]), np.array([60, 61]), np.array([60, 60])), CONSOLIDATION)
    correct.autosave()  # what the timer does; then napari "crashes" before Save
    edited = labels.data.copy()
    ct = viewer.layers["ct"]
    data, kwargs = ct.data, {"name": "ct", "scale": ct.scale, "metadata": ct.metadata}

    again = make_napari_viewer()
    again.add_image(data, **kwargs)
    restored_dock = CorrectWidget(again)
    again.window.add_dock_widget(restored_dock)
    assert restored_dock.restore_button.isVisibleTo(restored_dock)
    restored_dock.restore_button.click()
    restored = again.layers["ct lesions (restored edits)"]
    np.testing.assert_array_equal(restored.data, edited)
    assert restored.metadata[EDITED_KEY] == [3]
    np.testing.assert_allclose(restored.scale, ct.scale)


def test_cancelling_finetuning_leaves_no_model(viewer_with_ct, qtbot, home):
    viewer = viewer_with_ct
    segment(viewer, qtbot)
    correct = CorrectWidget(viewer)
    viewer.window.add_dock_widget(correct)
    correct.labels.setCurrentText("ct lesions (unet)")
    correct.mark_button.click()
    correct.save_button.click()
    tune = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.scope.setCurrentText(WHOLE_FOLDER)
    tune.steps.setValue(500)
    tune.run_button.click()
    qtbot.waitUntil(lambda: len(tune.loss_plot.losses) >= 1, timeout=60_000)
    tune.run_button.click()  # Cancel mid-training
    wait_for(qtbot, tune.runner)
    assert tune.runner.outcome == "aborted"
    models_dir = user_models_dir()
    assert not models_dir.exists() or not any(models_dir.iterdir())  # not even a temporary file
    assert [c.name for c in list_checkpoints() if not c.bundled] == []


def test_finetune_without_saved_corrections_says_what_to_do(viewer_with_ct, home):
    tune = FinetuneWidget(viewer_with_ct)
    viewer_with_ct.window.add_dock_widget(tune)
    tune.run_button.click()
    assert "no corrections saved in this session" in tune.status.text()
    assert not tune.runner.running
    assert not tune.trash_button.isEnabled()  # bundled models cannot be trashed


def test_revert_to_parent_trashes_the_fine_tune_and_selects_the_parent(viewer_with_ct, qtbot, home):
    viewer = viewer_with_ct
    seg_dock = segment(viewer, qtbot)
    correct = CorrectWidget(viewer)
    viewer.window.add_dock_widget(correct)
    correct.labels.setCurrentText("ct lesions (unet)")
    correct.mark_button.click()
    correct.save_button.click()
    tune = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(tune)
    tune.steps.setValue(1)
    tune.run_button.click()
    wait_for(qtbot, tune.runner)
    new = tune.last_result.checkpoint.name
    assert seg_dock.model.selected_name() == new
    assert tune.base.select(new) and tune.revert_button.isEnabled()
    tune.revert_button.click()
    assert new not in [c.name for c in list_checkpoints()]
    assert seg_dock.model.selected_name() == "unet" and tune.base.selected_name() == "unet"
    trashed = list((user_models_dir() / "trash").iterdir())
    assert len(trashed) == 1 and (trashed[0] / f"{new}.safetensors").exists()  # recoverable, not deleted
