"""Open a real DICOM folder in napari through the plugin's reader, segment it with the Segment dock, screenshot.

The "Done when" check of the napari plugin on real data (run under Xvfb):
    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/napari_dicom_check.py \
        ../shared/data/lungmask_testdata_ct docs/screenshots/dicom.png
Prints the layer's scale next to the DICOM tags it came from, the segmentation time and lesion volumes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
import pydicom
from qtpy.QtWidgets import QApplication

from napari_covidseg._demo import PLUGIN, WINDOW_SIZE, dismiss_notifications, wait_for_job


def main(folder: str, screenshot: str) -> int:
    first = pydicom.dcmread(sorted(p for p in Path(folder).iterdir() if p.suffix == ".dcm")[0], stop_before_pixels=True)
    viewer = napari.Viewer(title="napari-covidseg DICOM check")
    viewer.window.resize(*WINDOW_SIZE)
    (layer,) = viewer.open(folder, plugin=PLUGIN)
    print(f"layer {layer.name!r}: shape {layer.data.shape}, scale (z, y, x) mm {tuple(np.round(layer.scale, 4))}")
    print(f"DICOM PixelSpacing {list(first.PixelSpacing)}, SliceThickness {first.get('SliceThickness')}")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment lesions")
    dock.image.setCurrentText(layer.name)
    start = time.perf_counter()
    dock.run_button.click()
    wait_for_job(dock)
    print(f"segment dock: {dock.runner.outcome} in {time.perf_counter() - start:.1f} s; {dock.status.text()}")
    if dock.last_result is not None:
        print("volumes (ml):", {k: round(v, 2) for k, v in dock.last_result.volumes_ml(tuple(layer.scale)).items()})
    labels = [lyr for lyr in viewer.layers if "lesions" in lyr.name]
    if labels:
        per_slice = (labels[0].data > 0).reshape(labels[0].data.shape[0], -1).sum(axis=1)
        viewer.dims.set_point(0, layer.data_to_world((int(np.argmax(per_slice)), 0, 0))[0])
    dismiss_notifications()
    for _ in range(10):  # let the docks lay out their new tables
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.screenshot(screenshot, canvas_only=False, flash=False)
    print(f"screenshot: {screenshot}")
    viewer.close()
    return 0 if dock.runner.outcome == "returned" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
