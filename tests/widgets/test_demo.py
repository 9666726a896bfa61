"""`covidseg demo`: the docks come from the manifest, --run fills the viewer, --screenshot writes what a user sees."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from napari.layers import Image, Labels
from PIL import Image as PILImage

from napari_covidseg._demo import open_demo, show_lesion_slice, start_jobs
from napari_covidseg.cli import main
from napari_covidseg.constants import LESION_COLOURS
from tests.widgets.conftest import wait_for


def colour_pixels(png: np.ndarray, rgba, tol: int = 40) -> int:
    """How many screenshot pixels are close to a class colour (labels are blended with the CT, hence ``tol``)."""
    target = np.array(rgba[:3]) * 255
    return int((np.abs(png[..., :3].astype(int) - target).max(axis=-1) < tol).sum())


def test_demo_runs_the_docks_and_screenshots(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    widgets = open_demo(viewer)
    assert set(widgets) == {"segment", "classify"}
    assert widgets["segment"].image.currentText() == "phantom CT"
    start_jobs(widgets, "cpu")
    for widget in widgets.values():
        wait_for(qtbot, widget.runner)
        assert widget.runner.outcome == "returned", widget.status.text()
    labels = viewer.layers["phantom CT lesions (unet)"]
    assert isinstance(labels, Labels) and labels.data.any()
    cams = [layer for layer in viewer.layers if isinstance(layer, Image) and " CAM " in layer.name]
    assert len(cams) == 1 and cams[0].blending == "translucent"
    show_lesion_slice(viewer)
    z = int(round(viewer.dims.point[0] / labels.scale[0]))
    assert labels.data[z].any()
    shot = viewer.screenshot(str(tmp_path / "demo.png"), canvas_only=False, flash=False)
    assert shot.shape[0] > 400 and shot.shape[1] > 600
    # lesion colours reach the screen: yellow GGO from the prediction on the shown slice
    assert colour_pixels(shot, LESION_COLOURS[1]) > 20


def test_demo_rejects_a_missing_image(capsys):
    assert main(["demo", "/no/such/scan.nii.gz"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (run under xvfb-run)")
def test_demo_command_writes_a_screenshot(tmp_path):
    """The README's command, as a user runs it: a new process, a shown window, exit code 0, a PNG."""
    out = tmp_path / "shot.png"
    env = {**os.environ, "QT_API": os.environ.get("QT_API", "pyqt5"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "napari_covidseg", "demo", "--run", "--device", "cpu", "--screenshot", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = np.asarray(PILImage.open(out))
    assert png.shape[0] > 600 and png.shape[1] > 1000
    assert colour_pixels(png, LESION_COLOURS[1]) > 20
