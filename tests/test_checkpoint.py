"""Checkpoints: safetensors + validated model card; pickles and mismatches are refused with a clear error."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from napari_covidseg.errors import CheckpointError
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import load_model, read_checkpoint, resolve_model, save_checkpoint
from tests.helpers import build_for, segmentation_card


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    card = segmentation_card()
    model = build_for(card)
    ckpt = save_checkpoint(model, card, tmp_path)
    assert (tmp_path / "tiny-unet.safetensors").exists() and len(ckpt.card.sha256) == 64
    loaded = load_model(read_checkpoint(tmp_path / "tiny-unet.json"))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded(x))
    saved_card = json.loads((tmp_path / "tiny-unet.json").read_text())
    assert saved_card["classes"][1]["name"] == "ground-glass opacity"


def test_never_overwrites_existing_model(tmp_path):
    card = segmentation_card()
    save_checkpoint(build_for(card), card, tmp_path)
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(build_for(card), segmentation_card(), tmp_path)


def test_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="pickled"):
        resolve_model(tmp_path / "evil.pt")
    # a pickle renamed to .safetensors is refused by the safetensors parser, still without unpickling
    card = segmentation_card(name="evil")
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Payload()))
    (tmp_path / "evil.json").write_text(card.to_json())
    with pytest.raises(CheckpointError, match="safetensors"):
        resolve_model(tmp_path / "evil.safetensors")
    assert not marker.exists()


def test_wrong_shapes_and_tampered_weights(tmp_path):
    card = segmentation_card()
    save_checkpoint(build_for(card), card, tmp_path)
    data = json.loads((tmp_path / "tiny-unet.json").read_text())
    data["config"]["base_width"] = 16
    data["sha256"] = ""
    (tmp_path / "tiny-unet.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(read_checkpoint(tmp_path / "tiny-unet.json"))
    data["config"]["base_width"] = 8
    data["sha256"] = "0" * 64
    (tmp_path / "tiny-unet.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(read_checkpoint(tmp_path / "tiny-unet.json"))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"task": "detection"}, "task"),
        ({"classes": [{"id": 0, "name": "bg", "colour": [0, 0, 0, 0]}]}, "2 to 32 classes"),
        ({"input_size": [64]}, "input_size"),
        ({"intensity": {"hu_window": [100, -100], "display_window": [0, 255]}}, "hu_window"),
        ({"config": {"num_classes": 7}}, "num_classes"),
    ],
)
def test_malformed_card_names_the_field(change, message):
    data = json.loads(segmentation_card().to_json())
    data.update(change)
    with pytest.raises(CheckpointError, match=message):
        ModelCard.from_dict(data)


def test_card_that_is_not_json(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint(tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text(json.dumps({"name": "m"}))
    with pytest.raises(CheckpointError, match="missing field"):
        read_checkpoint(tmp_path / "m.safetensors")


def test_unknown_model_name_lists_what_exists():
    with pytest.raises(CheckpointError, match="no trained weights named 'nope'"):
        resolve_model("nope")


def test_checkpoint_files_are_readable_by_others_like_plain_files(tmp_path):
    import os

    card = segmentation_card()
    ckpt = save_checkpoint(build_for(card), card, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for path in (ckpt.weights, tmp_path / "tiny-unet.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
