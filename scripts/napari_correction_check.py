"""The correction loop of the Done-when check, driven through the real docks, then a "restart" in a new process.

Run under Xvfb (it uses a fresh COVIDSEG_HOME in a temporary folder unless you pass one):
    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/napari_correction_check.py \
        docs/screenshots/correct.png [--home DIR] [--steps 30]
Session 1: open the sample CT, segment with unet, repaint what the model missed in the sample's reference lesions
as consolidation on two slices (napari's editing path, as the brush does), save, fine-tune, segment again with the
new model, screenshot. Session 2 (a new Python process = napari restarted): the corrections and the model are
listed and the Segment dock offers the model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def session_one(screenshot: str, steps: int) -> None:
    import napari

    from napari_covidseg._demo import PLUGIN, dismiss_notifications, fit_window, open_demo, wait_for_job
    from napari_covidseg.constants import CONSOLIDATION

    viewer = napari.Viewer(title="napari-covidseg correction loop")
    fit_window(viewer)
    docks = open_demo(viewer, None, compare=False, correct=True)
    seg, correct, tune = docks["segment"], docks["correct"], docks["finetune"]
    t0 = time.perf_counter()
    seg.run_button.click()
    wait_for_job(seg)
    labels = viewer.layers["phantom CT lesions (unet)"]
    reference = viewer.layers["phantom lesions (reference)"].data
    correct.labels.setCurrentText(labels.name)
    correct.class_buttons.button(CONSOLIDATION).click()
    missed = (reference > 0) & (labels.data == 0)
    per_slice = missed.reshape(len(missed), -1).sum(axis=1)
    slices = sorted(np.argsort(per_slice)[-2:].tolist())
    region = np.zeros_like(missed)
    region[slices] = missed[slices]
    labels.data_setitem(np.nonzero(region), CONSOLIDATION)
    print(f"repainted {int(region.sum())} voxels as consolidation on slices {slices}; edited: {correct.edited()}")
    correct.save_button.click()
    print(correct.status.text())
    tune.steps.setValue(steps)
    tune.run_button.click()
    wait_for_job(tune)
    print(tune.status.text())
    print(tune.result.text().replace("<br>", "\n").replace("<b>", "").replace("</b>", "").replace("<i>", ""))
    seg.run_button.click()
    wait_for_job(seg)
    print(seg.status.text(), f"(whole loop {time.perf_counter() - t0:.0f} s)")
    viewer.dims.set_point(0, labels.data_to_world((slices[-1], 0, 0))[0])
    viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune on corrections")  # bring its tab to the front
    dismiss_notifications()
    viewer.screenshot(screenshot, canvas_only=False, flash=False)
    print(f"screenshot: {screenshot}")
    viewer.close()


def session_two() -> None:
    import napari

    from napari_covidseg._widgets.segment import SegmentWidget
    from napari_covidseg.corrections import default_corrections_dir, list_corrections

    viewer = napari.Viewer(show=False)
    dock = SegmentWidget(viewer)
    entries = list_corrections(default_corrections_dir())
    offered = [dock.model.combo.itemText(i) for i in range(dock.model.combo.count())]
    print(f"after restart: {len(entries)} corrections {[e.key for e in entries]}; Segment dock offers {offered}")
    viewer.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("screenshot")
    parser.add_argument("--home", help="COVIDSEG_HOME to use (default: a new temporary folder)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--second", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.second:
        session_two()
        return 0
    home = args.home or tempfile.mkdtemp(prefix="covidseg-home-")
    os.environ["COVIDSEG_HOME"] = home
    print(f"COVIDSEG_HOME={home}")
    session_one(args.screenshot, args.steps)
    return subprocess.call([sys.executable, __file__, args.screenshot, "--second"], env=dict(os.environ))


if __name__ == "__main__":
    sys.exit(main())
