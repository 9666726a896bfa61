"""Quantify a real HU volume in napari through the docks (Segment, then Quantify) and screenshot the window.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/napari_quantify_check.py \
        ../shared/data/covid_ct_md_sample/volumes_256/COVID-19_P002.nii.gz docs/screenshots/quantify.png
Prints the dock's numbers next to those of `covidseg quantify`'s core on the same labels (they must agree).
"""

from __future__ import annotations

import sys

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_covidseg._demo import PLUGIN, dismiss_notifications, fit_window, wait_for_job
from napari_covidseg.analysis.quantify import quantify
from napari_covidseg.io import load_ct


def main(path: str, screenshot: str) -> int:
    viewer = napari.Viewer(title="napari-covidseg quantify check")
    fit_window(viewer)
    (ct,) = viewer.open(path, plugin=PLUGIN)
    _, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment lesions")
    _, quant = viewer.window.add_plugin_dock_widget(PLUGIN, "Quantify lung involvement")
    seg.image.setCurrentText(ct.name)
    seg.run_button.click()
    wait_for_job(seg)
    lesions = viewer.layers[f"{ct.name} lesions (unet)"]
    quant.image.setCurrentText(ct.name)
    quant.lesions.setCurrentText(lesions.name)
    quant.run_button.click()
    wait_for_job(quant)
    q = quant.last[0]
    core, _ = quantify(load_ct(path), np.asarray(lesions.data), model="unet")
    print(f"dock: lungs {q.lung_ml}, involvement {q.involvement_pct}, severity {q.severity}")
    print(f"core: lungs {core.lung_ml}, involvement {core.involvement_pct}, severity {core.severity}")
    per_slice = (np.asarray(lesions.data) > 0).reshape(lesions.data.shape[0], -1).sum(axis=1)
    viewer.dims.set_point(0, ct.data_to_world((int(np.argmax(per_slice)), 0, 0))[0])
    dismiss_notifications()
    for _ in range(10):
        QApplication.processEvents()
    viewer.screenshot(screenshot, canvas_only=False, flash=False)
    print(f"screenshot: {screenshot}")
    viewer.close()
    same = q.severity == core.severity and abs(q.involvement_pct["total"] - core.involvement_pct["total"]) < 1e-9
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
