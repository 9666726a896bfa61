"""A hostile and careless user's corpus, beyond the malformed files of test_bad_inputs.py.

Each case is a full `covidseg` command built here from small data. It must end with exit 2 and one readable
`covidseg: error:` line (no traceback, no library class names), or with exit 0 and a correct result, noted on
stderr when something was repaired. In every case the inputs are unchanged afterwards (byte for byte), and a
refused command leaves no output and no hidden temporary file. Kinds, as in the issue:

1. outputs that are inputs (same path, symlinks, hard links, a DICOM folder's files), unwritable outputs;
2. DICOM series geometry (missing, repeated and irregular slices, mixed grids) and absurd NIfTI voxel sizes;
3. values: 16-bit PNG slices, non-finite or negative training parameters, NaN weights, infinite windows;
4. model cards as input: unknown or out-of-range settings, huge networks, nested JSON, folders named like cards;
5. command-line arguments that used to end in a traceback;
6. a damaged corrections index (the two-process test is in test_corrections_concurrency.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from napari_covidseg.cli import main
from napari_covidseg.models.checkpoint import BUNDLED_DIR
from napari_covidseg.sample import write_sample
from tests.test_bad_inputs import write_dicom

_CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception|Warning)\b")
CPU = ["--device", "cpu"]


@dataclass
class Case:
    argv: list[str]
    code: int
    words: list[str] = field(default_factory=list)  # in the error line (exit 2) or on stderr (exit 0)
    inputs: list[Path] = field(default_factory=list)  # unchanged afterwards
    absent: list[Path] = field(default_factory=list)  # not created
    check: Callable[[str, str], None] | None = None  # (stdout, stderr) of a successful run


# ------------------------------------------------------------------------------------------------ small inputs


def ct(d: Path) -> Path:
    """A small phantom CT (NIfTI, HU) with lungs and lesions."""
    paths = write_sample(d / "sample", shape=(6, 64, 64))
    return paths["ct"]


def lesions(d: Path) -> Path:
    ct(d)
    return d / "sample" / "covidseg_phantom_lesions.nii.gz"


def series(d: Path, zs, *, values=None, spacing=None, iop=None, sizes=None, name="series", slope=None) -> Path:
    """A DICOM series of 32x32 slices at positions ``zs`` (one SeriesInstanceUID)."""
    folder = d / name
    folder.mkdir(parents=True)
    uid = "1.2.826.0.1.3680043.9." + str(abs(hash((name, tuple(zs)))) % 10**8)
    for i, z in enumerate(zs):
        rows = (sizes or {}).get(i, 32)
        hu = np.full((rows, 32), -800 + 10 * (values[i] if values else i), np.int16)
        path = write_dicom(folder / f"IM{i:04d}.dcm", hu, z=z, series=uid, spacing=(spacing or {}).get(i, (0.7, 0.7)))
        if iop and i in iop:
            import pydicom

            ds = pydicom.dcmread(path)
            ds.ImageOrientationPatient = iop[i]
            ds.save_as(path, enforce_file_format=True)
        if slope and i in slope:  # pydicom will not write a bad DS: write 7.25, then swap the 4 bytes
            import pydicom

            ds = pydicom.dcmread(path)
            ds.RescaleSlope = "7.25"
            ds.save_as(path, enforce_file_format=True)
            data = path.read_bytes()
            assert data.count(b"7.25") == 1
            path.write_bytes(data.replace(b"7.25", slope[i].encode().ljust(4)))
    return folder


def png(d: Path, data: np.ndarray, name: str) -> Path:
    """An 8-bit (uint8) or 16-bit (uint16: PNG mode I;16) greyscale PNG."""
    path = d / name
    Image.fromarray(data).save(path)
    return path


def checkpoint(d: Path, name="custom", card=None, tensors=None, base="unet") -> Path:
    """A copy of a bundled model, its card changed by ``card(dict)`` and its tensors by ``tensors(dict)``."""
    from safetensors.torch import load_file, save_file

    d.mkdir(parents=True, exist_ok=True)
    data = json.loads((BUNDLED_DIR / f"{base}.json").read_text())
    data["name"], data["sha256"] = name, ""
    if card:
        card(data)
    weights = d / f"{name}.safetensors"
    if tensors:
        state = load_file(str(BUNDLED_DIR / f"{base}.safetensors"))
        tensors(state)
        save_file(state, str(weights))
    else:
        shutil.copy(BUNDLED_DIR / f"{base}.safetensors", weights)
    (d / f"{name}.json").write_text(json.dumps(data) if isinstance(data, dict) else data)
    return weights


def user_models(d: Path) -> Path:
    folder = Path(os.environ["COVIDSEG_HOME"]) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def seg(inp, out, *extra):
    return ["segment", str(inp), "-o", str(out), *CPU, *map(str, extra)]


HOSTILE: dict[str, Callable[[Path], Case]] = {}


def case(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
    HOSTILE[fn.__name__] = fn
    return fn


# ------------------------------------------------------------------------------------------------ 1. outputs


@case
def out_is_input(d):
    c = ct(d)
    return Case(seg(c, c), 2, ["input", "overwrite"], [c])


@case
def lungs_out_is_input(d):
    c = ct(d)
    return Case(seg(c, d / "m.nii.gz", "--lungs-out", c), 2, ["--lungs-out", "input"], [c], [d / "m.nii.gz"])


@case
def out_is_symlink_to_input(d):
    c = ct(d)
    (d / "link.nii.gz").symlink_to(c)
    return Case(seg(c, d / "link.nii.gz"), 2, ["input"], [c])


@case
def out_is_hard_link_to_input(d):
    c = ct(d)
    os.link(c, d / "hard.nii.gz")
    return Case(seg(c, d / "hard.nii.gz"), 2, ["input"], [c, d / "hard.nii.gz"])


@case
def out_is_input_by_another_spelling(d):
    c = ct(d)
    other = d / "sample" / ".." / "sample" / "." / c.name
    return Case(seg(c, other), 2, ["input"], [c])


@case
def out_is_input_through_symlinked_folder(d):
    c = ct(d)
    (d / "alias").symlink_to(d / "sample", target_is_directory=True)
    return Case(seg(c, d / "alias" / c.name), 2, ["input"], [c])


@case
def out_is_mask_given_as_input(d):
    m = lesions(d)
    c = d / "sample" / "covidseg_phantom_ct.nii.gz"
    return Case(["quantify", str(c), "--mask", str(m), "--lungs-out", str(m)], 2, ["input"], [c, m])


@case
def out_equals_lungs_out(d):
    c = ct(d)
    return Case(seg(c, d / "x.nii.gz", "--lungs-out", d / "x.nii.gz"), 2, ["same file"], [c], [d / "x.nii.gz"])


@case
def quantify_csv_is_input(d):
    c = ct(d)
    return Case(["quantify", str(c), "--csv", str(c), *CPU], 2, ["--csv", "input"], [c])


@case
def quantify_report_is_input(d):
    c = ct(d)
    return Case(["quantify", str(c), "--report", str(c), *CPU], 2, ["--report", "input"], [c])


@case
def quantify_lungs_out_is_input(d):
    c = ct(d)
    return Case(["quantify", str(c), "--lungs-out", str(c), *CPU], 2, ["--lungs-out", "input"], [c])


@case
def quantify_csv_is_mask(d):
    m = lesions(d)
    c = d / "sample" / "covidseg_phantom_ct.nii.gz"
    return Case(["quantify", str(c), "--mask", str(m), "--csv", str(m)], 2, ["input"], [c, m])


@case
def quantify_report_equals_csv(d):
    c = ct(d)
    out = d / "q.txt"
    return Case(["quantify", str(c), "--csv", str(out), "--report", str(out), *CPU], 2, ["same file"], [c], [out])


@case
def quantify_csv_is_a_dicom_member(d):
    s = series(d, [0, 2.5, 5.0])
    member = s / "IM0001.dcm"
    return Case(["quantify", str(s), "--csv", str(member), *CPU], 2, ["input folder"], [s])


@case
def segment_out_inside_dicom_folder_is_fine(d):
    s = series(d, [0, 2.5, 5.0])
    out = s / "mask.nii.gz"

    def check(stdout, stderr):
        assert nib.load(str(out)).shape == (32, 32, 3)

    return Case(seg(s, out), 0, [], [s / f"IM000{i}.dcm" for i in range(3)], check=check)


@case
def classify_cam_is_input(d):
    c = ct(d)
    return Case(["classify", str(c), "--cam", str(c), *CPU], 2, ["--cam", "input"], [c])


@case
def classify_cam_is_symlink_to_input(d):
    c = ct(d)
    (d / "cam.nii.gz").symlink_to(c)
    return Case(["classify", str(c), "--cam", str(d / "cam.nii.gz"), *CPU], 2, ["input"], [c])


@case
def out_parent_is_a_file(d):
    c = ct(d)
    (d / "afile").write_text("x")
    return Case(seg(c, d / "afile" / "m.nii.gz"), 2, ["is a file, not a folder"], [c, d / "afile"])


@case
def out_grandparent_is_a_file(d):
    c = ct(d)
    (d / "afile").write_text("x")
    return Case(seg(c, d / "afile" / "sub" / "m.nii.gz"), 2, ["is a file"], [c, d / "afile"])


@case
def out_is_a_folder(d):
    c = ct(d)
    (d / "m.nii.gz").mkdir()
    return Case(seg(c, d / "m.nii.gz"), 2, ["is a folder"], [c])


@case
def out_wrong_suffix(d):
    c = ct(d)
    return Case(seg(c, d / "m.png"), 2, ["must end in .nii.gz"], [c], [d / "m.png"])


@case
def quantify_csv_parent_is_a_file(d):
    c = ct(d)
    (d / "afile").write_text("x")
    return Case(["quantify", str(c), "--csv", str(d / "afile" / "q.csv"), *CPU], 2, ["is a file"], [c])


@case
def classify_cam_parent_is_a_file(d):
    c = ct(d)
    (d / "afile").write_text("x")
    return Case(["classify", str(c), "--cam", str(d / "afile" / "c.nii.gz"), *CPU], 2, ["is a file"], [c])


@case
def sample_output_is_a_file(d):
    (d / "afile").write_text("x")
    return Case(["sample", "-o", str(d / "afile"), "--shape", "4,64,64"], 2, ["is a file"], [d / "afile"])


@case
def out_in_new_nested_folders_is_created(d):
    c = ct(d)
    out = d / "new" / "deeper" / "m.nii.gz"

    def check(stdout, stderr):
        assert json.loads(stdout)["output"] == str(out) and nib.load(str(out)).shape == nib.load(str(c)).shape

    return Case(seg(c, out), 0, ["lung"], [c], check=check)


@case
def out_overwrites_an_old_output_of_its_own(d):
    c = ct(d)
    out = d / "m.nii.gz"
    out.write_bytes(b"old result")
    return Case(seg(c, out), 0, [], [c], check=lambda o, e: nib.load(str(out)))


@case
def checkpoint_card_as_quantify_csv(d):
    c = ct(d)
    w = checkpoint(d / "ck")
    card = w.with_suffix(".json")
    return Case(["quantify", str(c), "--checkpoint", str(w), "--csv", str(card), *CPU], 2, ["input"], [c, card, w])


@case
def out_name_too_long(d):
    c = ct(d)
    return Case(seg(c, d / ("x" * 300 + ".nii.gz")), 2, ["too long"], [c])


@case
def train_out_dir_is_a_file(d):
    _corrections(d)
    (d / "afile").write_text("x")
    argv = ["train", str(d / "corrections"), "-o", "m1", "--out-dir", str(d / "afile"), "--steps", "1", *CPU]
    return Case(argv, 2, ["--out-dir", "is a file"], [d / "afile"])


@case
def finetune_out_dir_is_a_file(d):
    _corrections(d)
    (d / "afile").write_text("x")
    return Case(_finetune(d, "--out-dir", d / "afile", "--steps", "1"), 2, ["--out-dir", "is a file"], [d / "afile"])


# ------------------------------------------------------------------------------------------------ 2. geometry


def _shape_check(shape, note=None):
    def check(stdout, stderr):
        out = json.loads(stdout)["output"]
        assert nib.load(out).shape == shape
        if note:
            assert note in stderr

    return check


@case
def dicom_one_missing_slice_is_filled(d):
    s = series(d, [0, 2.5, 7.5, 10.0])
    return Case(seg(s, d / "m.nii.gz"), 0, ["missing", "5.00 mm"], [s], check=_shape_check((32, 32, 5)))


@case
def dicom_two_missing_slices_apart(d):
    s = series(d, [0, 2, 6, 8, 10, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42])
    return Case(
        seg(s, d / "m.nii.gz"), 0, ["2 slice(s) missing", "4.00", "12.00"], [s], check=_shape_check((32, 32, 22))
    )


@case
def dicom_missing_slices_reversed_order(d):
    s = series(d, [10.0, 7.5, 2.5, 0.0])  # files written top-down
    return Case(seg(s, d / "m.nii.gz"), 0, ["missing"], [s], check=_shape_check((32, 32, 5)))


@case
def dicom_too_many_missing(d):
    s = series(d, [0, 2.5, 30.0, 32.5])
    return Case(seg(s, d / "m.nii.gz"), 2, ["missing", "too many"], [s], [d / "m.nii.gz"])


@case
def dicom_irregular_spacing(d):
    s = series(d, [0, 2.5, 5.0, 6.2])
    return Case(seg(s, d / "m.nii.gz"), 2, ["not regular", "1.2 mm"], [s], [d / "m.nii.gz"])


@case
def dicom_slightly_jittered_positions_are_fine(d):
    s = series(d, [0, 2.501, 4.999, 7.5])
    return Case(seg(s, d / "m.nii.gz"), 0, [], [s], check=_shape_check((32, 32, 4)))


@case
def dicom_repeated_identical_file(d):
    s = series(d, [0, 2.5, 2.5, 5.0], values=[0, 1, 1, 2])
    return Case(seg(s, d / "m.nii.gz"), 0, ["repeated"], [s], check=_shape_check((32, 32, 3)))


@case
def dicom_two_images_one_position(d):
    s = series(d, [0, 2.5, 2.5, 5.0], values=[0, 1, 2, 3])
    return Case(seg(s, d / "m.nii.gz"), 2, ["two different images", "2.50 mm"], [s])


@case
def dicom_all_at_one_position_different(d):
    s = series(d, [5.0, 5.0, 5.0])
    return Case(seg(s, d / "m.nii.gz"), 2, ["two different images"], [s])


@case
def dicom_pixel_spacing_differs(d):
    s = series(d, [0, 2.5, 5.0, 7.5], spacing={2: (0.8, 0.8)})
    return Case(seg(s, d / "m.nii.gz"), 2, ["PixelSpacing", "0.8x0.8"], [s])


@case
def dicom_one_slice_other_orientation_left_out(d):
    s = series(d, [0, 2.5, 5.0, 7.5], iop={3: [0, 1, 0, 0, 0, -1]})
    return Case(seg(s, d / "m.nii.gz"), 0, ["left out 1 of 4", "orientation"], [s], check=_shape_check((32, 32, 3)))


@case
def dicom_scout_of_other_size_left_out(d):
    s = series(d, [0, 2.5, 5.0, 7.5, 10.0], sizes={4: 48})
    return Case(seg(s, d / "m.nii.gz"), 0, ["left out 1 of 5", "size"], [s], check=_shape_check((32, 32, 4)))


@case
def dicom_rescale_slope_not_a_number(d):
    s = series(d, [0, 2.5, 5.0], slope={1: "abc"})
    return Case(seg(s, d / "m.nii.gz"), 2, ["RescaleSlope", "abc"], [s])


@case
def dicom_rescale_slope_zero(d):
    s = series(d, [0, 2.5, 5.0], slope={0: "0.00"})
    return Case(seg(s, d / "m.nii.gz"), 2, ["RescaleSlope is 0"], [s])


@case
def dicom_rescale_slope_nan(d):
    s = series(d, [0, 2.5, 5.0], slope={2: "NaN"})
    return Case(seg(s, d / "m.nii.gz"), 2, ["RescaleSlope", "finite"], [s])


@case
def dicom_rescale_slope_inf(d):
    s = series(d, [0, 2.5, 5.0], slope={2: "inf"})
    return Case(seg(s, d / "m.nii.gz"), 2, ["RescaleSlope"], [s])


def _nifti(d: Path, zooms, name="odd.nii.gz") -> Path:
    img = nib.Nifti1Image(np.full((32, 32, 3), -700, np.int16), np.diag([*zooms, 1.0]))
    nib.save(img, str(d / name))
    return d / name


@case
def nifti_voxel_1e30_mm(d):
    p = _nifti(d, (1e30, 1e30, 1e30))
    return Case(seg(p, d / "m.nii.gz"), 2, ["voxel size", "not plausible"], [p])


@case
def nifti_voxel_tiny(d):
    p = _nifti(d, (1e-6, 1e-6, 1e-6))
    return Case(seg(p, d / "m.nii.gz"), 2, ["not plausible"], [p])


@case
def nifti_voxel_one_axis_absurd(d):
    p = _nifti(d, (0.7, 0.7, 5000.0))
    return Case(["quantify", str(p), *CPU], 2, ["not plausible", "5e+03"], [p])


@case
def nifti_voxel_plausible_thick(d):
    p = _nifti(d, (0.7, 0.7, 10.0))
    return Case(seg(p, d / "m.nii.gz"), 0, [], [p], check=_shape_check((32, 32, 3)))


# ------------------------------------------------------------------------------------------------ 3. values


def _slice_8bit() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((96, 96), 30, np.uint8)
    img[20:76, 10:44] = 90
    img[20:76, 52:86] = 90
    img[30:50, 20:35] = rng.integers(140, 200, (20, 15))
    return img


def _same_as_8bit(d: Path, out: Path):
    ref = png(d, _slice_8bit(), "ref8.png")

    def check(stdout, stderr):
        assert main(seg(ref, d / "ref.nii.gz")) == 0
        a, b = (np.asanyarray(nib.load(str(p)).dataobj) for p in (out, d / "ref.nii.gz"))
        np.testing.assert_array_equal(a, b)

    return check


@case
def png16_holding_8bit_values_times_257(d):
    p = png(d, (_slice_8bit().astype(np.uint16) * 257), "s16.png")
    return Case(seg(p, d / "m.nii.gz"), 0, ["257"], [p], check=_same_as_8bit(d, d / "m.nii.gz"))


@case
def png16_holding_raw_8bit_values(d):
    p = png(d, _slice_8bit().astype(np.uint16), "s16.png")
    return Case(seg(p, d / "m.nii.gz"), 0, [], [p], check=_same_as_8bit(d, d / "m.nii.gz"))


@case
def png16_12bit_data_is_scaled(d):
    data = (_slice_8bit().astype(np.uint16) * 16).clip(0, 4095)
    p = png(d, data, "s12.png")
    return Case(seg(p, d / "m.nii.gz"), 0, ["16-bit", "12 bits"], [p], check=_shape_check((96, 96, 1)))


def _finetune(d: Path, *extra) -> list[str]:
    return ["finetune", "--base", "unet", "--data", str(d / "corrections"), "-o", "ft-x", *CPU, *map(str, extra)]


def _corrections(d: Path) -> Path:
    from napari_covidseg.corrections import save_corrections
    from napari_covidseg.io import load_ct

    c = ct(d)
    vol = load_ct(c)
    labels = load_ct(d / "sample" / "covidseg_phantom_lesions.nii.gz").array.astype(np.uint8)
    save_corrections(d / "corrections", vol, labels, [1, 2, 3])
    return d / "corrections"


for _lr in ("inf", "-inf", "nan", "-1", "1e9", "0"):

    def _make(d, lr=_lr):
        _corrections(d)
        return Case(_finetune(d, f"--lr={lr}", "--steps", "2"), 2, ["--lr"], [d / "corrections" / "corrections.json"])

    _make.__name__ = f"finetune_lr_{_lr.replace('-', 'minus_').replace('.', '_')}"
    case(_make)

for _lr in ("inf", "nan", "-0.001"):

    def _make_train(d, lr=_lr):
        _corrections(d)
        return Case(["train", str(d / "corrections"), "-o", "t-x", f"--lr={lr}", "--steps", "2", *CPU], 2, ["--lr"])

    _make_train.__name__ = f"train_lr_{_lr.replace('-', 'minus_').replace('.', '_')}"
    case(_make_train)


@case
def finetune_steps_zero(d):
    _corrections(d)
    return Case(_finetune(d, "--steps", "0"), 2, ["--steps"])


@case
def finetune_batch_size_enormous(d):
    _corrections(d)
    return Case(_finetune(d, "--batch-size", "100000000"), 2, ["--batch-size"])


@case
def checkpoint_with_nan_weights(d):
    c = ct(d)

    def poison(state):
        key = next(k for k in state if k.endswith("weight"))
        state[key][0] = float("nan")

    w = checkpoint(d / "ck", "nanny", tensors=poison)
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", w), 2, ["NaN or infinite"], [c, w], [d / "m.nii.gz"])


@case
def checkpoint_with_inf_weights(d):
    c = ct(d)

    def poison(state):
        key = [k for k in state if k.endswith("weight")][-1]
        state[key].fill_(float("inf"))

    w = checkpoint(d / "ck", "infy", tensors=poison)
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", w), 2, ["NaN or infinite"], [c, w])


def _card_case(d: Path, change, words, name="custom") -> Case:
    c = ct(d)
    w = checkpoint(d / "ck", name, card=change)
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", w), 2, words, [c, w, w.with_suffix(".json")], [d / "m.nii.gz"])


@case
def card_window_infinite(d):
    def change(data):
        data["intensity"]["hu_window"] = [-1000, float("inf")]

    return _card_case(d, change, ["hu_window", "finite"])


@case
def card_window_nan(d):
    def change(data):
        data["intensity"]["hu_window"] = [float("nan"), 200]

    return _card_case(d, change, ["hu_window"])


@case
def card_window_reversed(d):
    def change(data):
        data["intensity"]["hu_window"] = [280, -1130]

    return _card_case(d, change, ["low < high"])


# ------------------------------------------------------------------------------------------------ 4. cards


def _config(**settings):
    def change(data):
        data["config"].update(settings)

    return change


@case
def card_depth_1000(d):
    return _card_case(d, _config(depth=1000), ["config.depth", "outside"])


@case
def card_depth_zero(d):
    return _card_case(d, _config(depth=0), ["config.depth"])


@case
def card_width_huge(d):
    return _card_case(d, _config(base_width=10**9), ["config.base_width"])


@case
def card_width_negative(d):
    return _card_case(d, _config(base_width=-16), ["config.base_width"])


@case
def card_width_float(d):
    return _card_case(d, _config(base_width=16.5), ["config.base_width", "integer"])


@case
def card_width_string(d):
    return _card_case(d, _config(base_width="16"), ["config.base_width"])


@case
def card_width_bool(d):
    return _card_case(d, _config(base_width=True), ["config.base_width"])


@case
def card_unknown_setting(d):
    return _card_case(d, _config(evil="__import__('os').system('id')"), ["config.evil", "not a setting"])


@case
def card_norm_not_a_choice(d):
    return _card_case(d, _config(norm="exec"), ["config.norm", "one of"])


@case
def card_max_width_and_depth_too_big(d):
    return _card_case(d, _config(base_width=256, depth=6), ["parameters"])


@case
def card_unknown_architecture(d):
    def change(data):
        data["architecture"] = "os.system"

    return _card_case(d, change, ["unknown architecture"])


@case
def card_architecture_of_other_task(d):
    def change(data):
        data["architecture"] = "daresnet18_3d"

    return _card_case(d, change, ["classification network"])


@case
def card_input_size_huge(d):
    def change(data):
        data["input_size"] = [100000, 100000]

    return _card_case(d, change, ["input_size"])


@case
def card_too_many_classes(d):
    def change(data):
        data["classes"] = [{"id": i, "name": f"c{i}", "colour": [0, 0, 0, 1]} for i in range(1000)]

    return _card_case(d, change, ["classes"])


@case
def card_class_ids_out_of_order(d):
    def change(data):
        data["classes"][1]["id"] = 7

    return _card_case(d, change, ["class 1"])


@case
def card_is_a_list(d):
    def change(data):
        data.clear()

    c = ct(d)
    w = checkpoint(d / "ck", "listy")
    w.with_suffix(".json").write_text("[1, 2, 3]")
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", w), 2, ["JSON object"], [c, w])


@case
def card_deeply_nested(d):
    c = ct(d)
    w = checkpoint(d / "ck", "deep")
    w.with_suffix(".json").write_text("[" * 100_000 + "]" * 100_000)
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", w), 2, ["nested"], [c, w])


@case
def card_enormous(d):
    c = ct(d)
    w = checkpoint(d / "ck", "big")
    data = json.loads(w.with_suffix(".json").read_text())
    data["notes"] = "x" * 3_000_000
    w.with_suffix(".json").write_text(json.dumps(data))
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", w), 2, ["larger than"], [c, w])


@case
def card_not_utf8(d):
    c = ct(d)
    w = checkpoint(d / "ck", "latin")
    w.with_suffix(".json").write_bytes(b"\xff\xfe{")
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", w), 2, ["UTF-8"], [c, w])


@case
def card_is_a_folder(d):
    c = ct(d)
    w = checkpoint(d / "ck", "folder")
    w.with_suffix(".json").unlink()
    w.with_suffix(".json").mkdir()
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", w), 2, ["not a regular file"], [c, w])


def _bad_user_models(d: Path) -> Path:
    """A user models folder holding every kind of broken card next to one good user model."""
    models = user_models(d)
    (models / "x.json").mkdir()
    (models / "deep.json").write_text("{" * 50_000)
    (models / "deep.safetensors").write_bytes(b"")
    checkpoint(models, "huge", card=_config(depth=1000))
    checkpoint(models, "good-user-model")
    (models / "notjson.json").write_text("not json")
    return models


@case
def models_listing_survives_bad_user_cards(d):
    models = _bad_user_models(d)

    def check(stdout, stderr):
        assert "good-user-model" in stdout and "'unet' (bundled)" in stdout
        assert "model card skipped" in stderr and "huge" in stderr

    return Case(["models"], 0, ["skipped"], [models / "huge.json"], check=check)


@case
def default_segment_survives_bad_user_cards(d):
    _bad_user_models(d)
    c = ct(d)
    return Case(seg(c, d / "m.nii.gz"), 0, [], [c], check=_shape_check(nib.load(str(c)).shape))


@case
def named_bad_user_card_is_refused_with_its_reason(d):
    _bad_user_models(d)
    c = ct(d)
    return Case(seg(c, d / "m.nii.gz", "--model", "huge"), 2, ["config.depth"], [c])


@case
def named_nested_user_card_is_refused(d):
    _bad_user_models(d)
    c = ct(d)
    return Case(seg(c, d / "m.nii.gz", "--model", "deep"), 2, ["nested"], [c])


@case
def named_folder_card_is_refused(d):
    _bad_user_models(d)
    c = ct(d)
    (user_models(d) / "x.safetensors").write_bytes(b"")
    return Case(seg(c, d / "m.nii.gz", "--model", "x"), 2, ["not a regular file"], [c])


@case
def train_width_zero(d):
    _corrections(d)
    return Case(["train", str(d / "corrections"), "-o", "w0", "--width", "0", "--steps", "1", *CPU], 2, ["--width"])


@case
def train_width_enormous(d):
    _corrections(d)
    argv = ["train", str(d / "corrections"), "-o", "w9", "--width", "1000000", "--steps", "1", *CPU]
    return Case(argv, 2, ["--width"])


@case
def train_width_negative(d):
    _corrections(d)
    return Case(["train", str(d / "corrections"), "-o", "wn", "--width", "-4", "--steps", "1", *CPU], 2, ["--width"])


@case
def train_size_enormous(d):
    _corrections(d)
    return Case(["train", str(d / "corrections"), "-o", "s9", "--size", "100000", "--steps", "1", *CPU], 2, ["--size"])


@case
def train_classifier_width_enormous(d):
    argv = ["train-classifier", str(d), "-o", "c9", "--width", "100000", "--steps", "1", *CPU]
    return Case(argv, 2, ["--width"])


# ------------------------------------------------------------------------------------------------ 5. arguments


@case
def device_meta(d):
    c = ct(d)
    return Case(["segment", str(c), "-o", str(d / "m.nii.gz"), "--device", "meta"], 2, ["not supported"], [c])


@case
def device_bogus(d):
    c = ct(d)
    return Case(["segment", str(c), "-o", str(d / "m.nii.gz"), "--device", "gpu please"], 2, ["device"], [c])


@case
def device_cuda_absent(d):
    c = ct(d)
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return Case(["segment", str(c), "-o", str(d / "m.nii.gz"), "--device", "cuda:3"], 2, ["cuda"], [c])


@case
def classify_device_meta(d):
    c = ct(d)
    return Case(["classify", str(c), "--device", "meta"], 2, ["not supported"], [c])


@case
def finetune_device_meta(d):
    _corrections(d)
    return Case(_finetune(d, "--steps", "1", "--device", "meta"), 2, ["not supported"])  # the last --device wins


@case
def sample_shape_letters(d):
    return Case(["sample", "-o", str(d / "S"), "--shape", "a,b,c"], 2, ["three positive integers"], absent=[d / "S"])


@case
def sample_shape_enormous(d):
    argv = ["sample", "-o", str(d / "S"), "--shape", "100000,100000,100000"]
    return Case(argv, 2, ["--shape"], absent=[d / "S"])


@case
def sample_shape_memory(d):
    return Case(["sample", "-o", str(d / "S"), "--shape", "4096,4096,4096"], 2, ["memory"], absent=[d / "S"])


@case
def sample_shape_zero(d):
    return Case(["sample", "-o", str(d / "S"), "--shape", "0,64,64"], 2, ["positive"], absent=[d / "S"])


@case
def sample_shape_float(d):
    return Case(["sample", "-o", str(d / "S"), "--shape", "4.5,64,64"], 2, ["integers"], absent=[d / "S"])


@case
def sample_shape_empty(d):
    return Case(["sample", "-o", str(d / "S"), "--shape", ""], 2, ["integers"], absent=[d / "S"])


@case
def segment_batch_size_zero(d):
    c = ct(d)
    return Case(seg(c, d / "m.nii.gz", "--batch-size", "0"), 2, ["batch"], [c])


@case
def segment_batch_size_negative(d):
    c = ct(d)
    return Case(seg(c, d / "m.nii.gz", "--batch-size", "-3"), 2, ["batch"], [c])


@case
def segment_batch_size_enormous(d):
    c = ct(d)
    return Case(seg(c, d / "m.nii.gz", "--batch-size", "10000000000"), 2, ["batch"], [c])


@case
def segment_model_name_path_traversal(d):
    c = ct(d)
    return Case(seg(c, d / "m.nii.gz", "--model", "../../etc/passwd"), 2, ["no trained weights"], [c])


@case
def segment_checkpoint_pickle(d):
    c = ct(d)
    import pickle

    (d / "evil.pt").write_bytes(pickle.dumps({"a": 1}))
    return Case(seg(c, d / "m.nii.gz", "--checkpoint", d / "evil.pt"), 2, ["pickled"], [c, d / "evil.pt"])


# ------------------------------------------------------------------------------------------------ 6. corrections


def _damaged_index(d: Path, text: str) -> Case:
    folder = _corrections(d)
    (folder / "corrections.json").write_text(text)

    def check(stdout, stderr):
        kept = list(folder.glob("corrections.json.damaged-*"))
        assert len(kept) == 1 and kept[0].read_text() == text
        index = json.loads((folder / "corrections.json").read_text())
        assert len(index) == 3  # rebuilt from the three pairs on disk

    argv = ["corrections", "list", str(folder)]
    return Case(argv, 0, ["damaged", "rebuilt"], check=check)


@case
def corrections_index_nested(d):
    return _damaged_index(d, "[" * 50_000)


@case
def corrections_index_not_json(d):
    return _damaged_index(d, "this is not json")


@case
def corrections_index_a_list(d):
    return _damaged_index(d, "[1, 2, 3]")


@case
def corrections_index_truncated(d):
    return _damaged_index(d, '{"patient_z0001": {"key": ')


# ------------------------------------------------------------------------------------------------ the test


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _hidden_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file() and p.name != ".corrections.lock"]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_case(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    work = tmp_path / "w"
    work.mkdir()
    c = HOSTILE[name](work)
    capsys.readouterr()  # building the case may print
    before = {p: _digest(p) for p in c.inputs}
    code = main(c.argv)
    out, err = capsys.readouterr()
    assert code == c.code, f"exit {code}, expected {c.code}\n{err[-2000:]}"
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
        line = lines[0]
        assert line.startswith("covidseg: error: ") and "Traceback" not in line, line
        assert not _CLASS_NAME.search(line), line
        for word in c.words:
            assert word.lower() in line.lower(), f"{word!r} missing from: {line}"
        for p in c.absent:
            assert not p.exists(), f"{p} was written"
    else:
        assert "Traceback" not in err
        for word in c.words:
            assert word.lower() in err.lower(), f"{word!r} missing from stderr:\n{err}"
        if c.check:
            c.check(out, err)
    for p, digest in before.items():
        assert _digest(p) == digest, f"input {p} changed"
    assert not _hidden_temporaries(tmp_path), _hidden_temporaries(tmp_path)


def test_the_corpus_covers_every_kind():
    """>= 150 cases with test_bad_inputs.py, and each kind of the issue has its share."""
    from tests.test_bad_inputs import CASES

    assert len(CASES) + len(HOSTILE) >= 150, (len(CASES), len(HOSTILE))
    prefixes = {
        "outputs": ("out_", "lungs_out", "quantify_", "classify_", "sample_output", "checkpoint_card"),
        "geometry": ("dicom_", "nifti_"),
        "values": ("png16", "finetune_lr", "train_lr", "checkpoint_with", "card_window"),
        "cards": ("card_", "models_", "default_segment", "named_", "train_width", "train_size", "train_classifier"),
        "arguments": ("device_", "sample_shape", "segment_", "finetune_device", "classify_device"),
        "corrections": ("corrections_",),
    }
    for kind, starts in prefixes.items():
        n = sum(1 for name in HOSTILE if name.startswith(starts))
        assert n >= 4, (kind, n)
