"""napari sample data: the synthetic phantom as layer-data tuples (no napari import needed)."""

from __future__ import annotations

from napari_covidseg.layers import image_layer_data, labels_layer_kwargs


def phantom_layers() -> list[tuple]:
    """The default phantom CT (HU, lung window) and its reference lesion labels, placed on the CT's geometry."""
    from napari_covidseg.sample import make_phantom

    ph = make_phantom()
    volume = ph.volume("napari-covidseg phantom (synthetic)")
    ct, ct_kwargs, _ = image_layer_data(volume, name="phantom CT")
    ct_kwargs["metadata"]["intensity"] = "HU"
    lesions = labels_layer_kwargs("phantom lesions (reference)", ct_kwargs)
    return [(ct, ct_kwargs, "image"), (ph.lesions, lesions, "labels")]
