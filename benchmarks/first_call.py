"""Cold start: the first Segment in a fresh napari process against the second, and Quantify in the dock.

A new process (this script) imports napari and the plugin, shows a real viewer (run under Xvfb) holding a phantom
chest CT of 512x512 slices (150 slices by default, 2 x 0.7 x 0.7 mm; built before any timing), then clicks, in order:
Segment (first call of the process), Segment again (second call), Quantify on the first result. Each time is from
the click until the job has finished and its result is in the viewer. For Quantify it also records the progress
values the dock's bar took (a bar stuck at one value for most of the job does not "move").

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/first_call.py [--slices 150] [--threads N]

Results: printed, and written to benchmarks/results/first_call.json (run_all.py reports them).
"""

from __future__ import annotations

import argparse
import time

T_START = time.perf_counter()

import _bench  # noqa: E402  (the timer above starts before the imports it measures)
import napari  # noqa: E402
import torch  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_covidseg._demo import PLUGIN, wait_for_job  # noqa: E402
from napari_covidseg.layers import image_layer_data  # noqa: E402
from napari_covidseg.sample import make_phantom  # noqa: E402

T_IMPORTS = time.perf_counter()


def click_and_time(dock, on_progress=None) -> float:
    if on_progress is not None:
        dock.bar.valueChanged.connect(on_progress)
    start = time.perf_counter()
    dock.run_button.click()
    wait_for_job(dock, poll_s=0.01)
    seconds = time.perf_counter() - start
    if dock.runner.outcome != "returned":
        raise SystemExit(f"{type(dock).__name__} did not finish: {dock.status.text()}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=150)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    phantom = make_phantom(seed=0, shape=(args.slices, 512, 512), spacing=(2.0, 0.7, 0.7))
    viewer = napari.Viewer(title="first-call benchmark")
    data, kwargs, _ = image_layer_data(phantom.volume("phantom"), name="ct")
    viewer.add_image(data, **kwargs)
    QApplication.processEvents()
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment lesions")
    _, quantify = viewer.window.add_plugin_dock_widget(PLUGIN, "Quantify lung involvement")
    first = click_and_time(segment)
    second = click_and_time(segment)
    quantify.lesions.setCurrentText("ct lesions (unet)")
    values: list[tuple[float, int]] = []
    start = time.perf_counter()
    quant = click_and_time(quantify, on_progress=lambda v: values.append((time.perf_counter() - start, int(v))))
    longest_still = max((b[0] - a[0] for a, b in zip(values, values[1:])), default=quant)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": _bench.machine_info(),
        "shape": [args.slices, 512, 512],
        "torch_threads": torch.get_num_threads(),
        "imports_seconds": round(T_IMPORTS - T_START, 2),
        "first_segment_seconds": round(first, 2),
        "second_segment_seconds": round(second, 2),
        "first_over_second": round(first / second, 2),
        "quantify_seconds": round(quant, 2),
        "quantify_progress": [[round(t, 2), v] for t, v in values],
        "quantify_longest_still_seconds": round(longest_still, 2),
        "quantify_reused_segment_lung_mask": any("made when segmenting" in n for n in quantify.last[0].notes),
    }
    _bench.write_json(_bench.RESULTS / "first_call.json", result)
    print(
        f"imports {result['imports_seconds']} s; Segment first {first:.1f} s, second {second:.1f} s "
        f"(x{result['first_over_second']}); Quantify {quant:.1f} s, bar still for at most {longest_still:.1f} s"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
