"""Nothing lost: two processes saving corrections into one folder, SIGTERM during a save, a run that diverges,
the napari writer pointed at the scan itself. Real processes, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_covidseg._napari_io import write_labels
from napari_covidseg.corrections import list_corrections
from napari_covidseg.errors import InputError
from napari_covidseg.io import load_ct
from napari_covidseg.layers import image_layer_data
from napari_covidseg.models.checkpoint import resolve_model
from napari_covidseg.sample import write_sample
from napari_covidseg.training.finetune import FinetuneSettings, iter_finetune
from napari_covidseg.training.loop import TrainingDiverged, iter_train_segmentation

ROOT = Path(__file__).resolve().parents[1]

_SAVER = """
import sys
from pathlib import Path
from napari_covidseg.corrections import save_corrections
from napari_covidseg.io import load_ct
volume = load_ct(sys.argv[1])
labels = (volume.array > 0).astype("uint8")
for z in range(volume.shape[0]):  # one call per slice: as many index updates as possible
    save_corrections(sys.argv[2], volume, labels, [z])
"""


def test_two_processes_saving_into_one_folder_index_every_pair(tmp_path):
    shape = (60, 32, 32)
    scans = [write_sample(tmp_path / f"scan{i}", shape=shape, seed=i)["ct"] for i in range(2)]
    folder = tmp_path / "corrections"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen([sys.executable, "-c", _SAVER, str(s), str(folder)], env=env, stderr=subprocess.PIPE)
        for s in scans
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    pairs = sorted(p.name for p in (folder / "masks").iterdir())
    assert len(pairs) == 120
    index = json.loads((folder / "corrections.json").read_text())
    assert sorted(f"{k}.nii.gz" for k in index) == pairs  # every pair written is indexed
    assert len(list_corrections(folder)) == 120


_SLOW_SAVE = """
import sys, time
from pathlib import Path
import nibabel as nib
from napari_covidseg import cli
real = nib.save
def slow(img, path):
    real(img, path)  # the temporary file is complete; the rename has not happened
    Path(sys.argv[3]).write_text("saving")
    time.sleep(60)
nib.save = slow
sys.exit(cli.main(["segment", sys.argv[1], "-o", sys.argv[2], "--device", "cpu"]))
"""


def test_sigterm_during_a_save_leaves_no_file(tmp_path):
    ct = write_sample(tmp_path / "in", shape=(4, 64, 64))["ct"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "saving"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(ct), str(out_dir / "m.nii.gz"), str(marker)],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the save never started"
        time.sleep(0.05)
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")], "expected the temporary file mid-save"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert list(out_dir.iterdir()) == []  # neither the output nor the hidden temporary file
    assert "terminated" in err.decode()


def test_a_run_that_goes_non_finite_stops_at_once():
    model = resolve_model("unet").module
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))
    images, labels = torch.rand(4, 1, 64, 64), torch.zeros(4, 64, 64, dtype=torch.long)
    gen = iter_train_segmentation(model, images, labels, steps=5, batch_size=2, device="cpu")
    with pytest.raises(TrainingDiverged, match="diverged at step 1 of 5"):
        for _ in gen:
            pass


def test_a_diverging_finetune_saves_nothing(tmp_path):
    from napari_covidseg.corrections import save_corrections

    paths = write_sample(tmp_path / "s", shape=(6, 64, 64))
    volume = load_ct(paths["ct"])
    save_corrections(tmp_path / "corr", volume, load_ct(paths["lesions"]).array.astype(np.uint8), [1, 2, 3])
    base = resolve_model("unet")
    with torch.no_grad():
        for p in base.module.parameters():
            p.mul_(1e30)  # finite weights whose activations overflow: the loss is NaN/inf from step 1
    out = tmp_path / "models"
    gen = iter_finetune(base, tmp_path / "corr", "ft-diverged", FinetuneSettings(steps=3), device="cpu", out_dir=out)
    with pytest.raises(InputError, match="diverged|NaN or infinite"):
        for _ in gen:
            pass
    assert not out.exists() or list(out.iterdir()) == []


def test_napari_writer_refuses_to_write_over_the_scan(tmp_path):
    ct = write_sample(tmp_path / "s", shape=(4, 64, 64))["ct"]
    before = ct.read_bytes()
    _, kwargs, _ = image_layer_data(load_ct(ct))
    labels = np.zeros((4, 64, 64), np.uint8)
    with pytest.raises(InputError, match="input"):
        write_labels(str(ct), labels, {"scale": kwargs["scale"], "metadata": kwargs["metadata"], "name": "m"})
    assert ct.read_bytes() == before
    written = write_labels(str(tmp_path / "mask.nii.gz"), labels, {"scale": kwargs["scale"], **kwargs})
    assert Path(written[0]).is_file()
