"""Memory guard: estimate what a job needs and refuse up front, with a readable error, when it cannot fit.

A scan too large for the machine should give ``InputError`` ("... needs about 12.3 GB of memory but only 7.9 GB
is available; ...") before anything is allocated, not get the process killed by the operating system halfway.

``available_bytes()`` reads MemAvailable from /proc/meminfo (capped by a cgroup memory limit when the process runs
in a container), falling back to ``os.sysconf``; the environment variable ``COVIDSEG_MEMORY_LIMIT_MB`` overrides
it (tests, or to keep covidseg within a budget on a shared machine).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from napari_covidseg.constants import DEFAULT_BATCH_SIZE
from napari_covidseg.errors import InputError
from napari_covidseg.units import format_bytes, volume_bytes

__all__ = [
    "available_bytes",
    "check_fits",
    "estimate_segmentation_bytes",
    "format_bytes",
    "volume_bytes",
]

ENV_LIMIT = "COVIDSEG_MEMORY_LIMIT_MB"
USABLE_FRACTION = 0.8  # refuse when a job needs more than this share of the available memory
SAFETY_FACTOR = 1.25  # on top of the itemised estimate: temporaries, allocator slack, the interpreter
ACTIVATION_CHANNELS = 64  # float32 feature maps alive per input pixel during a forward pass (skips + current)
_UNKNOWN = 1 << 62  # when nothing can be read, assume plenty rather than refuse every job
DEFAULT_HINT = "close other programs, use a smaller batch size, or crop or downsample the scan"


def available_bytes() -> int:
    """Bytes of memory this process can still allocate without swapping (best effort).

    Raises :class:`InputError` only when ``COVIDSEG_MEMORY_LIMIT_MB`` is set to something other than a positive number.
    """
    override = os.environ.get(ENV_LIMIT, "").strip()
    if override:
        try:
            mb = float(override)
        except ValueError:
            mb = math.nan
        if not math.isfinite(mb) or mb <= 0:
            raise InputError(f"{ENV_LIMIT}={override!r} must be a positive number of megabytes")
        return int(mb * 1024 * 1024)
    available = _meminfo_available()
    if available is None:
        available = _sysconf_available()
    limit = _cgroup_headroom()
    candidates = [v for v in (available, limit) if v is not None]
    return min(candidates) if candidates else _UNKNOWN


def estimate_segmentation_bytes(
    shape_zyx: Sequence[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_classes: int = 4,
    input_size: int | Sequence[int] = 256,
    return_probabilities: bool = False,
    lungs: bool = False,
) -> int:
    """Peak bytes of segmenting a (z, y, x) volume slice by slice (see ``iter_segment``).

    ``lungs``: the lung mask and lung region are made too (two uint8 volumes kept, and while the classical mask
    runs about four bytes per voxel of boolean and label work arrays on its coarse grid and at the full size).

    Whole volume: the CT as float32, the labels as uint8 and, when requested, float16 class probabilities.
    Per batch: the float32 crop, the network input at ``input_size``, logits and softmax at input size, probabilities
    resized back to the slice, the argmax, and the network's feature maps. Times :data:`SAFETY_FACTOR`.
    """
    z, h, w = (int(s) for s in shape_zyx)
    if isinstance(input_size, int):
        in_h = in_w = int(input_size)
    else:
        in_h, in_w = (int(s) for s in tuple(input_size)[-2:])
    b = max(1, min(int(batch_size), z))
    k = max(1, int(num_classes))
    voxels, pixels, in_pixels = z * h * w, h * w, in_h * in_w
    whole = voxels * 4 + voxels * 1 + (voxels * k * 2 if return_probabilities else 0) + (voxels * 6 if lungs else 0)
    batch = b * (
        pixels * 4  # float32 crop of the slices
        + in_pixels * 4  # padded/resized network input
        + 2 * in_pixels * k * 4  # logits + softmax at input size
        + pixels * k * 4  # probabilities resized back to the slice
        + pixels * 8  # argmax (int64)
        + in_pixels * ACTIVATION_CHANNELS * 4  # feature maps of the forward pass
    )
    return int(math.ceil((whole + batch) * SAFETY_FACTOR))


def check_fits(need_bytes: int, what: str, hint: str = DEFAULT_HINT) -> None:
    """Raise :class:`InputError` when ``need_bytes`` exceed :data:`USABLE_FRACTION` of the available memory.

    The message reads "<what> needs about X GB of memory but only Y GB is available; <hint>".
    """
    available = available_bytes()
    if need_bytes > USABLE_FRACTION * available:
        source = f" (limit set by {ENV_LIMIT})" if os.environ.get(ENV_LIMIT, "").strip() else ""
        raise InputError(
            f"{what} needs about {format_bytes(need_bytes)} of memory but only {format_bytes(available)} is "
            f"available{source}; {hint}"
        )


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_available() -> int | None:
    try:
        pages, page_size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return int(pages) * int(page_size) if pages > 0 and page_size > 0 else None


def _cgroup_headroom() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, else v1), page cache counted as free; None if none."""
    for limit_file, usage_file, stat_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "/sys/fs/cgroup/memory/memory.stat",
        ),
    ):
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max":
                return None
            limit, usage = int(raw), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # cgroup v1 "unlimited"
            return None
        reclaimable = 0
        try:
            for line in Path(stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in ("inactive_file", "total_inactive_file"):
                    reclaimable = int(value)
                    break
        except (OSError, ValueError):
            pass
        return max(0, limit - usage + reclaimable)
    return None
