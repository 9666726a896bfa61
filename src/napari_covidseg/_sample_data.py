"""napari sample data: the synthetic phantom as layer-data tuples (no napari import needed)."""

from __future__ import annotations

from napari_covidseg.constants import LESION_CLASSES, LUNG_WINDOW


def phantom_layers() -> list[tuple]:
    """The default phantom CT (HU, lung window) and its reference lesion labels, with spacing as ``scale``."""
    from napari_covidseg.sample import make_phantom

    ph = make_phantom()
    meta = {"spacing": ph.spacing, "intensity": "HU", "source": "napari-covidseg phantom (synthetic)"}
    return [
        (
            ph.ct,
            {
                "name": "phantom CT",
                "scale": ph.spacing,
                "colormap": "gray",
                "contrast_limits": list(LUNG_WINDOW),
                "metadata": meta,
            },
            "image",
        ),
        (
            ph.lesions,
            {"name": "phantom lesions (reference)", "scale": ph.spacing, "metadata": {"classes": dict(LESION_CLASSES)}},
            "labels",
        ),
    ]
