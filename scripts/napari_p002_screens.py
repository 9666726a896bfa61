"""The review a radiologist does, on a real series, as screenshots: P002 opened through the plugin's reader with all
six docks on a 1920x1080 screen, then

1. Compare (U-Net vs ResAttUNet, lung-first): the grid, the CT under each result      -> PREFIX_compare.png
2. Segment + Classify: the CAM over the lesions, on the slice with the most lesion    -> PREFIX_cam.png
3. Quantify: the whole window with the Quantify dock in front (nothing cut off)       -> PREFIX_window.png

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/napari_p002_screens.py \
        ../shared/data/covid_ct_md_dicom_P002/P002 docs/screenshots/p002
(``make screenshots-real``). Prints each job's time, the probabilities and where the CAM is kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_covidseg._demo import dismiss_notifications, fit_window, open_demo, wait_for_job


def settle() -> None:
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def run(dock, what: str) -> str:
    start = time.perf_counter()
    dock.run_button.click()
    wait_for_job(dock)
    print(f"{what}: {dock.runner.outcome} in {time.perf_counter() - start:.1f} s; {dock.status.text()}")
    return dock.runner.outcome


def shot(viewer, path: str) -> None:
    dismiss_notifications()
    settle()
    viewer.screenshot(path, canvas_only=False, flash=False)
    print(f"screenshot: {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scan", type=Path, help="a DICOM series folder or a NIfTI file")
    ap.add_argument("prefix", help="screenshots go to PREFIX_compare.png, PREFIX_cam.png, PREFIX_window.png")
    args = ap.parse_args(argv)
    viewer = napari.Viewer(title="napari-covidseg review")
    docks = open_demo(viewer, str(args.scan), compare=True, correct=True, quantify=True)
    print("window:", fit_window(viewer, (1920, 1080)))
    outcomes = []

    docks["compare"].parent().raise_()
    outcomes.append(run(docks["compare"], "compare"))
    shot(viewer, f"{args.prefix}_compare.png")
    docks["compare"].grid.setChecked(False)

    outcomes += [run(docks["segment"], "segment"), run(docks["classify"], "classify")]
    res = docks["classify"].last_result
    if res is not None:
        print("probabilities:", {k: round(v, 3) for k, v in res.probabilities.items()})
        print(f"CAM of {res.cam_class}: kept in {res.cam_region}, {100 * res.cam_inside:.1f} % of its weight inside")
    disagreement = [layer for layer in viewer.layers if "disagreement" in layer.name]
    for layer in disagreement:
        layer.visible = False  # the CAM view: CT, the Segment result and the map
    docks["segment"].navigator.go_to_most()
    docks["classify"].parent().raise_()
    shot(viewer, f"{args.prefix}_cam.png")

    quantify = docks["quantify"]
    quantify.parent().raise_()
    outcomes.append(run(quantify, "quantify"))
    shot(viewer, f"{args.prefix}_window.png")
    viewer.close()
    return 0 if all(o == "returned" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
