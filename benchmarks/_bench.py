"""Helpers shared by the benchmark scripts (not a benchmark itself): the cached phantom volume, memory readings,
the matrix-multiply ceiling and a description of the machine.

The scripts are run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and ``import _bench`` works.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent

# The benchmark volume: a 300-slice chest CT of 512x512 pixels, 1.0 mm slices, 0.7 mm pixels.
FULL_SHAPE = (300, 512, 512)
FULL_SPACING = (1.0, 0.7, 0.7)
SEED = 0
RESULT_MARK = "RESULT-JSON "  # a child process prints its result on one line starting with this


def cache_dir() -> Path:
    """Where generated phantoms are kept between runs ($COVIDSEG_BENCH_CACHE, else <tmp>/covidseg-bench)."""
    folder = Path(os.environ.get("COVIDSEG_BENCH_CACHE") or Path(tempfile.gettempdir()) / "covidseg-bench")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def phantom_files(shape=FULL_SHAPE, spacing=FULL_SPACING, seed: int = SEED) -> dict:
    """The phantom CT (float32 HU, z y x) and its lesion labels as .npy files, generated once and cached.

    make_phantom at 300x512x512 takes ~20-25 s and ~3.2 GB peak on the 2-core benchmark machine, so it is built
    here once (in this process) and every measured process only loads the finished array.
    Returns {"ct": path, "lesions": path, "shape", "spacing", "seed", "generated_seconds" (None when cached)}.
    """
    stem = f"phantom_s{seed}_{'x'.join(map(str, shape))}_{'x'.join(f'{s:g}' for s in spacing)}"
    ct, lesions, meta = (cache_dir() / f"{stem}_{part}" for part in ("ct.npy", "lesions.npy", "meta.json"))
    if ct.is_file() and lesions.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        info["generated_seconds_now"] = None
        return {**info, "ct": str(ct), "lesions": str(lesions)}
    from napari_covidseg.sample import make_phantom

    start = time.perf_counter()
    ph = make_phantom(seed=seed, shape=tuple(shape), spacing=tuple(spacing))
    seconds = time.perf_counter() - start
    for path, array in ((ct, ph.ct.astype(np.float32, copy=False)), (lesions, ph.lesions)):
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, path)
    info = {
        "shape": list(shape),
        "spacing": list(spacing),
        "seed": seed,
        "generator": "napari_covidseg.sample.make_phantom (the full grid, not tiled or resized)",
        "generated_seconds": round(seconds, 1),
    }
    meta.write_text(json.dumps(info))
    del ph
    info["generated_seconds_now"] = round(seconds, 1)
    return {**info, "ct": str(ct), "lesions": str(lesions)}


def load_volume(files: dict):
    """The cached phantom as the CTVolume the app builds (``Phantom.volume()`` does the same display_volume call)."""
    from napari_covidseg.io.volume import display_volume

    raw = np.load(files["ct"])
    volume = display_volume(raw, tuple(files["spacing"]), "phantom", "HU", {"format": "phantom"})
    del raw
    return volume


# --- memory -------------------------------------------------------------------------------------------------------
def proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss() -> int | None:
    return proc_status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    """VmHWM (peak RSS since the last reset), else ru_maxrss (peak over the process's life)."""
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def lifetime_peak_rss() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


# --- contention ------------------------------------------------------------------------------------------------------
class CpuMeter:
    """How busy the machine's cores were with *other* work between two snapshots.

    From /proc/stat (all cores: user+nice+system+irq+softirq+steal) minus this process's own CPU time (rusage; all its
    threads), divided by the wall time: 0.0 on a quiet machine, 1.0 when another job kept one core busy throughout.
    ``steal`` (time the hypervisor gave to other guests) is reported on its own too.
    """

    def __init__(self):
        self.start = self.snapshot()

    @staticmethod
    def snapshot() -> tuple[float, float | None, float | None, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        busy = steal = None
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            tick = os.sysconf("SC_CLK_TCK")
            user, nice, system, _idle, _iowait, irq, softirq, st = (fields + [0] * 8)[:8]
            busy = (user + nice + system + irq + softirq + st) / tick
            steal = st / tick
        except (OSError, ValueError, IndexError):
            pass
        return time.perf_counter(), busy, steal, own.ru_utime + own.ru_stime

    def read(self) -> dict:
        t1, busy1, steal1, own1 = self.snapshot()
        t0, busy0, steal0, own0 = self.start
        wall = max(t1 - t0, 1e-9)
        out = {"wall_seconds": round(wall, 2), "own_cpu_cores": round((own1 - own0) / wall, 2)}
        if busy0 is not None and busy1 is not None:
            out["other_busy_cores"] = round(max((busy1 - busy0) - (own1 - own0), 0.0) / wall, 2)
            out["steal_cores"] = round((steal1 - steal0) / wall, 2)
        return out


# --- compute ceiling ----------------------------------------------------------------------------------------------
def matmul_ceiling(device: str = "cpu", n: int = 2048, reps: int = 5, dtype=None) -> float:
    """Best GFLOP/s of ``torch.mm`` of two n x n matrices (float32 unless ``dtype``), 2 n^3 FLOPs each."""
    import torch

    dtype = dtype or torch.float32
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


# --- machine -------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def code_fingerprint() -> dict:
    """Short sha256 of the source files the timings depend on (others edit them; results name the version)."""
    import hashlib

    src = REPO / "src" / "napari_covidseg"
    files = [
        "inference/segment.py",
        "inference/preprocess.py",
        "inference/device.py",
        "models/blocks.py",
        "training/finetune.py",
        "_widgets/_dock.py",
        "_widgets/_workers.py",
        "_widgets/segment.py",
        "_widgets/finetune.py",
        "weights/unet.safetensors",
    ]
    out = {}
    for name in files:
        path = src / name
        if path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


def machine_info() -> dict:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        cgroup = Path("/sys/fs/cgroup/cpu.max").read_text().strip()
    except OSError:
        cgroup = None
    try:
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        mem_total = None
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cgroup_cpu_max": cgroup,
        "memory_total_gb": round(mem_total / 1e9, 1) if mem_total else None,
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "code": code_fingerprint(),
    }


# --- child processes -------------------------------------------------------------------------------------------------
def run_child(args: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run ``python args...``, stream its output, and return the JSON it printed after RESULT_MARK."""
    cmd = [sys.executable, *args]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(REPO), bufsize=1
    )
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
        else:
            print("   ", line, end="", flush=True)
    rc = proc.wait(timeout=timeout)
    if rc != 0 or result is None:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc})")
    return result


def emit(result: dict) -> None:
    """Hand a child's result to the parent (one line, see run_child)."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def mb(n: int | float | None) -> float | None:
    return None if n is None else round(n / 1e6, 1)
