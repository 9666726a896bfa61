"""The `covidseg` command line end to end on real files: outputs keep the input geometry; bad input exits 2."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from napari_covidseg.cli import main
from napari_covidseg.models.checkpoint import save_checkpoint
from napari_covidseg.sample import make_phantom
from tests.conftest import shared
from tests.helpers import build_for, classification_card, segmentation_card


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    seg, cls = segmentation_card(size=64), classification_card(size=(16, 64, 64))
    save_checkpoint(build_for(seg), seg, folder)
    save_checkpoint(build_for(cls), cls, folder)
    return folder / "tiny-unet.safetensors", folder / "tiny-da3d.safetensors"


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    assert main(["sample", "-o", str(out), "--shape", "8,96,96"]) == 0
    return out


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_writes_ct_and_masks(sample_dir):
    names = sorted(p.name for p in sample_dir.iterdir())
    assert names == ["covidseg_phantom_ct.nii.gz", "covidseg_phantom_lesions.nii.gz", "covidseg_phantom_lungs.nii.gz"]


def test_segment_output_has_the_ct_affine(sample_dir, checkpoints, tmp_path, capsys):
    ct = sample_dir / "covidseg_phantom_ct.nii.gz"
    code, out, _ = run(
        ["segment", ct, "-o", tmp_path / "m.nii.gz", "--checkpoint", checkpoints[0], "--device", "cpu"], capsys
    )
    assert code == 0
    summary = json.loads(out)
    assert set(summary["volume_ml"]) == {"ground-glass opacity", "consolidation", "pleural effusion"}
    mask, src = nib.load(str(tmp_path / "m.nii.gz")), nib.load(str(ct))
    np.testing.assert_array_equal(mask.affine, src.affine)
    assert mask.shape == src.shape and mask.get_data_dtype() == np.uint8


def test_segment_dicom_folder(checkpoints, tmp_path, capsys):
    folder = shared("totalsegmentator_example_ct/example_ct_dicom")
    code, out, _ = run(
        ["segment", folder, "-o", tmp_path / "d.nii.gz", "--checkpoint", checkpoints[0], "--batch-size", "10"], capsys
    )
    assert code == 0
    assert nib.load(str(tmp_path / "d.nii.gz")).shape == (512, 512, 20)


def test_classify_writes_cam_on_ct_grid(sample_dir, checkpoints, tmp_path, capsys):
    ct = sample_dir / "covidseg_phantom_ct.nii.gz"
    code, out, _ = run(["classify", ct, "--checkpoint", checkpoints[1], "--cam", tmp_path / "cam.nii.gz"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert sum(summary["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    cam = nib.load(str(tmp_path / "cam.nii.gz"))
    np.testing.assert_array_equal(cam.affine, nib.load(str(ct)).affine)
    assert 0 <= cam.get_fdata().min() and cam.get_fdata().max() <= 1


def test_evaluate_scores_png_slices_against_masks(checkpoints, tmp_path, capsys):
    images, masks = tmp_path / "Imgs", tmp_path / "GT"
    images.mkdir()
    masks.mkdir()
    ph = make_phantom(3, (12, 96, 96))
    for z in (4, 6, 8):  # windowed 8-bit slices + palette masks, like the MedSeg layout
        grey = np.clip((ph.ct[z] + 1350) / 1500 * 255, 0, 255).astype(np.uint8)
        Image.fromarray(grey).save(images / f"{z}.jpg")
        pal = Image.fromarray(ph.lesions[z].astype(np.uint8), mode="P")
        pal.putpalette([0, 0, 0, 255, 255, 0, 255, 0, 0, 0, 0, 255] + [0] * 756)
        pal.save(masks / f"{z}.png")
    code, out, _ = run(
        ["evaluate", "--checkpoint", checkpoints[0], "--images", images, "--masks", masks, "--per-image"], capsys
    )
    assert code == 0
    report = json.loads(out)
    assert report["images"] == 3 and len(report["per_image"]) == 3
    assert set(report["dice"]) == {"ground-glass opacity", "consolidation", "pleural effusion", "infection"}
    assert set(report["dice"]["infection"]) == {"mean over images", "pooled"}


def test_models_lists_the_four_seed_networks(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0
    for name in ("unet", "resattunet", "d2a_unet", "daresnet18_3d"):
        assert f"\n{name}  [" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "/nonexistent/ct.nii.gz", "-o", "x.nii.gz"], "no such file"),
        (["segment", "{ct}", "-o", "{tmp}/x.nii.gz", "--model", "nope"], "no trained weights named 'nope'"),
        (["segment", "{ct}", "-o", "{tmp}/x.png", "--checkpoint", "{seg}"], "must end in .nii.gz"),
        (["segment", "{ct}", "-o", "{tmp}/x.nii.gz", "--checkpoint", "{tmp}/evil.pt"], "pickled"),
        (["classify", "{ct}", "--checkpoint", "{seg}"], "segmentation model"),
        (["segment", "{ct}"], "required"),
        (["sample", "-o", "{tmp}", "--shape", "1,2"], "three positive integers"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, sample_dir, checkpoints, tmp_path, capsys):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": 1}))
    fill = {"ct": sample_dir / "covidseg_phantom_ct.nii.gz", "tmp": tmp_path, "seg": checkpoints[0]}
    code, out, err = run([a.format(**fill) for a in argv], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("covidseg") and message in lines[0], err


def test_installed_console_script_exit_code(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_covidseg",
            "segment",
            str(tmp_path / "none.nii.gz"),
            "-o",
            str(tmp_path / "o.nii.gz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"covidseg: error: {tmp_path / 'none.nii.gz'}: no such file or folder"


def test_segment_with_no_flags_uses_the_bundled_medseg_unet(tmp_path, capsys):
    """No flags: the bundled MedSeg-trained `unet`; it outputs background/GGO/consolidation only, on the CT's grid."""

    from napari_covidseg.io.labels import load_labels

    assert main(["sample", "-o", str(tmp_path / "S"), "--shape", "8,128,128"]) == 0
    capsys.readouterr()
    ct = tmp_path / "S" / "covidseg_phantom_ct.nii.gz"
    code, out, err = run(["segment", ct, "-o", tmp_path / "m.nii.gz"], capsys)
    assert code == 0 and json.loads(out)["model"] == "unet"
    assert "never predicts pleural effusion" in err  # the card's note reaches the user
    assert set(np.unique(load_labels(tmp_path / "m.nii.gz")).tolist()) <= {0, 1, 2}
    assert np.array_equal(nib.load(tmp_path / "m.nii.gz").affine, nib.load(ct).affine)
    code, out, _ = run(["models"], capsys)
    for name in ("unet", "resattunet", "daresnet18_3d"):
        assert f"weights {name!r} (bundled)" in out
    assert "MedSeg" in out and "pipeline check, not an accuracy" in out
