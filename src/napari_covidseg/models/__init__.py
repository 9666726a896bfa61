"""Networks (one per file), their registry, and checkpoints with model cards."""

from napari_covidseg.models import d2a_unet, daresnet3d, resattunet, unet  # noqa: F401  (registers them)
from napari_covidseg.models.registry import (
    Architecture,
    build_model,
    get_architecture,
    list_architectures,
    register,
)

__all__ = ["Architecture", "build_model", "get_architecture", "list_architectures", "register"]
