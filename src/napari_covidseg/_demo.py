"""`covidseg demo`: napari with a CT (the phantom by default) and the plugin's docks; optionally run and screenshot.

``--run`` segments and classifies with the bundled models (with ``--compare``: runs the model comparison instead), then
``--screenshot PATH`` saves the whole window and exits; this works under Xvfb, which is how the README's
screenshots are made.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from napari_covidseg.errors import InputError

PLUGIN = "napari-covidseg"
DOCKS = {
    "segment": "Segment lesions",
    "classify": "Classify scan (CAM)",
    "compare": "Compare U-Net vs ResAttUNet",
    "correct": "Correct segmentation",
    "finetune": "Fine-tune on corrections",
    "quantify": "Quantify lung involvement",
}
WINDOW_SIZE = (1600, 1000)  # preferred; never larger than the screen's free area (fit_window)
POLL_MS = 200
SETTLE_S = 1.5  # seconds the window gets to lay itself out before a screenshot
log = logging.getLogger(__name__)


def open_demo(
    viewer, image: str | None = None, compare: bool = False, correct: bool = False, quantify: bool = False
) -> dict:
    """Open ``image`` (or the phantom sample) and dock the plugin's widgets; returns {key: widget}."""
    if image is None:
        layers = viewer.open_sample(PLUGIN, "phantom")
        for layer in layers[1:]:
            layer.visible = False  # the reference mask stays available, the model output is what is shown
    else:
        if not Path(image).exists():
            raise InputError(f"{image}: no such file or folder")
        layers = viewer.open(image, plugin=PLUGIN)
    keys = ["segment", "classify"] + (["compare"] if compare else []) + (["correct", "finetune"] if correct else [])
    keys += ["quantify"] if quantify else []
    widgets = {}
    for key in keys:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, DOCKS[key], tabify=key not in ("segment", "classify"))
        widgets[key] = widget
    ct = layers[0].name
    for widget in widgets.values():
        if hasattr(widget, "image"):
            widget.image.setCurrentText(ct)
    return widgets


def fit_window(viewer, size: tuple[int, int] = WINDOW_SIZE) -> tuple[int, int]:
    """Resize the viewer's window to ``size`` or to the screen's free area if that is smaller (a 1920x1080 laptop,
    a taskbar); the docks scroll rather than push anything below the screen's edge. Returns the size set."""
    from qtpy.QtWidgets import QApplication

    screen = QApplication.primaryScreen()
    width, height = size
    if screen is not None:
        free = screen.availableGeometry()
        width, height = min(width, free.width()), min(height, free.height())
    viewer.window.resize(width, height)
    return width, height


def start_jobs(widgets: dict, device: str = "auto") -> None:
    """Press Run on the docks, each with the given device (with the compare dock docked: only the comparison)."""
    keys = ["compare"] if "compare" in widgets else ["segment", "classify"]
    for widget in (widgets[k] for k in keys):
        widget.device.setCurrentText(device)
        widget.run_button.click()


def show_lesion_slice(viewer) -> None:
    """Move to the axial slice with the most predicted lesion voxels (the first labels layer with any)."""
    from napari.layers import Labels

    for layer in reversed(viewer.layers):
        is_result = "model" in layer.metadata  # a model's lesion labels (not the reference, not a disagreement map)
        if isinstance(layer, Labels) and is_result and layer.data.ndim == 3 and layer.data.any():
            per_slice = (layer.data > 0).reshape(layer.data.shape[0], -1).sum(axis=1)
            z = int(np.argmax(per_slice))
            viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
            return


def wait_for_job(dock, poll_s: float = 0.05) -> None:
    """Run the Qt event loop until ``dock``'s job has ended, then a few more rounds (its result layout settles)."""
    from qtpy.QtWidgets import QApplication

    while dock.runner.running:
        QApplication.processEvents()
        time.sleep(poll_s)
    for _ in range(10):
        QApplication.processEvents()


def dismiss_notifications() -> None:
    """Close napari's pop-up notifications (e.g. its PyQt5 deprecation notice) so they do not cover the scan."""
    from qtpy.QtWidgets import QApplication

    for widget in QApplication.allWidgets():
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()


def run_demo(
    image: str | None = None,
    *,
    run: bool = False,
    compare: bool = False,
    correct: bool = False,
    quantify: bool = False,
    screenshot: str | None = None,
    device: str = "auto",
) -> int:
    """Open the viewer (blocking until it closes, or until the screenshot is saved). Returns an exit code."""
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-covidseg demo")
    fit_window(viewer)
    widgets = open_demo(viewer, image, compare, correct, quantify)
    state = {"code": 0}

    def finish() -> None:
        jobs = {k: w for k, w in widgets.items() if hasattr(w, "runner")}
        failed = [k for k, w in jobs.items() if run and w.runner.outcome not in ("returned", "")]
        if failed:
            log.error("demo: %s did not finish: %s", ", ".join(failed), widgets[failed[0]].status.text())
            state["code"] = 1
        if run and "compare" in widgets:  # the comparison ran: show its results side by side
            widgets["compare"].grid.setChecked(True)
        viewer.reset_view()  # the window was resized after the layers came in: fit the scan to the canvas
        show_lesion_slice(viewer)
        if screenshot:
            dismiss_notifications()
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(screenshot, canvas_only=False, flash=False)
            print(f"screenshot: {screenshot}")
            viewer.close()

    if run:
        start_jobs(widgets, device)
    if run or screenshot:
        timer = QTimer()

        started = time.monotonic()

        def poll() -> None:
            if time.monotonic() - started < SETTLE_S:  # let the window reach its size and draw once
                return
            if run and any(w.runner.running for w in widgets.values() if hasattr(w, "runner")):
                return
            timer.stop()
            finish()

        timer.timeout.connect(poll)
        timer.start(POLL_MS)
    napari.run()
    return state["code"]
