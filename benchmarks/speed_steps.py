"""What each CPU speed step of ``iter_segment`` gains, measured in one run on slices of the 300x512x512 phantom.

The steps are cumulative, starting from the plain path (the one the first release ran):

  0. plain: batch 8, NCHW tensors, batch norm as its own layer, ``torch.argmax`` over the class axis;
  1. + exact uint8 argmax (``class_argmax``: K-1 comparisons instead of torch's argmax over a strided class axis);
  2. + channels-last model and input (oneDNN's fastest convolution kernels);
  3. + batch norm folded into the convolutions (``fold_batchnorm``);
  4. + batch 4 (``DEFAULT_BATCH_SIZE``: activations below glibc's 32 MB mmap threshold are reused heap memory,
     not fresh pages the kernel must fault in and zero on every forward).

Step 4 is what ``iter_segment`` does; the run checks that its labels are identical to ``iter_segment``'s. Each
step runs on the same ``--slices`` slices (the middle of the volume, where the lungs and lesions are), the steps
interleaved over ``--rounds`` rounds and the fastest round kept, so a burst of load from other jobs on the shared
cores hits one round of one step rather than a whole step. Every step's labels are compared with the plain path's
(all voxels and lesion voxels): the speed work must not change the result.

    python benchmarks/speed_steps.py [--slices 64] [--rounds 2] [--threads N]

Result: printed, and written to benchmarks/results/speed_steps.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

STEPS = [
    ("plain (batch 8, NCHW, separate batch norm, torch.argmax)", dict(batch=8, exact=False, cl=False, fold=False)),
    ("+ exact uint8 argmax", dict(batch=8, exact=True, cl=False, fold=False)),
    ("+ channels-last", dict(batch=8, exact=True, cl=True, fold=False)),
    ("+ batch norm folded into the convolutions", dict(batch=8, exact=True, cl=True, fold=True)),
    ("+ batch 4 (iter_segment's default)", dict(batch=4, exact=True, cl=True, fold=True)),
]


def segment_with(volume, loaded, batch: int, exact: bool, cl: bool, fold: bool) -> tuple[np.ndarray, float, float]:
    """The slice loop of ``iter_segment`` with each speed step switchable; returns labels, seconds, forward seconds."""
    import copy

    import torch

    from napari_covidseg.inference.preprocess import body_box, fit, normalise, unfit
    from napari_covidseg.inference.segment import class_argmax
    from napari_covidseg.models.blocks import fold_batchnorm

    start = time.perf_counter()
    card = loaded.card
    net = fold_batchnorm(loaded.module) if fold else copy.deepcopy(loaded.module).eval()
    if cl:
        net = net.to(memory_format=torch.channels_last)
    z = volume.shape[0]
    ys, xs = body_box(volume.array, volume.intensity)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    forward = 0.0
    for z0 in range(0, z, batch):
        z1 = min(z, z0 + batch)
        crop = normalise(volume.array[z0:z1, ys, xs], volume.intensity, card)
        x, geom = fit(torch.from_numpy(crop)[:, None], tuple(card.input_size))
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = time.perf_counter()
            logits = net(x)
            forward += time.perf_counter() - t
            p = unfit(torch.softmax(logits.float(), dim=1), geom)
        labels[z0:z1, ys, xs] = class_argmax(p) if exact else p.argmax(dim=1).numpy().astype(np.uint8)
    return labels, time.perf_counter() - start, forward


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    lesion = (a > 0) | (b > 0)
    same = a == b
    return {
        "voxels_differing": int((~same).sum()),
        "agreement_all_voxels": round(float(same.mean()), 7),
        "agreement_lesion_voxels": round(float(same[lesion].mean()), 6) if lesion.any() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64, help="slices from the middle of the phantom")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the fastest of each step is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=_bench.RESULTS / "speed_steps.json")
    args = parser.parse_args()

    import dataclasses

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_covidseg.inference.segment import DEFAULT_BATCH_SIZE, segment_volume
    from napari_covidseg.models.checkpoint import resolve_model

    assert STEPS[-1][1]["batch"] == DEFAULT_BATCH_SIZE, "the last step must be iter_segment's default"
    files = _bench.phantom_files()
    full = _bench.load_volume(files)
    z0 = max(0, (full.shape[0] - args.slices) // 2)
    volume = dataclasses.replace(full, array=np.ascontiguousarray(full.array[z0 : z0 + args.slices]))
    del full
    loaded = resolve_model("unet")
    print(f"{volume.shape[0]} slices ({z0}..{z0 + volume.shape[0] - 1}) of the phantom, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip

    meter = _bench.CpuMeter()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in STEPS}
    labels: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, opts in STEPS:
            lab, seconds, forward = segment_with(volume, loaded, **opts)
            times[name].append((seconds, forward))
            labels.setdefault(name, lab)
            print(f"  round {r + 1}  {name:<58} {seconds:6.2f} s  (forward {forward:5.2f} s)", flush=True)
    contention = meter.read()
    app = segment_volume(volume, loaded).labels

    plain = labels[STEPS[0][0]]
    rows = []
    previous = None
    for name, opts in STEPS:
        best = min(times[name])
        rows.append(
            {
                "step": name,
                "settings": opts,
                "seconds": round(best[0], 2),
                "forward_seconds": round(best[1], 2),
                "all_seconds": [round(s, 2) for s, _ in times[name]],
                "seconds_per_slice": round(best[0] / volume.shape[0], 4),
                "ratio_to_plain": round(best[0] / min(times[STEPS[0][0]])[0], 3),
                "ratio_to_previous_step": None if previous is None else round(best[0] / previous, 3),
                "labels_vs_plain": agreement(labels[name], plain),
            }
        )
        previous = best[0]
    report = {
        "benchmark": "CPU speed steps of iter_segment, cumulative, on the same slices of the 300x512x512 phantom",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "slices": [int(z0), int(z0 + volume.shape[0])],
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "steps": rows,
        "last_step_equals_iter_segment": bool(np.array_equal(labels[STEPS[-1][0]], app)),
        "cpu_during_steps": contention,
        "machine": _bench.machine_info(),
    }
    _bench.write_json(args.json, report)
    print(f"\n{'step':<58} {'s/slice':>8} {'vs plain':>9} {'vs prev':>8}  voxels differing from plain")
    for row in rows:
        prev = "" if row["ratio_to_previous_step"] is None else f"{row['ratio_to_previous_step']:.2f}"
        print(f"{row['step']:<58} {row['seconds_per_slice']:8.3f} {row['ratio_to_plain']:9.2f} {prev:>8}  "
              f"{row['labels_vs_plain']['voxels_differing']}")  # fmt: skip
    print(f"last step == iter_segment: {report['last_step_equals_iter_segment']}; other jobs' busy cores "
          f"{contention.get('other_busy_cores')}\nwritten: {args.json}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
