"""Whole training runs: `covidseg train` writes a model that loads and segments; CV folds score held-out slices."""

from __future__ import annotations

import json

import pytest
import torch

from napari_covidseg.cli import main
from napari_covidseg.inference import segment_volume
from napari_covidseg.io import load_ct
from napari_covidseg.models.checkpoint import resolve_model
from napari_covidseg.training import train_segmentation
from napari_covidseg.training.datasets import contiguous_folds, load_medseg, medseg_pairs
from napari_covidseg.training.run import TrainSettings, cross_validate_fold, new_card
from tests.helpers import build_for, segmentation_card
from tests.test_datasets import write_medseg, write_pairs

TINY = ["--steps", "4", "--size", "32", "--crop", "24", "--width", "4", "--batch-size", "2"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_cli_train_writes_a_model_that_loads_and_segments(tmp_path, home, capsys):
    data = write_pairs(tmp_path / "pairs")
    assert main(["train", str(data), "-o", "my-model", *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 4 and out["model"] == "my-model"
    loaded = resolve_model("my-model", task="segmentation")  # found in the user models folder by name
    assert loaded.card.training["slices"] > 0 and loaded.card.training["protocol"]["steps"] == 4
    assert [c["name"] for c in loaded.card.classes][:3] == ["background", "ground-glass opacity", "consolidation"]
    volume = load_ct(data / "images" / "scan1.nii.gz")
    labels = segment_volume(volume, loaded, device="cpu").labels
    assert labels.shape == volume.shape
    # the name is taken now: a second run refuses before training, and the first model is untouched
    weights = home / "models" / "my-model.safetensors"
    before = weights.read_bytes()
    assert main(["train", str(data), "-o", "my-model", *TINY]) == 2
    assert "already exists" in capsys.readouterr().err and weights.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "nope"], "unknown architecture"),
        (["--arch", "daresnet18_3d"], "not a 2D segmentation network"),
        (["-o", "../escape"], "model name"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_cli_train_bad_arguments_exit_2(tmp_path, home, capsys, args, message):
    data = write_pairs(tmp_path / "pairs", seeds=(1,))
    argv = ["train", str(data), "-o", "m", *TINY, *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (home / "models").exists() or not list((home / "models").iterdir())


def test_plateau_schedule_lowers_the_rate_when_loss_stalls():
    card = segmentation_card(size=16)
    images = torch.rand(4, 1, 16, 16)
    labels = (images[:, 0] > 0.5).long()
    model = build_for(card)
    result = train_segmentation(
        model, images, labels, steps=30, batch_size=4, lr=0.5, device="cpu", augment=False, schedule="plateau"
    )
    assert result.steps == 30 and all(torch.isfinite(torch.tensor(result.losses)))
    with pytest.raises(ValueError, match="schedule"):
        train_segmentation(model, images, labels, steps=1, schedule="linear")


def test_cross_validation_fold_scores_only_held_out_slices(tmp_path):
    root = write_medseg(tmp_path / "medseg", n=4)
    pairs = medseg_pairs(root)
    card = new_card("cv", "unet", {"base_width": 4}, size=32)
    data = load_medseg(root, card, pairs)
    folds = contiguous_folds(len(pairs), 2)
    report = cross_validate_fold(data, folds, 1, card, TrainSettings(steps=2, batch_size=2, crop=24), device="cpu")
    assert report["held_out"] == ["2.jpg", "3.jpg"] and report["images"] == 2
    assert card.training["images"] == ["0", "1"]  # trained on the other fold only
    assert 0.0 <= report["dice"]["infection"]["pooled"] <= 1.0


def test_labels_the_model_cannot_output_are_refused_before_training(tmp_path):
    from napari_covidseg.errors import InputError
    from napari_covidseg.training import load_dataset, train_model

    card = new_card("three", "unet", {"base_width": 4}, size=32)  # no pleural effusion output
    data = load_dataset(write_pairs(tmp_path / "pairs", seeds=(1,)), card)  # the phantom has effusion (3)
    with pytest.raises(InputError, match="label 3 \\(pleural effusion\\)"):
        train_model(data, card, TrainSettings(steps=1))
