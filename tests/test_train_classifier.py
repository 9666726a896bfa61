"""3D classifier training: classes from names, data discovery, the loop, LOO, saved weights, `train-classifier`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_covidseg.cli import main
from napari_covidseg.constants import DIAGNOSIS_CLASSES, HU_LUNG
from napari_covidseg.errors import InputError
from napari_covidseg.inference import Cancelled, classify_volume
from napari_covidseg.io import save_array
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import resolve_model, save_checkpoint
from napari_covidseg.sample import make_phantom
from napari_covidseg.training.classifier import (
    Example,
    class_from_path,
    classifier_card,
    find_volumes,
    leave_one_out,
    new_model,
    predict,
    prepare_volume,
    train_classifier,
)

SIZE = (8, 32, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def phantom_volume(seed: int, lesions: bool, shape=(16, 64, 64)):
    """A phantom CT in HU; without lesions every lesion voxel is set back to plain lung (a "normal" scan)."""
    ph = make_phantom(seed=seed, shape=shape)
    if not lesions:
        ph.ct[ph.lesions > 0] = HU_LUNG
    return ph.volume(f"phantom{seed}")


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return classifier_card("tiny-cls", SIZE, 4, {"data": "phantoms (test)"}, {}, "test only")


@pytest.fixture(scope="module")
def phantoms():
    """Two phantoms with lesions (COVID-19) and two with the lesions removed (normal)."""
    return [(phantom_volume(s, True), 0) for s in (1, 2)] + [(phantom_volume(s, False), 2) for s in (3, 4)]


@pytest.fixture(scope="module")
def data(phantoms, card):
    x = torch.stack([prepare_volume(v, card) for v, _ in phantoms])
    y = torch.tensor([c for _, c in phantoms])
    return x, y


@pytest.mark.parametrize(
    "path, expected",
    [
        ("CAP_cap001.nii.gz", 1),
        ("COVID-19_P001.nii.gz", 0),
        ("Normal_normal001.nii.gz", 2),
        ("covid/scan1.nii.gz", 0),
        ("data/COVID19/a.npy", 0),
        ("data/Common Pneumonia/a.nii", 1),
        ("data/common_pneumonia/a.nii", 1),
        ("pneumonia-7.nii.gz", 1),
        ("healthy/x.nii", 2),
        ("normal/normal_1.nii", 2),
        ("data/capital.nii.gz", None),  # "cap" must be a whole prefix
        ("data/scan.nii.gz", None),
        ("normal/covid_1.nii", None),  # folder and prefix disagree
    ],
)
def test_class_from_path(path, expected):
    assert class_from_path(path) == expected


def test_find_volumes_classes_and_errors(tmp_path):
    (tmp_path / "covid").mkdir()
    (tmp_path / "covid" / "a.npy").write_bytes(b"x")
    (tmp_path / "Normal_b.nii.gz").write_bytes(b"x")
    (tmp_path / "slice.png").write_bytes(b"x")  # 2D slices are not volumes
    found = find_volumes([tmp_path])
    assert [(p.name, c) for p, c in found] == [("Normal_b.nii.gz", 2), ("a.npy", 0)]
    assert find_volumes([tmp_path / "covid" / "a.npy"]) == [((tmp_path / "covid" / "a.npy").resolve(), 0)]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no CT volumes"):
        find_volumes([empty])
    with pytest.raises(InputError, match="no such file"):
        find_volumes([tmp_path / "missing"])
    (tmp_path / "scan7.nii.gz").write_bytes(b"x")
    with pytest.raises(InputError, match=r"scan7\.nii\.gz: cannot tell its class") as err:
        find_volumes([tmp_path])
    assert "\n" not in str(err.value)


def test_card_has_the_diagnosis_classes(card):
    assert card.class_names == list(DIAGNOSIS_CLASSES)
    assert card.input_size == list(SIZE) and card.config["base_width"] == 4
    ModelCard.from_dict(json.loads(card.to_json()))  # valid


def test_training_lowers_the_loss_and_cancel_stops_it(data, card):
    x, y = data
    assert x.shape == (4, 1, *SIZE) and 0 <= float(x.min()) and float(x.max()) <= 1
    result = train_classifier(new_model(card), x, y, steps=30, batch_size=4, lr=3e-3, device="cpu", augment=False)
    assert result.steps == 30 and all(np.isfinite(result.losses))
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])

    seen = []
    with pytest.raises(Cancelled):
        train_classifier(
            new_model(card),
            x,
            y,
            steps=50,
            device="cpu",
            progress=lambda s, n, loss: seen.append((s, n, np.isfinite(loss))),
            should_stop=lambda: len(seen) >= 3,
        )
    assert seen == [(1, 50, True), (2, 50, True), (3, 50, True)]


def test_saved_weights_load_and_classify_like_training_sees_them(data, phantoms, card, tmp_path):
    x, y = data
    model = new_model(card, seed=1)
    train_classifier(model, x, y, steps=3, device="cpu")  # augmentation on
    ckpt = save_checkpoint(model, card, tmp_path)
    loaded = resolve_model(ckpt.weights, task="classification")
    volume = phantoms[0][0]
    result = classify_volume(volume, loaded, device="cpu")
    assert list(result.probabilities) == list(DIAGNOSIS_CLASSES)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.cam.shape == volume.shape
    # training input is the inference input: the same probabilities from the prepared tensor
    assert predict(loaded.module, x[0], "cpu") == pytest.approx(list(result.probabilities.values()), abs=1e-5)


def test_leave_one_out_rows(data, card):
    x, y = data
    items = [Example(f"v{i}.nii.gz", x[i], int(y[i])) for i in (0, 1, 2)]
    steps_seen = []
    rows = leave_one_out(items, card, steps=1, seed=0, device="cpu", progress=lambda s, n, loss: steps_seen.append(n))
    assert [r["file"] for r in rows] == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    assert steps_seen == [3, 3, 3]
    for r in rows:
        assert r["true"] in DIAGNOSIS_CLASSES and r["predicted"] in DIAGNOSIS_CLASSES
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(InputError):
        leave_one_out(items[:1], card, steps=1, device="cpu")


def _write_nifti(folder, name: str, seed: int, lesions: bool):
    volume = phantom_volume(seed, lesions, shape=(8, 48, 48))
    save_array(np.rint(volume.array).astype(np.int16), volume, folder / name)


def test_cli_train_classifier(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))  # no user models from the real home
    data = tmp_path / "data"
    data.mkdir()
    _write_nifti(data, "COVID-19_a.nii.gz", 1, True)
    _write_nifti(data, "CAP_b.nii.gz", 2, True)
    _write_nifti(data, "Normal_c.nii.gz", 3, False)
    out = tmp_path / "models"
    argv = ["train-classifier", data, "-o", "mine", "--steps", "2", "--size", "8,32,32", "--width", "4"]
    argv += ["--out-dir", out, "--device", "cpu", "--loo"]
    assert main([str(a) for a in argv]) == 0
    stdout = capsys.readouterr().out
    assert "| file | true | predicted |" in stdout and "pipeline check" in stdout
    assert (out / "mine.safetensors").exists() and (out / "mine.json").exists()
    card = ModelCard.load(out / "mine.json")
    assert card.input_size == [8, 32, 32] and card.task == "classification"
    assert "leave-one-out over 3 volumes: a pipeline check, not an accuracy estimate" in card.metrics["protocol"]
    assert len(card.metrics["values"]["per_volume"]) == 3
    classify_volume(phantom_volume(5, True, (8, 48, 48)), out / "mine.safetensors", device="cpu")

    before = (out / "mine.safetensors").read_bytes()
    assert main([str(a) for a in argv]) == 2  # never overwrites
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    assert (out / "mine.safetensors").read_bytes() == before

    (data / "unlabelled.nii.gz").write_bytes((data / "CAP_b.nii.gz").read_bytes())
    assert main([str(a) for a in [*argv[:2], "-o", "other", "--out-dir", out]]) == 2
    assert "unlabelled.nii.gz: cannot tell its class" in capsys.readouterr().err
    assert main(["train-classifier", str(data), "-o", "x", "--size", "8,32"]) == 2
    assert "--size" in capsys.readouterr().err
