"""napari-covidseg: COVID-19 chest-CT lesion segmentation and classification, in napari and on the command line.

The Qt-free core (``io``, ``models``, ``inference``, ``training``, ``analysis``) is the Python API::

    from napari_covidseg import load_ct, segment_volume, save_labels
    ct = load_ct("scan.nii.gz")              # NIfTI, DICOM folder/file, PNG/JPG, .npy
    seg = segment_volume(ct, "unet")          # labels (z, y, x) uint8 on the CT grid
    save_labels(seg.labels, like=ct, path="lesions.nii.gz")
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "CTVolume": "napari_covidseg.io",
    "load_ct": "napari_covidseg.io",
    "save_labels": "napari_covidseg.io",
    "segment_volume": "napari_covidseg.inference",
    "classify_volume": "napari_covidseg.inference",
    "make_phantom": "napari_covidseg.sample",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    # Lazy so that `import napari_covidseg` (done by napari at start-up for every plugin) does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_covidseg' has no attribute {name!r}")
