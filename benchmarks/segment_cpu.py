"""How fast, and in how much memory, the bundled ``unet`` segments a 300x512x512 chest CT end to end on CPU.

The volume is the package's synthetic chest phantom generated at the full size (``make_phantom(seed=0,
shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7))``: not tiled or resized; ~20-25 s to build, cached as .npy in
``$COVIDSEG_BENCH_CACHE`` or ``<tmp>/covidseg-bench``). Each configuration runs in its own child process so its peak
memory is its own: the child loads the cached array, builds the CTVolume as the app does, resets its peak-RSS
counter (Linux ``/proc/self/clear_refs``), then times ``resolve_model("unet")`` + ``segment_volume(volume, model,
device, batch_size)`` (the model is passed as the LoadedModel so forward hooks can time the network calls; the
bundled float32 weights are used unchanged, so the run is at the bundled model's accuracy).

Reported per configuration:
  * seconds end to end (model load + segmentation) and slices/s;
  * FLOPs per slice of the network at the card's input size (192x192), counted by
    ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2 FLOPs and counts only
    convolutions and matrix products (BatchNorm, ReLU, pooling, softmax and resizing are not counted);
  * achieved GFLOP/s = FLOPs x slices / forward time, with the forward time measured three ways: inside the real
    run (forward hooks), in a pure-forward loop on random input at the card size and the same batch, and the whole
    run (an "effective" rate that includes pre/post-processing);
  * the matrix-multiply ceiling measured in the same process (best of 5 ``torch.mm`` of 2048x2048 float32, before and
    after the run; the larger is used) and the forward rate as a percent of it;
  * peak RSS during the run minus the volume's own bytes, and minus both the volume and the process's RSS after its
    imports (what segmenting adds: model, batches, the uint8 label volume, allocator slack).

    python benchmarks/segment_cpu.py [--batch 4] [--threads N] [--slices 300] [--json PATH]
    python benchmarks/segment_cpu.py --sweep     # batch 2/4/8/16, threads 1/2, bfloat16: ratios

Results: printed, and written to benchmarks/results/segment_cpu.json (--sweep: segment_sweep.json).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

TARGET_CPU_SECONDS = 60.0
TARGET_GPU_SECONDS = 5.0
TARGET_CEILING_PERCENT = 50.0
TARGET_PEAK_ABOVE_VOLUME_BYTES = 1.5e9  # "1.5 GB": decimal gigabytes


# --- child: one measured configuration -------------------------------------------------------------------------------
def flops_per_slice(net, size, device) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 1, *size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(x)
    return int(counter.get_total_flops())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def precision_context(device: str, bf16: bool):
    import torch

    if bf16:
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_loop(net, batch: int, size, slices: int, device: str, channels_last: bool, bf16: bool, repeats: int = 2):
    """Best wall time over ``repeats`` of ceil(slices / batch) forwards on random input; returns (seconds, slices)."""
    import torch

    from napari_covidseg.inference.device import autocast, resolve_device

    x = torch.rand(batch, 1, *size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    n = max(1, math.ceil(slices / batch))
    cuda_autocast = autocast(resolve_device(device))  # what iter_segment uses: float16 on CUDA, no-op on CPU
    best = float("inf")
    with torch.inference_mode(), cuda_autocast, precision_context(device, bf16):
        net(x)  # warm-up (oneDNN primitive creation)
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(n):
                net(x)
            _sync(device)
            best = min(best, time.perf_counter() - start)
    return best, n * batch


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else round(2.0 * int(np.logical_and(a, b).sum()) / total, 4)


def child_e2e(cfg: dict) -> dict:
    import torch

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    from napari_covidseg.inference.segment import segment_volume
    from napari_covidseg.models.blocks import fold_batchnorm
    from napari_covidseg.models.checkpoint import resolve_model

    device = cfg["device"]
    rss_after_imports = _bench.rss()
    ceiling_before = _bench.matmul_ceiling(device)
    if device.startswith("cuda"):
        ceiling_before_fp16 = _bench.matmul_ceiling(device, dtype=torch.float16)
    volume = _bench.load_volume(cfg)
    volume_bytes = int(volume.array.nbytes)
    rss_with_volume = _bench.rss()
    peak_reset = _bench.reset_peak_rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    load_avg_start = os.getloadavg()
    meter = _bench.CpuMeter()

    start = time.perf_counter()
    loaded = resolve_model("unet")
    load_seconds = time.perf_counter() - start
    calls: list[float] = []
    began: list[float] = []

    def pre_hook(module, inputs):
        _sync(device)
        began.append(time.perf_counter())

    def post_hook(module, inputs, output):
        _sync(device)
        calls.append(time.perf_counter() - began[-1])

    hooks = [loaded.module.register_forward_pre_hook(pre_hook), loaded.module.register_forward_hook(post_hook)]
    with precision_context(device, cfg["bf16"]):
        seg = segment_volume(volume, loaded, device=device, batch_size=cfg["batch"])
    _sync(device)
    seconds = time.perf_counter() - start
    peak = _bench.peak_rss()
    contention = meter.read()
    load_avg_end = os.getloadavg()
    gpu_peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    for h in hooks:
        h.remove()

    slices = int(volume.shape[0])
    # the network exactly as iter_segment runs it: batch norms folded, channels-last weights and input
    net = fold_batchnorm(loaded.module).to(device, memory_format=torch.channels_last)
    size = tuple(seg.card.input_size)
    flops = flops_per_slice(net, size, device)
    forward_in_run = float(sum(calls))
    loop_seconds, loop_slices = forward_loop(net, cfg["batch"], size, cfg["forward_slices"], device, True, cfg["bf16"])
    ceiling_after = _bench.matmul_ceiling(device)
    ceiling = max(ceiling_before, ceiling_after)
    if device.startswith("cuda"):  # iter_segment runs the network in float16 autocast on CUDA
        ceiling = max(ceiling_before_fp16, _bench.matmul_ceiling(device, dtype=torch.float16))

    truth = np.load(cfg["lesions"], mmap_mode="r")
    sanity = {}
    for name, cls in (("dice ground-glass opacity", 1), ("dice consolidation", 2)):
        sanity[name] = dice(seg.labels == cls, np.asarray(truth == cls))
    sanity["dice infection"] = dice(seg.labels > 0, np.asarray((truth == 1) | (truth == 2)))

    def gflops(secs: float, n: int) -> float:
        return round(flops * n / secs / 1e9, 1)

    fwd_rate = gflops(forward_in_run, slices)
    return {
        "label": cfg["label"],
        "device": seg.device,
        "batch": cfg["batch"],
        "torch_threads": torch.get_num_threads(),
        "channels_last": True,
        "batchnorm_folded": True,
        "bf16_autocast": cfg["bf16"],
        "slices": slices,
        "shape": list(volume.shape),
        "seconds": round(seconds, 2),
        "model_load_seconds": round(load_seconds, 3),
        "segment_seconds": round(seg.seconds, 2),
        "slices_per_second": round(slices / seconds, 2),
        "forward_seconds_in_run": round(forward_in_run, 2),
        "pre_post_seconds_in_run": round(seg.seconds - forward_in_run, 2),
        "framing": seg.framing,
        "lung_seconds_in_run": seg.meta.get("lung_seconds"),
        "slices_with_lung": seg.meta.get("slices_with_lung"),
        "forward_calls": len(calls),
        "flops_per_slice": flops,
        "gflop_per_slice": round(flops / 1e9, 3),
        "flops_note": "FlopCounterMode: multiply-add = 2 FLOPs; convolutions and matmuls only",
        "gflops_forward_in_run": fwd_rate,
        "gflops_forward_loop": gflops(loop_seconds, loop_slices),
        "forward_loop": {"seconds": round(loop_seconds, 3), "slices": loop_slices, "input": "random, card size"},
        "gflops_effective_end_to_end": gflops(seconds, slices),
        "matmul_ceiling_gflops": round(ceiling, 1),
        "matmul_ceiling_before_after_fp32": [round(ceiling_before, 1), round(ceiling_after, 1)],
        "matmul_ceiling_dtype": "float16" if device.startswith("cuda") else "float32",
        "percent_of_ceiling_forward_in_run": round(100.0 * fwd_rate / ceiling, 1),
        "percent_of_ceiling_forward_loop": round(100.0 * gflops(loop_seconds, loop_slices) / ceiling, 1),
        "percent_of_ceiling_end_to_end": round(100.0 * gflops(seconds, slices) / ceiling, 1),
        "volume_bytes": volume_bytes,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_with_volume_bytes": rss_with_volume,
        "peak_rss_bytes": peak,
        "peak_rss_source": "VmHWM reset after loading" if peak_reset else "ru_maxrss (includes loading)",
        "peak_rss_minus_volume_bytes": None if peak is None else peak - volume_bytes,
        "peak_rss_minus_volume_and_baseline_bytes": (
            None if peak is None or rss_after_imports is None else peak - volume_bytes - rss_after_imports
        ),
        "lifetime_peak_rss_bytes": _bench.lifetime_peak_rss(),
        "gpu_peak_allocated_bytes": gpu_peak,
        "loadavg_start_end": [round(load_avg_start[0], 2), round(load_avg_end[0], 2)],
        "cpu_during_run": contention,
        "phantom_sanity": sanity,
    }


# --- child: forward-only variants and bfloat16 accuracy ------------------------------------------------------------
def child_forward(cfg: dict) -> dict:
    """channels_last and bfloat16 autocast against float32 NCHW, interleaved rounds; bf16 accuracy on phantom slices."""
    import torch

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    from napari_covidseg.inference.preprocess import prepare_array
    from napari_covidseg.models.checkpoint import resolve_model

    device = cfg["device"]
    loaded = resolve_model("unet")
    base = loaded.module.eval().to(device)
    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    size = tuple(loaded.card.input_size)
    variants = {
        "float32": (base, False, False),
        "channels_last": (cl, True, False),
        "bf16_autocast": (base, False, True),
        "bf16_autocast+channels_last": (cl, True, True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    slices = cfg["forward_slices"]
    meter = _bench.CpuMeter()
    for _ in range(cfg["rounds"]):
        for name, (net, channels_last, bf16) in variants.items():
            seconds, n = forward_loop(net, cfg["batch"], size, slices, device, channels_last, bf16, repeats=1)
            times[name].append(seconds)
    contention = meter.read()
    ref = min(times["float32"])
    timing = {
        name: {
            "best_seconds": round(min(t), 3),
            "all_seconds": [round(x, 3) for x in t],
            "slices_per_second": round(n / min(t), 1),
            "time_ratio_to_float32": round(min(t) / ref, 3),
        }
        for name, t in times.items()
    }

    # accuracy on real (phantom) slices prepared exactly as training/inference prepare them
    ct = np.load(cfg["ct"], mmap_mode="r")
    truth = np.load(cfg["lesions"], mmap_mode="r")
    with_lesions = np.flatnonzero(np.asarray(truth).reshape(truth.shape[0], -1).max(axis=1) > 0)
    pool = with_lesions if len(with_lesions) >= cfg["accuracy_slices"] else np.arange(ct.shape[0])
    zs = pool[np.linspace(0, len(pool) - 1, min(cfg["accuracy_slices"], len(pool))).round().astype(int)]
    x, _ = prepare_array(np.asarray(ct[zs]), "HU", loaded.card)
    x = x.to(device)
    with torch.inference_mode():
        ref_p = torch.softmax(base(x).float(), dim=1)
        ref_lab = ref_p.argmax(1)
        accuracy = {}
        for name, (net, channels_last, bf16) in variants.items():
            if name == "float32":
                continue
            xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            with precision_context(device, bf16):
                p = torch.softmax(net(xi).float(), dim=1)
            lab = p.argmax(1)
            lesion_any = (lab > 0) | (ref_lab > 0)
            accuracy[name] = {
                "max_abs_softmax_diff": float((p - ref_p).abs().max()),
                "mean_abs_softmax_diff": float((p - ref_p).abs().mean()),
                "argmax_agreement": round(float((lab == ref_lab).float().mean()), 6),
                "argmax_agreement_on_lesion_pixels": (
                    round(float((lab == ref_lab)[lesion_any].float().mean()), 6) if lesion_any.any() else None
                ),
                "lesion_pixels_float32": int((ref_lab > 0).sum()),
                "lesion_pixels_variant": int((lab > 0).sum()),
            }
    return {
        "label": "forward variants",
        "device": device,
        "batch": cfg["batch"],
        "torch_threads": torch.get_num_threads(),
        "slices_per_loop": math.ceil(slices / cfg["batch"]) * cfg["batch"],
        "rounds": cfg["rounds"],
        "note": "pure forward loops on random input at the card size, variants interleaved round by round, best "
        "round kept; accuracy: softmax of each variant vs float32 NCHW on real phantom slices at the card size",
        "timing": timing,
        "accuracy_slices": [int(z) for z in zs],
        "accuracy": accuracy,
        "cpu_during_timing": contention,
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }


# --- parent ----------------------------------------------------------------------------------------------------------
def config(files: dict, label: str, device: str, batch: int, threads: int, forward_slices: int, **extra) -> dict:
    cfg = {
        "label": label,
        "ct": files["ct"],
        "lesions": files["lesions"],
        "spacing": files["spacing"],
        "device": device,
        "batch": batch,
        "threads": threads,
        "bf16": False,
        "forward_slices": forward_slices,
    }
    cfg.update(extra)
    return cfg


def run_config(cfg: dict, mode: str = "e2e") -> dict:
    return _bench.run_child([str(Path(__file__).resolve()), "--child", mode, "--config", json.dumps(cfg)])


def targets_for(run: dict) -> dict:
    gpu = run["device"].startswith("cuda")
    limit = TARGET_GPU_SECONDS if gpu else TARGET_CPU_SECONDS
    full = run["shape"] == list(_bench.FULL_SHAPE)
    out = {
        "seconds": {"target": f"<= {limit:g} s", "met": run["seconds"] <= limit, "full_volume": full},
        "percent_of_ceiling": {
            "target": f">= {TARGET_CEILING_PERCENT:g} % (forward in the run)",
            "met": run["percent_of_ceiling_forward_in_run"] >= TARGET_CEILING_PERCENT,
        },
    }
    if not gpu and run["peak_rss_minus_volume_bytes"] is not None:
        out["peak_rss_above_volume"] = {
            "target": "<= 1.5 GB (whole-process peak RSS minus the volume)",
            "met": run["peak_rss_minus_volume_bytes"] <= TARGET_PEAK_ABOVE_VOLUME_BYTES,
        }
    return out


def print_run(r: dict) -> None:
    print(
        f"{r['label']:<28} {r['device']:<5} b{r['batch']:<3} t{r['torch_threads']}  {r['seconds']:7.2f} s  "
        f"{r['slices_per_second']:6.2f} sl/s  fwd {r['forward_seconds_in_run']:6.2f} s  "
        f"{r['gflops_forward_in_run']:6.1f} GF/s ({r['percent_of_ceiling_forward_in_run']:5.1f} % of "
        f"{r['matmul_ceiling_gflops']:.0f})  loop {r['gflops_forward_loop']:6.1f} GF/s  "
        f"peak-vol {_bench.mb(r['peak_rss_minus_volume_bytes'])} MB  "
        f"peak-vol-base {_bench.mb(r['peak_rss_minus_volume_and_baseline_bytes'])} MB  "
        f"other busy cores {r['cpu_during_run'].get('other_busy_cores')}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="slices per forward pass (iter_segment's default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--slices", type=int, default=_bench.FULL_SHAPE[0], help="volume depth (300: the benchmark)")
    parser.add_argument("--size", type=int, default=_bench.FULL_SHAPE[1], help="in-plane size (512)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: cpu, and cuda when torch sees a GPU")  # fmt: skip
    parser.add_argument("--forward-slices", type=int, default=96, help="slices per pure-forward timing loop")
    sweep_help = "also the other batches of 2/4/8/16, threads 1, bf16 autocast: ratios to the default"
    parser.add_argument("--sweep", action="store_true", help=sweep_help)
    parser.add_argument("--repeats", type=int, default=1, help="--sweep: interleaved rounds, the fastest run kept")
    parser.add_argument("--resume", action="store_true", help="--sweep: keep the runs of an interrupted sweep")
    parser.add_argument("--json", type=Path, default=None, help="output (default results/segment_cpu.json)")
    parser.add_argument("--child", choices=["e2e", "forward"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        cfg = json.loads(args.config)
        _bench.emit(child_e2e(cfg) if args.child == "e2e" else child_forward(cfg))
        return 0

    import torch

    out = args.json or _bench.RESULTS / ("segment_sweep.json" if args.sweep else "segment_cpu.json")
    shape = (args.slices, args.size, args.size)
    print(f"phantom {shape} spacing {_bench.FULL_SPACING} (cached in {_bench.cache_dir()})", flush=True)
    files = _bench.phantom_files(shape, _bench.FULL_SPACING)
    machine = _bench.machine_info()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]

    runs = []
    for device in [] if args.sweep else devices:
        label = f"default ({device})"
        runs.append(run_config(config(files, label, device, args.batch, args.threads, args.forward_slices)))
        print_run(runs[-1])
    report = {
        "benchmark": "segment a 300x512x512 chest-CT phantom end to end with the bundled unet",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "volume": {k: v for k, v in files.items() if k not in ("ct", "lesions")},
        "machine": machine,
        "runs": runs,
        "targets": {r["label"]: targets_for(r) for r in runs},
        "notes": [
            "each configuration ran in its own process; peak RSS is VmHWM reset after the volume was loaded",
            "accuracy: the bundled float32 weights, unchanged; phantom_sanity is Dice against the phantom's own "
            "labels (synthetic: a check that the output is sensible, not an accuracy estimate)",
            "the machine's cores are shared with other jobs: see loadavg_start_end and the two matmul ceilings",
        ],
    }
    if args.sweep:
        threads = args.threads or torch.get_num_threads()
        other = 1 if threads != 1 else 2
        make = [
            lambda: config(files, "default", "cpu", args.batch, threads, args.forward_slices),
            *[
                (lambda b=b: config(files, f"batch {b}", "cpu", b, threads, args.forward_slices))
                for b in (2, 4, 8, 16)
                if b != args.batch
            ],
            lambda: config(files, f"threads {other}", "cpu", args.batch, other, args.forward_slices),
            lambda: config(files, "bf16 autocast", "cpu", args.batch, threads, args.forward_slices, bf16=True),
        ]
        # finished runs are kept in a partial file, so an interrupted sweep can go on with --resume
        partial = _bench.cache_dir() / f"{out.stem}.partial.json"  # outside the repository
        done: list[dict] = json.loads(partial.read_text())["runs"] if args.resume and partial.is_file() else []
        tries: dict[str, list[dict]] = {}
        for r in done:
            tries.setdefault(r["label"], []).append(r)
        for round_no in range(args.repeats):  # interleaved rounds: slow spells of the shared machine hit all alike
            print(f"\nsweep round {round_no + 1}/{args.repeats}", flush=True)
            for factory in make:
                cfg = factory()
                if len(tries.get(cfg["label"], [])) > round_no:
                    continue  # done before an interruption
                r = run_config(cfg)
                r["round"] = round_no + 1
                print_run(r)
                tries.setdefault(r["label"], []).append(r)
                done.append(r)
                _bench.write_json(partial, {"runs": done})
        best = {label: min(rs, key=lambda r: r["seconds"]) for label, rs in tries.items()}
        ref = best["default"]

        def ratio(a, b):
            return None if a is None or not b else round(a / b, 3)

        e2e = []
        for label, r in best.items():
            r = dict(r)
            r["all_seconds"] = [x["seconds"] for x in tries[label]]
            r["all_other_busy_cores"] = [x["cpu_during_run"].get("other_busy_cores") for x in tries[label]]
            r["all_percent_of_ceiling"] = [x["percent_of_ceiling_forward_in_run"] for x in tries[label]]
            r["all_matmul_ceilings"] = [x["matmul_ceiling_gflops"] for x in tries[label]]
            r["ratio_to_default"] = {
                "seconds": ratio(r["seconds"], ref["seconds"]),
                "forward_seconds_in_run": ratio(r["forward_seconds_in_run"], ref["forward_seconds_in_run"]),
                "pre_post_seconds_in_run": ratio(r["pre_post_seconds_in_run"], ref["pre_post_seconds_in_run"]),
                "forward_loop_seconds_per_slice": ratio(
                    r["forward_loop"]["seconds"] / r["forward_loop"]["slices"],
                    ref["forward_loop"]["seconds"] / ref["forward_loop"]["slices"],
                ),
                "peak_rss_minus_volume": ratio(r["peak_rss_minus_volume_bytes"], ref["peak_rss_minus_volume_bytes"]),
            }
            e2e.append(r)
        fwd_cfg = config(files, "forward", "cpu", args.batch, threads, args.forward_slices, rounds=3)
        fwd_cfg["accuracy_slices"] = 32
        forward = run_config(fwd_cfg, "forward")
        report["runs"] = [dict(ref, label=f"default ({ref['device']})")]
        report["targets"] = {r["label"]: targets_for(r) for r in report["runs"]}
        report["sweep"] = {
            "reference": "default",
            "repeats": args.repeats,
            "note": f"each configuration ran {args.repeats} time(s), rounds interleaved, the fastest run kept; ratios "
            f"are configuration / default (batch {args.batch}, {threads} threads, float32, folded, channels-last), "
            "< 1 is faster or smaller. cpu_during_run.other_busy_cores says how much other work shared the cores.",
            "e2e": e2e,
            "forward": forward,
        }
        print("\nratios to the default (best of each; seconds / forward in run / pre-post / peak RSS-volume):")
        for r in e2e:
            q = r["ratio_to_default"]
            print(
                f"  {r['label']:<16} {q['seconds']:.3f}  {q['forward_seconds_in_run']:.3f}  "
                f"{q['pre_post_seconds_in_run']:.3f}  {q['peak_rss_minus_volume']:.3f}   runs {r['all_seconds']} s, "
                f"other busy cores {r['all_other_busy_cores']}"
            )
        print("forward-only variants (time ratio to float32):")
        for name, t in forward["timing"].items():
            acc = forward["accuracy"].get(name)
            extra = (
                f"  max|dp| {acc['max_abs_softmax_diff']:.2e}  argmax agree {acc['argmax_agreement']:.5f}"
                if acc
                else ""
            )
            print(f"  {name:<30} {t['time_ratio_to_float32']:.3f}  ({t['slices_per_second']} sl/s){extra}")
    _bench.write_json(out, report)
    if args.sweep:
        (_bench.cache_dir() / f"{out.stem}.partial.json").unlink(missing_ok=True)
    print(f"\nwritten: {out}")
    for r in runs:
        for key, t in report["targets"][r["label"]].items():
            print(f"  {r['label']}: {key} {t['target']}: {'met' if t['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
