"""Memory guard: estimates, the readable refusal, and header-level refusals before any pixel is allocated."""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from napari_covidseg.errors import InputError
from napari_covidseg.io import load_ct
from napari_covidseg.memory import (
    ENV_LIMIT,
    available_bytes,
    check_fits,
    estimate_segmentation_bytes,
    format_bytes,
)
from tests.test_bad_inputs import nifti_bytes_claiming, save_png, write_series

MB = 1024 * 1024


def test_available_bytes_reads_the_machine_or_the_override(monkeypatch):
    monkeypatch.delenv(ENV_LIMIT, raising=False)
    real = available_bytes()
    assert 0 < real < 1 << 62
    with open("/proc/meminfo") as fh:
        total_kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    assert real <= total_kb * 1024
    monkeypatch.setenv(ENV_LIMIT, "300")
    assert available_bytes() == 300 * MB
    monkeypatch.setenv(ENV_LIMIT, "0.5")
    assert available_bytes() == MB // 2
    for bad in ("lots", "-5", "0", "nan"):
        monkeypatch.setenv(ENV_LIMIT, bad)
        with pytest.raises(InputError, match=ENV_LIMIT):
            available_bytes()


def test_estimate_grows_with_shape_batch_classes_and_probabilities():
    base = dict(batch_size=8, num_classes=4, input_size=256, return_probabilities=False)
    small = estimate_segmentation_bytes((40, 256, 256), **base)
    assert small >= 40 * 256 * 256 * 5  # at least the float32 volume and the uint8 labels
    assert estimate_segmentation_bytes((80, 256, 256), **base) > small
    assert estimate_segmentation_bytes((40, 512, 512), **base) > estimate_segmentation_bytes((40, 256, 512), **base)
    assert estimate_segmentation_bytes((40, 256, 256), **{**base, "batch_size": 16}) > small
    assert estimate_segmentation_bytes((40, 256, 256), **{**base, "num_classes": 8}) > small
    assert estimate_segmentation_bytes((40, 256, 256), **{**base, "input_size": 384}) > small
    with_probs = estimate_segmentation_bytes((40, 256, 256), **{**base, "return_probabilities": True})
    assert with_probs - small >= 40 * 4 * 256 * 256 * 2  # float16 probabilities for every class
    # input size as (h, w) is the same as a side; a batch larger than the volume costs no more than the volume
    assert estimate_segmentation_bytes((40, 256, 256), **{**base, "input_size": (256, 256)}) == small
    assert estimate_segmentation_bytes((2, 256, 256), **{**base, "batch_size": 64}) == estimate_segmentation_bytes(
        (2, 256, 256), **{**base, "batch_size": 2}
    )
    # a typical chest CT stays far below a typical laptop, an absurd one far above any machine
    assert estimate_segmentation_bytes((300, 512, 512), **base) < 2 * 1024**3
    assert estimate_segmentation_bytes((100000, 4096, 4096), **base) > 1024**4


def test_check_fits_raises_a_readable_message_under_a_small_limit(monkeypatch):
    monkeypatch.setenv(ENV_LIMIT, "100")
    check_fits(50 * MB, "segmenting scan.nii.gz")  # 50 MB of 100 MB: fine
    need = estimate_segmentation_bytes((300, 512, 512), 8, 4, 256, True)
    with pytest.raises(InputError) as info:
        check_fits(need, "segmenting scan.nii.gz")
    message = str(info.value)
    assert message.startswith(f"segmenting scan.nii.gz needs about {format_bytes(need)} of memory")
    assert "but only 100 MB is available" in message and ENV_LIMIT in message
    assert "batch size" in message  # a suggestion of what to do
    with pytest.raises(InputError, match="only 100 MB"):
        check_fits(81 * MB, "x")  # more than 80 % of what is available is refused


@pytest.mark.parametrize(
    "n, text",
    [(512, "512 bytes"), (3 * 1024, "3 kB"), (20 * MB, "20 MB"), (5 * 1024**3, "5.0 GB"), (3 * 1024**4, "3.0 TB")],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def _peak_mb_of(fn) -> float:
    """Peak memory (MB) traced while ``fn()`` runs; numpy reports its array buffers to tracemalloc too."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / MB


def test_tracemalloc_sees_numpy_buffers():
    assert _peak_mb_of(lambda: np.ones(10 * MB, np.uint8)) >= 10


def _refused(path) -> str:
    with pytest.raises(InputError) as info:
        load_ct(path)
    return str(info.value)


def test_absurd_header_is_refused_before_any_allocation(tmp_path, monkeypatch):
    """A 700-byte file whose header claims 100000 x 100000 x 1000 voxels (18 TB) allocates nothing."""
    monkeypatch.delenv(ENV_LIMIT, raising=False)
    (tmp_path / "huge.nii").write_bytes(nifti_bytes_claiming((100000, 100000, 1000), version=2))
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(nifti_bytes_claiming((32767, 32767, 32767))))
    for name in ("huge.nii", "huge.nii.gz"):
        messages: list[str] = []
        peak = _peak_mb_of(lambda name=name, messages=messages: messages.append(_refused(tmp_path / name)))
        assert peak < 5, f"{name}: {peak:.1f} MB allocated before refusing"
        assert "x".join(str(s) for s in nib.load(str(tmp_path / name)).shape) in messages[0]


def test_consistent_file_too_large_for_memory_is_refused_up_front(tmp_path, monkeypatch):
    """A real (all-zero, so tiny when compressed) 256x256x64 volume against a 10 MB budget: the header says 16 MB
    of float32, so nothing is read."""
    nib.save(nib.Nifti1Image(np.zeros((256, 256, 64), np.int16), np.eye(4)), str(tmp_path / "zeros.nii.gz"))
    assert (tmp_path / "zeros.nii.gz").stat().st_size < 100_000
    monkeypatch.setenv(ENV_LIMIT, "10")
    messages = []
    peak = _peak_mb_of(lambda: messages.append(_refused(tmp_path / "zeros.nii.gz")))
    assert peak < 3
    assert "zeros.nii.gz: reading the 256x256x64 volume needs about 16 MB of memory but only 10 MB" in messages[0]
    monkeypatch.setenv(ENV_LIMIT, "100")
    assert load_ct(tmp_path / "zeros.nii.gz").shape == (64, 256, 256)


@pytest.mark.parametrize("kind", ["dicom", "png", "png_folder", "npy"])
def test_every_reader_checks_memory_before_reading_pixels(kind, tmp_path, monkeypatch):
    if kind == "dicom":
        path = write_series(tmp_path / "series", n=16, rows=256, cols=256)
    elif kind == "png":
        path = save_png(tmp_path / "slice.png", np.zeros((1024, 1024), np.uint8))
    elif kind == "png_folder":
        (tmp_path / "slices").mkdir()
        for i in range(4):
            save_png(tmp_path / "slices" / f"{i}.png", np.zeros((512, 512), np.uint8))
        path = tmp_path / "slices"
    else:
        path = tmp_path / "array.npy"
        np.save(path, np.zeros((4, 512, 512), np.int16))
    monkeypatch.setenv(ENV_LIMIT, "1")  # 1 MB: each of these needs 4 MB as float32
    message = _refused(path)
    assert str(path) in message and "needs about 4 MB of memory but only 1 MB is available" in message
    monkeypatch.setenv(ENV_LIMIT, "200")
    assert min(load_ct(path).shape[1:]) >= 256


def test_normal_small_volume_passes(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_LIMIT, "64")
    data = np.random.default_rng(0).integers(-1000, 400, (48, 40, 12)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), str(tmp_path / "ct.nii.gz"))
    vol = load_ct(tmp_path / "ct.nii.gz")
    assert vol.shape == (12, 40, 48) and vol.intensity == "HU"
    check_fits(estimate_segmentation_bytes(vol.shape, 8, 4, 64, False), "segmenting ct.nii.gz")
