"""Small real models and cards for tests (random or briefly trained weights, never mocks)."""

from __future__ import annotations

from napari_covidseg.constants import DIAGNOSIS_CLASSES, LESION_CLASSES, LESION_COLOURS, LUNG_WINDOW
from napari_covidseg.models import build_model
from napari_covidseg.models.card import ModelCard


def lesion_classes() -> list[dict]:
    return [{"id": i, "name": n, "colour": list(LESION_COLOURS[i])} for i, n in LESION_CLASSES.items()]


def segmentation_card(name: str = "tiny-unet", arch: str = "unet", size: int = 64, **config) -> ModelCard:
    config = {"base_width": 8, **config}
    return ModelCard(
        name=name,
        architecture=arch,
        config=config,
        task="segmentation",
        classes=lesion_classes(),
        input_size=[size, size],
        intensity={"hu_window": list(LUNG_WINDOW), "display_window": [0, 255]},
        training={"data": "none (random weights, test only)"},
    )


def classification_card(name: str = "tiny-da3d", size=(16, 64, 64)) -> ModelCard:
    classes = [{"id": i, "name": n, "colour": [1.0, 0.0, 0.0, 1.0]} for i, n in enumerate(DIAGNOSIS_CLASSES)]
    return ModelCard(
        name=name,
        architecture="daresnet18_3d",
        config={"base_width": 8},
        task="classification",
        classes=classes,
        input_size=list(size),
        intensity={"hu_window": list(LUNG_WINDOW), "display_window": [0, 255]},
        training={"data": "none (random weights, test only)"},
    )


def build_for(card: ModelCard):
    return build_model(card.architecture, num_classes=card.num_classes, **card.config).eval()
