"""Sizes and shapes as people read them (no imports from the rest of the package, so anything may use it)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def dims(shape: Sequence[int]) -> str:
    """``(512, 512, 80)`` -> ``"512x512x80"``."""
    return "x".join(str(int(s)) for s in shape)


def volume_bytes(shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes of an array of ``shape`` (Python ints: no overflow for absurd header dimensions)."""
    return math.prod(int(s) for s in shape) * int(itemsize)


def format_bytes(n: int | float) -> str:
    """Human-readable size: GB with one decimal from 0.1 GB up, MB, kB or bytes below, TB for the absurd."""
    n = float(n)
    gb = n / 1024**3
    if gb >= 1024:
        return f"{gb / 1024:,.1f} TB"
    if gb >= 0.1:
        return f"{gb:.1f} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:.0f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} kB"
    return f"{max(int(n), 0)} bytes"
