"""Widget tests: a real napari viewer (pytest-qt, Xvfb) with a small phantom CT opened the way the reader does."""

from __future__ import annotations

import pytest

from napari_covidseg.layers import image_layer_data
from napari_covidseg.sample import make_phantom

# Long enough for a cold CPU run of the bundled models on the small phantom, short enough to fail a hang.
JOB_TIMEOUT_MS = 120_000


@pytest.fixture(scope="session")
def small_phantom():
    """16 x 128 x 128 voxels of 5 x 2.4 x 2.4 mm: every lesion class present, seconds to segment on CPU."""
    return make_phantom(seed=1, shape=(16, 128, 128), spacing=(5.0, 2.4, 2.4))


@pytest.fixture
def viewer_with_ct(make_napari_viewer, small_phantom):
    """A viewer holding the phantom CT as an Image layer (exactly what the plugin's reader produces)."""
    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(small_phantom.volume("phantom"), name="ct")
    viewer.add_image(data, **kwargs)
    return viewer


def wait_for(qtbot, runner, timeout: int = JOB_TIMEOUT_MS) -> None:
    """Block until the dock's background job has finished (its callbacks have run)."""
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout)
