"""A model card's network settings checked before anything is built: a card is input, not code.

A card's ``config`` goes to the network's constructor. Unchecked, ``"depth": 1000`` builds until the machine runs
out of memory and a negative width ends in a traceback. Here every key must be a parameter of the architecture's
constructor, of its type (``Literal`` choices included), within a range for its kind (``RANGES``); then the network
is built on PyTorch's ``meta`` device (no memory for weights) and its parameter count and the memory of one
forward pass on the card's input size are checked against ``MAX_PARAMETERS`` and the machine.
"""

from __future__ import annotations

import inspect
import json
import math
import typing
from typing import Any, Literal, get_args, get_origin

from napari_covidseg.errors import CheckpointError

# (low, high) for numeric settings by name; settings not listed get DEFAULT_INT_RANGE / DEFAULT_FLOAT_RANGE
RANGES: dict[str, tuple[float, float]] = {
    "base_width": (1, 256),
    "depth": (1, 6),
    "cardinality": (1, 64),
    "blocks_per_stage": (1, 8),
    "bottleneck_ratio": (0.0625, 8.0),
    "num_heads": (1, 64),
    "max_kv_tokens": (1, 1 << 16),
    "attention_max_tokens": (1, 1 << 16),
    "attention_ref_size": (16, 4096),
    "reduction": (1, 256),
    "depth_kernel": (1, 15),
    "dropout": (0.0, 0.99),
    "layers": (1, 8),
    "dilations": (1, 32),
    "in_channels": (1, 8),
}
DEFAULT_INT_RANGE = (0, 4096)
DEFAULT_FLOAT_RANGE = (0.0, 1000.0)
MAX_SEQUENCE = 16
MAX_PARAMETERS = 200_000_000  # 800 MB of float32 weights: far beyond any network this plugin ships or trains
_BUILD_ARGS = ("self", "in_channels", "num_classes")


def check_config(architecture: str, config: dict, task: str, input_size: tuple, num_classes: int, source: str):
    """Raise :class:`CheckpointError` (naming the setting) for a config the architecture cannot take safely."""
    try:
        key = json.dumps([architecture, config, task, list(input_size), num_classes], sort_keys=True)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: config must hold plain JSON values") from None
    if key in _CHECKED:  # cards are validated on every listing: the meta build runs once per distinct config
        return
    _check_config(architecture, config, task, input_size, num_classes, source)
    _CHECKED.add(key)


_CHECKED: set[str] = set()


def _check_config(architecture: str, config: dict, task: str, input_size: tuple, num_classes: int, source: str):
    from napari_covidseg.models import get_architecture

    try:
        arch = get_architecture(architecture)
    except KeyError as exc:
        raise CheckpointError(f"{source}: {exc.args[0]}") from None
    if arch.task != task:
        raise CheckpointError(f"{source}: architecture {architecture!r} is a {arch.task} network, the card says {task}")
    params = _parameters(arch.builder)
    for key, value in config.items():
        if key == "num_classes":
            continue
        if key == "in_channels":
            _check_value(source, key, value, int, None)
            continue
        if key not in params:
            known = ", ".join(sorted(params))
            raise CheckpointError(f"{source}: config.{key} is not a setting of {architecture} (known: {known})")
        _check_value(source, key, value, *params[key])
    _check_size(arch, config, input_size, num_classes, source)


def _parameters(builder) -> dict[str, tuple[Any, Any]]:
    """{name: (annotation, default)} of the constructor's settings (annotations resolved, Literal kept)."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    out = {}
    for name, p in inspect.signature(target).parameters.items():
        if name in _BUILD_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = (hints.get(name, type(p.default) if p.default is not p.empty else Any), p.default)
    return out


def _check_value(source: str, key: str, value: Any, annotation: Any, default: Any) -> None:
    where = f"{source}: config.{key}"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise CheckpointError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None:
            return
        rest = [a for a in args if a is not type(None)]
        annotation, origin, args = rest[0], get_origin(rest[0]), get_args(rest[0])
    if annotation is bool or isinstance(default, bool):
        if not isinstance(value, bool):
            raise CheckpointError(f"{where} must be true or false, got {value!r}")
        return
    if origin in (tuple, list) or annotation in (tuple, list) or isinstance(default, (tuple, list)):
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_SEQUENCE:
            raise CheckpointError(f"{where} must be a list of 1 to {MAX_SEQUENCE} integers, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise CheckpointError(f"{where} must hold {len(args)} integers, got {len(value)}")
        for v in value:
            _check_number(where, key, v, int)
        return
    if annotation is float or isinstance(default, float):
        _check_number(where, key, value, float)
        return
    if annotation is int or isinstance(default, int):
        _check_number(where, key, value, int)
        return
    if annotation is str or isinstance(default, str):
        if not isinstance(value, str) or len(value) > 64:
            raise CheckpointError(f"{where} must be a short string, got {value!r}")
        return
    raise CheckpointError(f"{where}: this setting cannot be given in a model card")


def _check_number(where: str, key: str, value: Any, kind: type) -> None:
    ok_type = isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        ok_type = ok_type or isinstance(value, float)
    if not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise CheckpointError(f"{where} must be {'an integer' if kind is int else 'a finite number'}, got {value!r}")
    lo, hi = RANGES.get(key, DEFAULT_INT_RANGE if kind is int else DEFAULT_FLOAT_RANGE)
    if not lo <= value <= hi:
        raise CheckpointError(f"{where} = {value!r} is outside {lo:g}..{hi:g}")


def _check_size(arch, config: dict, input_size: tuple, num_classes: int, source: str) -> None:
    """Build on the meta device (no weight memory), count parameters, and check the forward pass fits."""
    import torch

    from napari_covidseg.memory import check_fits
    from napari_covidseg.units import format_bytes

    kwargs = {k: v for k, v in config.items() if k not in ("num_classes", "in_channels")}
    in_channels = int(config.get("in_channels", 1))
    try:
        with torch.device("meta"):
            model = arch.build(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{source}: config does not fit {arch.name}: {detail}") from None
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise CheckpointError(
            f"{source}: these settings give a {arch.name} with {n:,} parameters ({format_bytes(4 * n)} of weights), "
            f"more than the {MAX_PARAMETERS:,} this tool accepts"
        )
    # weights, plus a generous bound on the activations of one input at the card's size: the first stage's
    # channels at full resolution, float32, about 16 such tensors alive at once
    first = next((p.shape[0] for p in model.parameters() if p.ndim > 1), 1)
    activations = 4 * 16 * int(first) * math.prod(int(s) for s in input_size)
    check_fits(4 * n + activations, f"{source}: the network this card describes")
