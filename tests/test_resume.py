"""Long runs survive a stop: a run stopped and resumed from its run folder reaches the same weights as a run that
never stopped, with and without extra soft-labelled data; a run folder of other settings is refused."""

from __future__ import annotations

import json
import time

import pytest
import torch

from napari_covidseg.errors import InputError
from napari_covidseg.models import build_model
from napari_covidseg.training.loop import STATE_NAME, ExtraData, iter_train_segmentation


def _data(seed=0, n=6, side=48):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, side, side, generator=g)
    labels = (images[:, 0] > 0.7).long() + (images[:, 0] > 0.9).long()
    return images, labels


def _model():
    torch.manual_seed(1)
    return build_model("unet", num_classes=3, base_width=4, depth=2)


def _run(model, run_dir=None, stop_after=None, extra=None, fingerprint=None, steps=6):
    images, labels = _data()
    gen = iter_train_segmentation(
        model,
        images,
        labels,
        steps=steps,
        batch_size=4,
        lr=1e-3,
        seed=3,
        device="cpu",
        augment=True,
        extra=extra,
        run_dir=run_dir,
        checkpoint_seconds=0.0,
        fingerprint=fingerprint or {"test": 1},
    )
    done = 0
    try:
        while True:
            next(gen)
            done += 1
            if stop_after is not None and done == stop_after:
                gen.close()  # as when the process is stopped right after a checkpoint
                return None
    except StopIteration as stop:
        return stop.value


def _extra():
    images, labels = _data(seed=5, n=5)
    return ExtraData(images, (labels > 0).long() * 255, share=0.5, weight=0.5)


@pytest.mark.parametrize("with_extra", [False, True])
def test_a_resumed_run_reaches_the_same_weights(tmp_path, with_extra):
    extra = _extra() if with_extra else None
    whole = _model()
    result = _run(whole, extra=extra)
    assert len(result.losses) == 6

    part = _model()
    assert _run(part, tmp_path / "run", stop_after=3, extra=extra) is None
    assert (tmp_path / "run" / STATE_NAME).is_file()
    resumed = _model()  # a fresh process: a new, untrained network
    result2 = _run(resumed, tmp_path / "run", extra=extra)
    assert result2.losses == pytest.approx(result.losses, abs=0)  # the history continues, the same numbers
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_finished_run_resumes_to_the_end_at_once(tmp_path):
    model = _model()
    _run(model, tmp_path / "run")
    again = _model()
    result = _run(again, tmp_path / "run")
    assert len(result.losses) == 6
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_run_folder_of_other_settings_is_refused(tmp_path):
    _run(_model(), tmp_path / "run", stop_after=2, fingerprint={"lr": 1e-3})
    with pytest.raises(InputError, match="other settings"):
        _run(_model(), tmp_path / "run", fingerprint={"lr": 2e-3})


def test_a_damaged_state_file_is_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STATE_NAME).write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot be resumed"):
        _run(_model(), tmp_path / "run")


_KILLED_AT_STEP_3 = """
import os, signal, sys, time
from pathlib import Path
from napari_covidseg.training import loop
from napari_covidseg.cli import main
real = loop._save_state
def save_then_wait(path, fingerprint, step, *args):
    real(path, fingerprint, step, *args)
    if step == 3:
        Path(os.environ["MARKER"]).write_text("3")
        time.sleep(120)  # killed here: the hardest stop, no clean-up runs
loop._save_state = save_then_wait
sys.exit(main(sys.argv[1:]))
"""


def test_cli_train_with_extra_data_survives_kill_9(tmp_path, monkeypatch, capsys):
    """`covidseg train --extra ... --run-dir R`, killed with SIGKILL after step 3, then the same command again:
    it resumes and saves the same weights as a run that was never stopped."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from safetensors.torch import load_file

    from napari_covidseg.cli import main
    from napari_covidseg.corrections import save_corrections
    from napari_covidseg.io import load_ct
    from napari_covidseg.sample import write_sample
    from tests.test_hostile_inputs import png

    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    paths = write_sample(tmp_path / "s", shape=(6, 64, 64))
    volume = load_ct(paths["ct"])
    save_corrections(tmp_path / "data", volume, load_ct(paths["lesions"]).array.astype(np.uint8), [1, 2, 3, 4])
    extra = tmp_path / "extra"
    (extra / "images").mkdir(parents=True)
    (extra / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        png(extra / "images", rng.integers(0, 255, (48, 40)).astype(np.uint8), f"e{i}.png")
        png(extra / "masks", (rng.random((48, 40)) * 255).astype(np.uint8), f"e{i}.png")

    def argv(run, out):
        return [
            "train",
            str(tmp_path / "data"),
            "-o",
            "semi",
            "--extra",
            str(extra),
            "--run-dir",
            str(run),
            "--out-dir",
            str(out),
            "--steps",
            "6",
            "--width",
            "4",
            "--size",
            "64",
            "--crop",
            "0",
            "--batch-size",
            "4",
            "--checkpoint-minutes",
            "0",
            "--device",
            "cpu",
        ]

    assert main(argv(tmp_path / "run-a", tmp_path / "out-a")) == 0  # never stopped
    marker = tmp_path / "marker"
    env = {**os.environ, "MARKER": str(marker), "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_AT_STEP_3, *argv(tmp_path / "run-b", tmp_path / "out-b")],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no step 3"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "out-b" / "semi.safetensors").exists()
    capsys.readouterr()
    assert main(argv(tmp_path / "run-b", tmp_path / "out-b")) == 0
    assert "resuming the run" in capsys.readouterr().err
    a, b = (load_file(str(tmp_path / d / "semi.safetensors")) for d in ("out-a", "out-b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "out-b" / "semi.json").read_text())
    assert card["training"]["protocol"]["extra_slices"] == 3


def test_soft_lesion_folders_in_both_layouts(tmp_path):
    """Inf-Net's layout (Imgs/ + GT/, rotated like MedSeg) and images/ + masks/ (display orientation) give the same
    slices; a hard 0/1 mask becomes 0/255; every slice keeps its soft values."""
    import numpy as np

    from napari_covidseg.training.datasets import MEDSEG_ROT90_K, load_soft_lesions
    from napari_covidseg.training.run import new_card
    from tests.test_hostile_inputs import png

    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (60, 40)).astype(np.uint8)
    soft = np.zeros((60, 40), np.uint8)
    soft[10:30, 5:20] = 200
    for layout, (a, b), rot in (("infnet", ("Imgs", "GT"), -MEDSEG_ROT90_K), ("plain", ("images", "masks"), 0)):
        (tmp_path / layout / a).mkdir(parents=True)
        (tmp_path / layout / b).mkdir()
        png(tmp_path / layout / a, np.ascontiguousarray(np.rot90(img, rot)), "s1.png")
        png(tmp_path / layout / b, np.ascontiguousarray(np.rot90(soft, rot)), "s1.png")
    card = new_card("t", "unet", {"base_width": 4})
    infnet, plain = (load_soft_lesions(tmp_path / name, card) for name in ("infnet", "plain"))
    assert torch.equal(infnet.images, plain.images) and torch.equal(infnet.labels, plain.labels)
    assert set(torch.unique(plain.labels).tolist()) <= {0, 200} and plain.labels.max() == 200
    png(tmp_path / "plain" / "masks", (soft > 0).astype(np.uint8), "s1.png")  # a hard 0/1 mask
    hard = load_soft_lesions(tmp_path / "plain", card)
    assert hard.labels.max() == 255
    with pytest.raises(InputError, match="expected Imgs"):
        load_soft_lesions(tmp_path, card)


def test_teacher_relabels_extra_slices_with_its_lesion_probability():
    """Self-training targets: 1 - p(background) of the teacher x 255, per pixel, on the student's slices; a teacher
    of another input size sees them resized and its map comes back at the slices' size; a model that is not a
    2D segmentation model with a background class 0 is refused."""
    from napari_covidseg.models.checkpoint import LoadedModel
    from napari_covidseg.training.datasets import SOFT_LESION_MAX, SliceDataset, relabel_with_teacher
    from napari_covidseg.training.run import new_card

    images, labels = _data(seed=2, n=3, side=48)
    extra = SliceDataset(images, labels * 0, ["a", "b", "c"], ["a", "b", "c"], "extra (3)")
    model = _model().eval()
    teacher = LoadedModel(model, new_card("teach", "unet", {"base_width": 4, "depth": 2}, size=48))
    out = relabel_with_teacher(extra, teacher, device="cpu", batch_size=2)
    with torch.inference_mode():
        expected = ((1 - model(images).softmax(dim=1)[:, 0]) * SOFT_LESION_MAX).round().long()
    assert torch.equal(out.labels, expected) and out.labels.dtype == torch.int64
    assert out.labels.float().std() > 0 and out.images is images and out.names == extra.names
    assert "relabelled by teacher 'teach'" in out.description
    small = LoadedModel(model, new_card("small", "unet", {"base_width": 4, "depth": 2}, size=32))
    resized = relabel_with_teacher(extra, small, device="cpu")
    assert resized.labels.shape == labels.shape and 0 <= int(resized.labels.min()) <= int(resized.labels.max()) <= 255
    card = new_card("nobg", "unet", {"base_width": 4, "depth": 2}, size=48)
    card.classes = [{**c, "name": n} for c, n in zip(card.classes, ("ground-glass opacity", "b", "c"), strict=True)]
    with pytest.raises(InputError, match="not background"):
        relabel_with_teacher(extra, LoadedModel(model, card))


def test_cli_train_extra_teacher(tmp_path, monkeypatch, capsys):
    """`covidseg train --extra E --extra-teacher MODEL`: the extra slices are relabelled by the teacher (recorded in
    the card); --extra-teacher alone and a teacher that is not a segmentation model are one line, exit 2."""
    import numpy as np

    from napari_covidseg.cli import main
    from napari_covidseg.corrections import save_corrections
    from napari_covidseg.io import load_ct
    from napari_covidseg.sample import write_sample
    from tests.test_hostile_inputs import png

    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    paths = write_sample(tmp_path / "s", shape=(6, 64, 64))
    volume = load_ct(paths["ct"])
    save_corrections(tmp_path / "data", volume, load_ct(paths["lesions"]).array.astype(np.uint8), [1, 2, 3])
    extra = tmp_path / "extra"
    (extra / "images").mkdir(parents=True)
    (extra / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        png(extra / "images", rng.integers(0, 255, (48, 40)).astype(np.uint8), f"e{i}.png")
        png(extra / "masks", np.zeros((48, 40), np.uint8), f"e{i}.png")
    base = ["train", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"), "--steps", "2", "--width", "4"]
    base += ["--size", "64", "--crop", "0", "--batch-size", "2", "--device", "cpu"]
    assert main([*base, "-o", "teacher"]) == 0
    assert (
        main([*base, "-o", "student", "--extra", str(extra), "--extra-teacher", str(tmp_path / "out" / "teacher.json")])
        == 0
    )
    card = json.loads((tmp_path / "out" / "student.json").read_text())
    assert "relabelled by teacher 'teacher'" in card["training"]["protocol"]["extra_data"]
    capsys.readouterr()
    assert main([*base, "-o", "s2", "--extra-teacher", "teacher"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--extra FOLDER" in err
    assert main([*base, "-o", "s3", "--extra", str(extra), "--extra-teacher", "daresnet18_3d"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "segmentation model is needed" in err
    assert not (tmp_path / "out" / "s3.json").exists()
