"""Open a real DICOM series in napari through the plugin's reader, overlay a mask from `covidseg segment`, segment
it with the Segment dock (lung-first, lung mask shown), screenshot.

The "Done when" check on a real hospital series (run under Xvfb):
    .venv/bin/covidseg segment ../shared/data/covid_ct_md_dicom_P002/P002 -o p002.nii.gz
    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/napari_dicom_check.py \
        ../shared/data/covid_ct_md_dicom_P002/P002 docs/screenshots/dicom.png --mask p002.nii.gz
Both the series and the mask are opened with ``viewer.open(path, plugin="napari-covidseg")``, what File > Open does
once the plugin is chosen as the reader. Prints the layer's scale next to the DICOM tags it came from, whether the
CLI's mask lies on the series voxel for voxel (it must equal the dock's own segmentation), the segmentation time,
and the lesion figures the dock shows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import napari
import numpy as np
import pydicom
from qtpy.QtWidgets import QApplication

from napari_covidseg._demo import PLUGIN, dismiss_notifications, fit_window, wait_for_job


def first_header(folder: Path):
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM (a SOURCE.md, a licence): try the next file
            continue
    raise SystemExit(f"{folder}: no DICOM file")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("screenshot")
    ap.add_argument("--mask", help="a label map written by `covidseg segment FOLDER -o MASK` to overlay and compare")
    args = ap.parse_args(argv)
    first = first_header(args.folder)
    viewer = napari.Viewer(title="napari-covidseg DICOM check")
    fit_window(viewer)
    start = time.perf_counter()
    (layer,) = viewer.open(str(args.folder), plugin=PLUGIN)
    print(f"opened in {time.perf_counter() - start:.1f} s (transfer syntax {first.file_meta.TransferSyntaxUID.name})")
    print(f"layer {layer.name!r}: shape {layer.data.shape}, scale (z, y, x) mm {tuple(np.round(layer.scale, 4))}")
    print(f"DICOM PixelSpacing {list(first.PixelSpacing)}, SliceThickness {first.get('SliceThickness')}")
    mask_layer = None
    if args.mask:
        (mask_layer,) = viewer.open(args.mask, plugin=PLUGIN)
        mask_layer.name = f"{Path(args.mask).name} (covidseg segment)"
        same_grid = mask_layer.data.shape == layer.data.shape and np.allclose(mask_layer.scale, layer.scale)
        print(f"mask {args.mask}: {type(mask_layer).__name__} layer, same grid as the series: {same_grid}")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment lesions")
    dock.image.setCurrentText(layer.name)
    dock.show_lungs.setChecked(True)
    start = time.perf_counter()
    dock.run_button.click()
    wait_for_job(dock)
    print(f"segment dock: {dock.runner.outcome} in {time.perf_counter() - start:.1f} s; {dock.status.text()}")
    seg = dock.last_result
    if seg is not None:
        summary = seg.summary(tuple(layer.scale))
        print("inside the lungs (ml):", summary["inside_lungs_ml"], "outside:", summary["outside_lungs_ml"])
        print("lung ml:", summary["lung_ml"], "% involved:", summary["lung_involved_pct"])
        if mask_layer is not None:
            equal = np.array_equal(np.asarray(mask_layer.data), seg.labels)
            print(f"CLI mask equals the dock's segmentation voxel for voxel: {equal}")
            viewer.layers.remove(mask_layer)  # the dock's layer is the same labels; one overlay reads better
        per_slice = (seg.labels > 0).reshape(seg.labels.shape[0], -1).sum(axis=1)
        viewer.dims.set_point(0, layer.data_to_world((int(np.argmax(per_slice)), 0, 0))[0])
    dismiss_notifications()
    for _ in range(10):  # let the docks lay out their new tables
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.screenshot(args.screenshot, canvas_only=False, flash=False)
    print(f"screenshot: {args.screenshot}")
    viewer.close()
    return 0 if dock.runner.outcome == "returned" else 1


if __name__ == "__main__":
    sys.exit(main())
