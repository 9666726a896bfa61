"""Fine-tuning on a corrections folder: a new listed model with a before/after check, never a changed base."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_covidseg.cli import main
from napari_covidseg.errors import CheckpointError, InputError
from napari_covidseg.inference import Cancelled, segment_volume
from napari_covidseg.io import save_array, save_labels
from napari_covidseg.io.volume import display_volume
from napari_covidseg.models.checkpoint import list_checkpoints, resolve_model, save_checkpoint
from napari_covidseg.sample import make_phantom
from napari_covidseg.training.finetune import (
    FinetuneSettings,
    finetune,
    iter_finetune,
    suggest_name,
    trash_user_model,
)
from tests.helpers import build_for, segmentation_card

TINY = FinetuneSettings(steps=2, batch_size=2, lr=1e-3)


def write_corrections(folder, slices=(1, 2, 3), seed=0, effusion=False):
    """A corrections folder: one (1, 64, 64) phantom slice per file, ``scan-s<seed>_z<z>.nii.gz``; label 3
    (pleural effusion) kept only when ``effusion``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    ph = make_phantom(seed=seed, shape=(8, 64, 64))
    keys = []
    for z in slices:
        key = f"scan-s{seed}_z{z:04d}"
        labels = ph.lesions[z : z + 1]
        if not effusion:
            labels = np.where(labels == 3, 0, labels).astype(np.uint8)
        vol = display_volume(ph.ct[z : z + 1], ph.spacing, key, "HU")
        save_array(ph.ct[z : z + 1].astype(np.int16), vol, folder / "images" / f"{key}.nii.gz")
        save_labels(labels, vol, folder / "masks" / f"{key}.nii.gz")
        keys.append(key)
    return folder, keys


@pytest.fixture
def home(tmp_path, monkeypatch):
    """COVIDSEG_HOME in tmp with a tiny 3-class user model ``base`` (bg, GGO, consolidation)."""
    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    card = segmentation_card("base", size=64, base_width=4)
    card.classes = card.classes[:3]
    save_checkpoint(build_for(card), card, tmp_path / "home" / "models")
    return tmp_path / "home"


def model_files(home):
    return sorted(p.name for p in (home / "models").iterdir() if p.is_file())


def drive(gen):
    seen = []
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as done:
        return done.value, seen


def test_finetune_saves_a_new_listed_model_with_before_and_after(tmp_path, home):
    data, keys = write_corrections(tmp_path / "corr")
    base_bytes = (home / "models" / "base.safetensors").read_bytes()
    result, seen = drive(iter_finetune("base", data, "base-ft1", TINY, device="cpu"))
    assert [(p.stage, p.done, p.total) for p in seen] == [
        ("preparing", 0, 2),
        ("training", 1, 2),
        ("training", 2, 2),
        ("evaluating", 2, 2),
        ("saving", 2, 2),
    ]
    assert all(isinstance(p.loss, float) for p in seen if p.stage == "training")
    assert result.checkpoint.weights == home / "models" / "base-ft1.safetensors" and result.checkpoint.weights.exists()
    assert "base-ft1" in [c.name for c in list_checkpoints("segmentation")]
    assert (home / "models" / "base.safetensors").read_bytes() == base_bytes  # the base is never changed
    card = resolve_model("base-ft1").card
    base_card = resolve_model("base").card
    assert card.training["parent"] == "base" and card.training["parent_sha256"] == base_card.sha256
    assert card.training["corrections_folder"] == str(data.resolve()) and card.training["date"][:4].isdigit()
    assert card.training["data"].startswith("fine-tune of ")
    assert card.training["corrections"] == keys and card.training["held_back"] == []
    assert card.training["protocol"]["steps"] == 2 and card.num_classes == 3
    assert card.version.startswith(f"{base_card.version}+ft.") and "Fine-tune of base on 3" in card.notes
    assert card.metrics["values"] == {"before": result.before, "after": result.after}
    assert "dice infection" in result.after and "not a test score" in result.evaluated_on
    assert result.evaluated_on.startswith("the 3 training slices") and result.evaluated_on in card.metrics["protocol"]
    assert len(result.losses) == 2 and result.train_keys == keys and result.test_keys == []
    volume = make_phantom(seed=1, shape=(4, 64, 64)).volume()
    assert segment_volume(volume, "base-ft1", device="cpu").labels.shape == volume.shape
    assert suggest_name("base") == "base-ft2" and suggest_name("base-ft1") == "base-ft2"


def test_holdout_is_disjoint_and_keys_restrict_the_data(tmp_path, home):
    data, keys = write_corrections(tmp_path / "corr", slices=range(8))
    chosen = keys[1:7]  # 6 of 8 files
    result = finetune("base", data, "six", TINY, keys=chosen, device="cpu")
    assert sorted(result.train_keys + result.test_keys) == chosen
    assert len(result.test_keys) == 1 and not set(result.test_keys) & set(result.train_keys)
    assert result.evaluated_on.startswith("1 held-back corrected slice")
    card = result.checkpoint.card
    assert card.training["held_back"] == result.test_keys and card.training["slices"] == 5
    with pytest.raises(InputError, match="no corrected slice named nope"):
        finetune("base", data, "other", TINY, keys=["nope"], device="cpu")


def test_effusion_in_corrections_expands_the_head_keeping_old_rows(tmp_path, home):
    data, _ = write_corrections(tmp_path / "corr", slices=(1, 2), effusion=True)
    frozen = FinetuneSettings(steps=1, batch_size=2, lr=0.0)  # no update: the copied rows must stay exact
    result = finetune("base", data, "with-effusion", frozen, device="cpu")
    card = result.checkpoint.card
    assert card.num_classes == 4 and card.class_names[3] == "pleural effusion"
    assert card.training["head_expanded"]["rows_copied"] == ["head.weight", "head.bias"]
    assert "expanded from 3 to 4 classes" in card.notes and "dice pleural effusion" in result.after
    base, new = resolve_model("base").module.state_dict(), resolve_model("with-effusion").module.state_dict()
    assert torch.equal(new["head.weight"][:3], base["head.weight"])
    assert torch.equal(new["head.bias"][:3], base["head.bias"])
    assert not torch.equal(new["head.weight"][3], torch.zeros_like(new["head.weight"][3]))  # initialised, not 0


def test_cancelling_mid_training_writes_nothing(tmp_path, home):
    data, _ = write_corrections(tmp_path / "corr", slices=(1, 2))
    before = model_files(home)
    gen = iter_finetune("base", data, "closed", FinetuneSettings(steps=50, batch_size=2), device="cpu")
    assert next(gen).stage == "preparing" and next(gen).stage == "training"
    gen.close()
    calls = []
    with pytest.raises(Cancelled):
        finetune(
            "base",
            data,
            "stopped",
            FinetuneSettings(steps=50, batch_size=2),
            device="cpu",
            progress=calls.append,
            should_stop=lambda: len(calls) >= 3,
        )
    assert [p.stage for p in calls] == ["preparing", "training", "training"]
    assert model_files(home) == before


def test_bad_requests_fail_before_any_training(tmp_path, home):
    data, _ = write_corrections(tmp_path / "corr", slices=(1,))
    for name, settings, message in (
        ("base", TINY, "already exists"),
        ("../x", TINY, "model name"),
        ("fine", FinetuneSettings(steps=0), "steps"),
    ):
        gen = iter_finetune("base", data, name, settings, device="cpu")
        with pytest.raises(InputError, match=message):
            next(gen)  # the first next() raises: nothing was prepared or trained
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(InputError, match="no image"):
        finetune("base", empty, "fine", TINY, device="cpu")


def test_trash_moves_a_user_model_and_refuses_bundled_ones(home):
    trash = trash_user_model("base")
    assert sorted(p.name for p in trash.iterdir()) == ["base.json", "base.safetensors"]
    assert trash.parent == home / "models" / "trash" and model_files(home) == []
    assert "base" not in [c.name for c in list_checkpoints()]
    with pytest.raises(CheckpointError, match="bundled"):
        trash_user_model("unet")
    with pytest.raises(CheckpointError, match="no user model"):
        trash_user_model("base")


def test_cli_finetune(tmp_path, home, capsys):
    data, _ = write_corrections(tmp_path / "corr", slices=(1, 2))
    argv = ["finetune", "--base", "base", "--data", str(data), "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "base-ft1" and out["path"].endswith("base-ft1.safetensors")
    assert set(out) >= {"before", "after", "evaluated_on"}
    assert main(["finetune", "--base", "base", "--data", str(tmp_path / "missing"), "-o", "x"]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and err.count("\n") == 1
    assert main(["finetune", "--base", "nope", "--data", str(data)]) == 2
