"""The npe2 manifest: one source of truth, valid, and its sample data opens in a real napari viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "src" / "napari_covidseg" / "napari.yaml"


def test_top_level_manifest_is_the_packaged_file():
    assert (ROOT / "napari.yaml").read_bytes() == PACKAGED.read_bytes()


def test_manifest_validates_and_is_found_by_entry_point():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(PACKAGED)
    assert manifest.name == "napari-covidseg"
    installed = PluginManifest.from_distribution("napari-covidseg")
    assert installed.name == manifest.name
    contributions = installed.contributions
    assert {s.key for s in contributions.sample_data} == {"phantom"}
    assert {w.display_name for w in contributions.widgets} == {
        "Segment lesions",
        "Classify scan (CAM)",
        "Compare U-Net vs ResAttUNet",
        "Correct segmentation",
        "Fine-tune on corrections",
        "Quantify lung involvement",
    }
    (reader,) = contributions.readers
    assert reader.accepts_directories and "*.nii.gz" in reader.filename_patterns
    (writer,) = contributions.writers
    assert [str(t) for t in writer.layer_types] == ["labels"] and ".nii.gz" in writer.filename_extensions
    assert {"napari/layers/segment", "napari/layers/classify"} <= set(contributions.menus)


def test_npe2_validate_imports_every_command():
    """`npe2 validate --imports`: every python_name in the manifest resolves to a real callable."""
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-covidseg")
    manifest.validate_imports()


def test_sample_data_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-covidseg", "phantom")
    ct, lesions = viewer.layers["phantom CT"], viewer.layers["phantom lesions (reference)"]
    assert len(layers) == 2
    assert ct.data.ndim == 3 and np.issubdtype(lesions.data.dtype, np.integer)
    np.testing.assert_allclose(ct.scale, ct.metadata["spacing"])
    np.testing.assert_allclose(lesions.scale, ct.scale)
    assert set(np.unique(lesions.data)) == {0, 1, 2, 3}
