"""Device choice: cuda > mps > cpu, or what the user asked for (checked, with a readable error)."""

from __future__ import annotations

import torch

from napari_covidseg.errors import InputError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None picks the best available; anything else must be available here."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if dev.type not in ("cpu", "cuda", "mps"):  # meta, xpu, hpu, ...: not devices this tool computes on
        raise InputError(f"device {device!r} is not supported (use auto, cpu, cuda, cuda:N or mps)")
    if dev.type == "cuda" and torch.cuda.is_available() and dev.index is not None:
        if dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) here (cuda:0 ...)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' requested but Apple MPS is not available here; use --device cpu or auto")
    return dev


def autocast(device: torch.device):
    """Mixed precision on CUDA (float16 matmuls/convs), a no-op context elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda")
