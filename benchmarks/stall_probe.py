"""How long napari's event loop stalls while the Segment and Fine-tune docks work (a QTimer probe).

A real napari viewer is shown (run under Xvfb: ``xvfb-run -a -s "-screen 0 1920x1200x24" python
benchmarks/stall_probe.py``) holding a phantom chest CT of 512x512 slices (64 slices; ``--full``: the 300-slice
benchmark volume). A ``QTimer`` (precise, every 10 ms) records when it fires; a gap between two ticks longer than
the interval means the GUI thread could not run for (gap - 10 ms): that is the stall. The phases:

  * idle: the viewer with the CT, nothing running, 2 s (the probe's own noise on this machine);
  * segment: from the click on the Segment dock's Run button until the job has finished, its labels layer has been
    added and 1 s more has passed (so the first draw of the new layer is included);
  * add_labels reference: napari's own cost, in this warm process, of adding a zero labels layer of the CT's size
    with the Segment dock's keyword arguments, straight from the GUI thread (the floor under the segment phase's
    result callback), measured until 1 s after;
  * Segment dock opened / Fine-tune dock opened: from the dock's creation until 4 s later. A dock starts one-time
    set-up in a background thread when it opens (napari's lazy imports for result layers; ``torch._dynamo``, which
    torch imports for its first optimiser), so those imports' GIL bursts fall here, not in the jobs;
  * fine-tune: 10 corrected slices of the same CT (phantom lesions, written with ``save_corrections`` to a temporary
    ``COVIDSEG_HOME``) and the Fine-tune dock on "the whole corrections folder", 30 steps; from the click until the
    model is saved, every model picker has rescanned, and 1 s more.

Reported per phase: the largest stall, the 99th and 50th percentile, how many stalls were over 100 ms, the five
largest with their start time (seconds after the phase began) next to the job's events (first progress, result
returned, finished), so a stall can be placed at the job's start, middle or end.

    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/stall_probe.py [--full] [--steps 30] [--threads N]

Results: printed, and written to benchmarks/results/stall_probe.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

TARGET_STALL_MS = 100.0


class Probe:
    """A precise QTimer that records the time of every tick."""

    def __init__(self, interval_ms: int = 10):
        from qtpy.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000.0
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def stats(self, t0: float, t1: float, events: dict[str, float] | None = None) -> dict:
        """Stalls of the ticks that arrived in (t0, t1]; event times are given relative to t0."""
        t = np.asarray(self.ticks)
        idx = np.flatnonzero((t > t0) & (t <= t1))
        idx = idx[idx > 0]
        gaps = t[idx] - t[idx - 1]
        stalls = np.maximum(gaps - self.interval, 0.0) * 1000.0
        order = np.argsort(stalls)[::-1][:5]
        rel = {k: v - t0 for k, v in (events or {}).items()}
        return {
            "seconds": round(t1 - t0, 2),
            "ticks": int(len(idx)),
            "expected_ticks": int((t1 - t0) / self.interval),
            "max_stall_ms": round(float(stalls.max()), 1) if len(stalls) else None,
            "p99_stall_ms": round(float(np.percentile(stalls, 99)), 1) if len(stalls) else None,
            "p50_stall_ms": round(float(np.percentile(stalls, 50)), 2) if len(stalls) else None,
            "stalls_over_100ms": int((stalls > TARGET_STALL_MS).sum()),
            "stalls_over_50ms": int((stalls > 50.0).sum()),
            "total_stall_over_100ms_seconds": round(float(stalls[stalls > TARGET_STALL_MS].sum()) / 1000.0, 2),
            "top_stalls": [
                {
                    "starts_at_s": round(float(t[idx[i] - 1] - t0), 3),
                    "ms": round(float(stalls[i]), 1),
                    "during": where(float(t[idx[i] - 1] - t0), float(stalls[i]), rel),
                }
                for i in order
            ],
            "events_s": {k: round(v - t0, 3) for k, v in sorted((events or {}).items(), key=lambda kv: kv[1])},
        }


def where(start: float, ms: float, events: dict[str, float]) -> str:
    """What the GUI thread was doing during a stall of ``ms`` that began ``start`` s after the phase began."""
    if not events:
        return "idle"
    end = start + ms / 1000.0
    shown = events.get("result_shown_start"), events.get("result_shown_end")
    if shown[0] is not None and start <= shown[1] and end >= shown[0]:  # overlaps the result callback
        return "the dock's result callback (adding the result layer, GUI thread)"
    if start < events.get("click_returned", 0.0):
        return "the click handler (the job's setup, GUI thread)"
    if start >= events.get("finished", events.get("runner_idle", float("inf"))):
        return "after the job (finish handling, then 1 s of settling)"
    stages = [(v, k[len("stage ") :]) for k, v in events.items() if k.startswith("stage ") and v - 0.011 <= start]
    if stages:
        return f"stage '{max(stages)[1]}' (worker thread running)"
    return "job start (worker thread starting)"


def wait(seconds: float) -> None:
    """Run the Qt event loop for ``seconds`` (a real blocking loop, no busy polling)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def wait_until(predicate, timeout: float) -> bool:
    from qtpy.QtCore import QEventLoop, QTimer

    deadline = time.perf_counter() + timeout
    loop = QEventLoop()
    check = QTimer()
    check.setInterval(25)
    check.timeout.connect(lambda: loop.quit() if predicate() or time.perf_counter() > deadline else None)
    check.start()
    loop.exec_()
    check.stop()
    return bool(predicate())


def run_job(dock, result_callback: str, timeout: float, settle: float) -> tuple[float, float, dict]:
    """Click the dock's Run button, follow the job's signals, wait for the end plus ``settle`` seconds.

    ``result_callback``: the dock method that turns the result into layers in the GUI thread; it is wrapped on this
    instance only, to time it (events result_shown_start/end)."""
    events: dict[str, float] = {}
    original = getattr(dock, result_callback)

    def timed(*a, **k):
        events["result_shown_start"] = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            events["result_shown_end"] = time.perf_counter()

    setattr(dock, result_callback, timed)

    def on_yield(update) -> None:
        now = time.perf_counter()
        events.setdefault("first_progress", now)
        events["last_progress"] = now
        stage = getattr(update, "stage", "")
        if stage:
            events.setdefault(f"stage {stage}", now)

    t0 = time.perf_counter()
    dock.run_button.click()
    events["click_returned"] = time.perf_counter()
    worker = dock.runner.worker
    if worker is not None:
        worker.yielded.connect(on_yield)
        worker.finished.connect(lambda *_: events.setdefault("finished", time.perf_counter()))
    if not wait_until(lambda: not dock.runner.running, timeout):
        raise RuntimeError(f"the job did not finish within {timeout} s: {dock.status.text()}")
    events["runner_idle"] = time.perf_counter()
    wait(settle)
    return t0, time.perf_counter(), events


def correction_slices(lesions: np.ndarray, n: int) -> list[int]:
    """n slices spread over those with lesions (GGO or consolidation)."""
    has = np.flatnonzero(((lesions == 1) | (lesions == 2)).reshape(lesions.shape[0], -1).any(axis=1))
    pool = has if len(has) >= n else np.arange(lesions.shape[0])
    return sorted({int(z) for z in pool[np.linspace(0, len(pool) - 1, n).round().astype(int)]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the 300x512x512 benchmark volume (default 64 slices)")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="fine-tune steps")
    parser.add_argument("--corrected", type=int, default=10, help="corrected slices to fine-tune on")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--interval", type=int, default=10, help="probe interval (ms)")
    parser.add_argument("--idle", type=float, default=2.0, help="idle baseline (s)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds measured after each job ends")
    parser.add_argument("--dock-settle", type=float, default=4.0, help="seconds measured after opening Fine-tune")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, default=_bench.RESULTS / "stall_probe.json")
    args = parser.parse_args()
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print("no display: run under xvfb-run -a -s '-screen 0 1920x1200x24'", file=sys.stderr)
        return 2

    home = tempfile.TemporaryDirectory(prefix="covidseg-stall-")
    os.environ["COVIDSEG_HOME"] = str(Path(home.name) / "home")  # never touch the real models/corrections folder
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = _bench.FULL_SHAPE if args.full else (args.slices, *_bench.FULL_SHAPE[1:])
    files = _bench.phantom_files(shape, _bench.FULL_SPACING)
    volume = _bench.load_volume(files)
    lesions = np.load(files["lesions"])

    import napari

    from napari_covidseg._widgets.finetune import WHOLE_FOLDER, FinetuneWidget
    from napari_covidseg._widgets.segment import SegmentWidget
    from napari_covidseg.corrections import default_corrections_dir, save_corrections
    from napari_covidseg.layers import image_layer_data, labels_layer_kwargs

    viewer = napari.Viewer(show=True)
    data, kwargs, _ = image_layer_data(volume, name="ct")
    viewer.add_image(data, **kwargs)
    probe = Probe(args.interval)
    probe.start()
    wait(1.5)  # first draw of the CT

    report: dict = {
        "benchmark": "largest napari event-loop stall (QTimer probe) while the Segment and Fine-tune docks work",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "volume": {k: v for k, v in files.items() if k not in ("ct", "lesions")},
        "probe_interval_ms": args.interval,
        "torch_threads": torch.get_num_threads(),
        "napari": napari.__version__,
        "qt_api": os.environ.get("QT_API") or __import__("qtpy").API_NAME,
        "machine": _bench.machine_info(),
        "phases": {},
    }

    t0, meter = time.perf_counter(), _bench.CpuMeter()
    wait(args.idle)
    report["phases"]["idle"] = probe.stats(t0, time.perf_counter())
    report["phases"]["idle"]["cpu_during_phase"] = meter.read()

    t0 = time.perf_counter()
    seg = SegmentWidget(viewer)  # starts napari's one-time layer set-up in a background thread
    viewer.window.add_dock_widget(seg, name="Segment")
    wait(args.dock_settle)
    report["phases"]["segment_dock_opened"] = probe.stats(t0, time.perf_counter())
    meter = _bench.CpuMeter()
    t0, t1, events = run_job(seg, "show_result", args.timeout, args.settle)
    cpu = meter.read()
    if seg.runner.outcome != "returned":
        raise RuntimeError(f"segmentation did not return: {seg.status.text()}")
    report["phases"]["segment"] = probe.stats(t0, t1, events)
    report["phases"]["segment"]["cpu_during_phase"] = cpu
    report["phases"]["segment"]["job"] = {
        "slices": int(volume.shape[0]),
        "batch": seg.batch.value(),
        "segment_seconds": round(seg.last_result.seconds, 2),
        "status": seg.status.text(),
    }

    # reference: napari's own cost of adding a labels layer of this size (this process is warm by now), with the
    # same keyword arguments as the Segment dock's result layer, straight from the GUI thread
    wait(0.5)
    like = {k: kwargs[k] for k in ("scale", "translate", "metadata") if k in kwargs}
    t0 = time.perf_counter()
    extra = viewer.add_labels(np.zeros(volume.shape, np.uint8), **labels_layer_kwargs("floor", like))
    added = time.perf_counter() - t0
    wait(args.settle)
    report["phases"]["add_labels_reference"] = probe.stats(t0, time.perf_counter())
    report["phases"]["add_labels_reference"]["add_labels_call_ms"] = round(1000 * added, 1)
    viewer.layers.remove(extra)
    wait(0.5)

    labels = np.where(lesions == 3, 0, lesions).astype(np.uint8)  # the bundled unet has no effusion class
    folder = default_corrections_dir()
    zs = correction_slices(labels, args.corrected)
    save_corrections(folder, volume, labels, zs, model="unet")
    wait(0.5)  # the stall of writing the corrections (the benchmark's set-up) stays out of the next phase
    t0 = time.perf_counter()
    tune = FinetuneWidget(viewer)  # starts importing torch._dynamo in a background thread
    viewer.window.add_dock_widget(tune, name="Fine-tune")
    wait(args.dock_settle)
    report["phases"]["finetune_dock_opened"] = probe.stats(t0, time.perf_counter())
    tune.scope.setCurrentText(WHOLE_FOLDER)
    tune.steps.setValue(args.steps)
    wait(0.5)
    meter = _bench.CpuMeter()
    t0, t1, events = run_job(tune, "_show", args.timeout, args.settle)
    cpu = meter.read()
    if tune.runner.outcome != "returned":
        raise RuntimeError(f"fine-tuning did not return: {tune.status.text()}")
    result = tune.last_result
    report["phases"]["finetune"] = probe.stats(t0, t1, events)
    report["phases"]["finetune"]["cpu_during_phase"] = cpu
    report["phases"]["finetune"]["job"] = {
        "corrected_slices": len(zs),
        "slices_z": zs,
        "trained_on": len(result.train_keys),
        "steps": args.steps,
        "finetune_seconds": round(result.seconds, 2),
        "model": result.checkpoint.name,
        "status": tune.status.text(),
    }
    probe.stop()

    report["targets"] = {
        phase: {
            "target": f"max stall <= {TARGET_STALL_MS:g} ms",
            "met": report["phases"][phase]["max_stall_ms"] <= TARGET_STALL_MS,
        }
        for phase in ("segment", "finetune")
    }
    _bench.write_json(args.json, report)
    for name, p in report["phases"].items():
        print(
            f"{name:<9} {p['seconds']:7.2f} s  max stall {p['max_stall_ms']:7.1f} ms  p99 {p['p99_stall_ms']:6.1f} ms  "
            f"p50 {p['p50_stall_ms']:5.2f} ms  >100 ms: {p['stalls_over_100ms']}  top {p['top_stalls'][:3]}  "
            f"events {p['events_s']}  cpu {p.get('cpu_during_phase')}",
            flush=True,
        )
    print(f"written: {args.json}")
    _bench.emit(report)
    viewer.close()
    home.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
