"""Reading reference label masks (PNG/JPG palette or greyscale indices, NIfTI, .npy) without intensity conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_covidseg.errors import InputError

MASK_SUFFIXES = (".png", ".nii.gz", ".nii", ".npy", ".jpg", ".jpeg")


def load_labels(path: str | Path) -> np.ndarray:
    """Integer labels in display order (z, y, x), uint8.

    PNG masks are read as stored indices (palette mode "P" gives class ids directly; it is never converted to
    grey, which would change the values). A binary {0, 255} mask becomes {0, 1}.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".png", ".jpg", ".jpeg")):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L", "I", "1", "I;16"):
                    raise InputError(f"{path}: mask must be an indexed or greyscale image, not {im.mode}")
                data = np.asarray(im).astype(np.int64)[np.newaxis]
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path}: not a readable mask image ({exc})") from exc
    else:
        from napari_covidseg.io import load_ct

        data = np.rint(load_ct(path).array).astype(np.int64)
    values = np.unique(data)
    if set(values.tolist()) <= {0, 255}:
        data = (data > 0).astype(np.int64)
    elif values.min() < 0 or values.max() > 255:
        raise InputError(f"{path}: label values must be 0..255, found {values.min()}..{values.max()}")
    return data.astype(np.uint8)


def find_mask(masks_dir: Path, stem: str) -> Path | None:
    """The mask in ``masks_dir`` with the same stem as an image (any supported suffix), or None."""
    for suffix in MASK_SUFFIXES:
        candidate = masks_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None
