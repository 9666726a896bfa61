"""The class-activation map as a radiologist sees it: a real DICOM series opened through the plugin's reader,
segmented lung-first (Segment dock), classified (Classify dock, CAM of the predicted class), the view on the slice
with the most lesion, screenshot of the whole window.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/napari_cam_check.py \
        ../shared/data/covid_ct_md_dicom_P002/P002 docs/screenshots/cam.png
(``make screenshots-real``). Prints the probabilities, where the map is kept and how much of it lay outside.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_covidseg._demo import PLUGIN, dismiss_notifications, fit_window, wait_for_job


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scan", type=Path, help="a DICOM series folder or a NIfTI file")
    ap.add_argument("screenshot")
    args = ap.parse_args(argv)
    viewer = napari.Viewer(title="napari-covidseg CAM check")
    fit_window(viewer)
    (layer,) = viewer.open(str(args.scan), plugin=PLUGIN)
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment lesions")
    _, classify = viewer.window.add_plugin_dock_widget(PLUGIN, "Classify scan (CAM)")
    outcomes = []
    for dock in (segment, classify):
        dock.image.setCurrentText(layer.name)
        start = time.perf_counter()
        dock.run_button.click()
        wait_for_job(dock)
        outcomes.append(dock.runner.outcome)
        print(f"{type(dock).__name__}: {dock.runner.outcome} in {time.perf_counter() - start:.1f} s")
    res = classify.last_result
    if res is not None:
        print("probabilities:", {k: round(v, 3) for k, v in res.probabilities.items()})
        print(f"CAM of {res.cam_class}: kept in {res.cam_region}, {100 * res.cam_inside:.1f} % of its weight inside")
    segment.navigator.go_to_most()
    classify.parent().raise_()  # the Classify dock's tab in front: its colour scale and words show
    dismiss_notifications()
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.screenshot(args.screenshot, canvas_only=False, flash=False)
    print(f"screenshot: {args.screenshot}")
    viewer.close()
    return 0 if outcomes == ["returned", "returned"] else 1


if __name__ == "__main__":
    sys.exit(main())
