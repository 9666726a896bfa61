"""Registry of network architectures by name.

A registry entry says how to build a network and what it is for; weights and their model cards are a separate
concern (``napari_covidseg.models.checkpoint``). Every architecture registers itself when its module is imported;
``napari_covidseg.models`` imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

Task = Literal["segmentation", "classification"]


@dataclass(frozen=True)
class Architecture:
    """How to build one network.

    Args:
        name: registry key, e.g. ``"unet"``.
        builder: callable returning an ``nn.Module``; takes ``in_channels``, ``num_classes`` and the config keys.
        task: ``"segmentation"`` (2D, per slice, logits ``(B, K, H, W)``) or ``"classification"``
            (3D volume, logits ``(B, K)``).
        spatial_dims: 2 or 3.
        default_config: keyword arguments the builder gets unless overridden (widths, switches).
        summary: one line for ``covidseg models``.
        paper: citation of the paper the network implements.
    """

    name: str
    builder: Callable[..., nn.Module]
    task: Task
    spatial_dims: int
    default_config: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    paper: str = ""

    def build(self, in_channels: int = 1, num_classes: int | None = None, **config: Any) -> nn.Module:
        """Build the network with ``default_config`` updated by ``config``."""
        kwargs = {**self.default_config, **config}
        if num_classes is None:
            num_classes = kwargs.pop("num_classes", 3 if self.task == "classification" else 4)
        else:
            kwargs.pop("num_classes", None)
        return self.builder(in_channels=in_channels, num_classes=num_classes, **kwargs)


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add an architecture; a name can be registered only once."""
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    _REGISTRY[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name; a clear ``KeyError`` lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown architecture {name!r}; known: {known}") from None


def list_architectures() -> list[Architecture]:
    """All registered architectures, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def build_model(name: str, in_channels: int = 1, num_classes: int | None = None, **config: Any) -> nn.Module:
    """Build the named network (random initialisation)."""
    return get_architecture(name).build(in_channels=in_channels, num_classes=num_classes, **config)
