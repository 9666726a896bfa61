"""Write labels (or any display-order array) back to NIfTI in the source scan's geometry."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io.orientation import to_disk
from napari_covidseg.io.volume import CTVolume


def save_labels(labels: np.ndarray, like: CTVolume, path: str | Path) -> Path:
    """Write a label array (display order, same shape as ``like.array``) as uint8 NIfTI with ``like``'s affine.

    The display reorientation is undone first, so the file overlays the original scan voxel for voxel.
    """
    labels = np.asarray(labels)
    if labels.shape != like.shape:
        raise InputError(f"labels shape {labels.shape} does not match the CT {like.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise InputError("labels must be integers in 0..255")
    return save_array(labels.astype(np.uint8), like, path)


def save_array(array: np.ndarray, like: CTVolume, path: str | Path) -> Path:
    """Write any display-order array (labels uint8, CAM float32, CT int16) in ``like``'s on-disk geometry."""
    path = Path(path)
    if not (path.name.endswith(".nii.gz") or path.name.endswith(".nii")):
        raise InputError(f"{path}: output must end in .nii.gz or .nii")
    disk = to_disk(np.asarray(array), like.meta["ornt"])
    img = nib.Nifti1Image(disk, like.affine)
    img.set_sform(like.affine, code=int(like.meta.get("sform_code", 1)) or 1)
    img.set_qform(like.affine, code=int(like.meta.get("qform_code", 1)) or 1)
    img.header.set_xyzt_units("mm", "sec")
    _atomic_save(img, path)
    return path


def default_file_mode() -> int:
    """0o666 minus the process umask: what a plain ``open(path, "w")`` would create (mkstemp makes 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_path_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty file next to ``path`` (same filesystem, so ``os.replace`` is atomic), with normal permissions."""
    # the name is cut short: a long output name plus prefix, random part and suffix must stay under 255 bytes
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, default_file_mode())
    return Path(tmp)


def write_atomic(path: str | Path, write) -> Path:
    """``write(binary file)`` into a temporary file beside ``path``, flush it to disk, then ``os.replace`` it onto
    ``path``: a crash, an error or an interruption (SIGINT; SIGTERM once the CLI turned it into an exception) leaves
    any previous file intact and no temporary file behind. A failure to write names ``path``, not the temporary."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_beside(path)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """UTF-8 text written with :func:`write_atomic`."""
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def _atomic_save(img: nib.Nifti1Image, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_beside(path, suffix)
        nib.save(img, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _write_error(path: Path, exc: OSError) -> InputError:
    """One line naming the user's output (the temporary file beside it means nothing to them)."""
    why = (exc.strerror or str(exc)).lower()
    return InputError(f"{path}: cannot write the output ({why})")
