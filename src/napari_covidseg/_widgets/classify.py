"""Classify dock: diagnosis probabilities for the chosen CT and a class-activation map on top of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtGui import QColor, QLinearGradient, QPainter, QPixmap
from qtpy.QtWidgets import QComboBox, QLabel, QProgressBar, QVBoxLayout, QWidget

from napari_covidseg._widgets._common import ModelPicker
from napari_covidseg._widgets._dock import ImageJobDock
from napari_covidseg.constants import CAM_COLOUR_STOPS, CAM_THRESHOLD, DIAGNOSIS_CLASSES, DIAGNOSIS_COLOURS
from napari_covidseg.errors import CheckpointError, InputError
from napari_covidseg.inference.classify import Classification, iter_classify
from napari_covidseg.layers import CAM, GEOMETRY_KEY, ROLE_KEY, SOURCE_KEY

if TYPE_CHECKING:
    import napari

PREDICTED = "predicted class"
GENERIC_NOTE = "Research use only: these probabilities are not a diagnosis."
CAM_INTRO = (
    "The heat map (class-activation map) shows where the classifier found the evidence for the class it explains, "
    "relative to the map's strongest point (1.0). It shows where the model looked, not where disease is."
)


def cam_colormap():
    """napari colormap of CAM_COLOUR_STOPS: transparent below CAM_THRESHOLD, dark red -> yellow above it."""
    from napari.utils.colormaps import Colormap

    controls = [stop for stop, _ in CAM_COLOUR_STOPS]
    colours = [rgba for _, rgba in CAM_COLOUR_STOPS]
    return Colormap(colors=np.array(colours), controls=controls, name="covidseg CAM", interpolation="linear")


def cam_legend_pixmap(width: int = 220, height: int = 14) -> QPixmap:
    """The CAM colour scale over a grey ramp (what the map looks like on CT), 0 on the left, 1 on the right."""
    pixmap = QPixmap(width, height)
    pixmap.fill(QColor(90, 90, 90))
    painter = QPainter(pixmap)
    gradient = QLinearGradient(0, 0, width, 0)
    for stop, (r, g, b, a) in CAM_COLOUR_STOPS:
        gradient.setColorAt(stop, QColor.fromRgbF(r, g, b, a))
    painter.fillRect(0, 0, width, height, gradient)
    painter.end()
    return pixmap


def cam_explanation(res: Classification) -> str:
    """The dock's plain words under the colour scale for one result (CAM_INTRO is the tooltip)."""
    text = f"Heat map for <b>{res.cam_class}</b>"
    if res.cam_region == "lungs":
        text += f" inside the lungs ({100 * (1 - res.cam_inside):.0f} % of it lay outside them, not shown)"
    text += f"; transparent below {CAM_THRESHOLD:.1f}. Where the model looked, not where disease is."
    return text + "".join(f" {note[0].upper()}{note[1:]}." for note in res.notes)


def _bar_style(rgba) -> str:
    r, g, b = (int(round(255 * c)) for c in rgba[:3])
    return f"QProgressBar::chunk {{ background-color: rgb({r}, {g}, {b}); }} QProgressBar {{ text-align: center; }}"


class ClassifyWidget(ImageJobDock):
    """Pick a CT layer, a model and a device; Classify shows one probability (0-100 %) per diagnosis class and adds
    ``<image> CAM <class> (<model>)``: a float32 (z, y, x) heat map in [0, 1] on the CT's voxel grid."""

    RUN_TEXT = "Classify"

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.model = ModelPicker("classification", default="daresnet18_3d")
        self.cam_for = QComboBox()
        self.cam_for.setToolTip("Which class the activation map explains (default: the most probable one)")
        self.prob_bars: dict[str, QProgressBar] = {}
        self.prob_box = QWidget()
        QVBoxLayout(self.prob_box).setContentsMargins(0, 0, 0, 0)
        self.note = QLabel("")  # the model card's notes: demonstration weights must not be read as a diagnosis
        self.note.setWordWrap(True)
        self.note.setStyleSheet("font-style: italic; color: rgb(255, 170, 60);")
        self.cam_scale = QLabel()
        self.cam_scale.setPixmap(cam_legend_pixmap())
        self.cam_scale.setToolTip("CAM colour scale: 0 (left) to 1, the map's strongest point (right)")
        self.cam_text = QLabel("Where the model looked, not where disease is.")
        self.cam_text.setWordWrap(True)
        self.cam_text.setToolTip(CAM_INTRO)
        fields = {"image": self.image, "model": self.model, "device": self.device, "CAM for": self.cam_for}
        results = [QLabel("Diagnosis probabilities"), self.prob_box, self.note]
        self.lay_out(fields, [*results, QLabel("Heat map scale: 0 → 1"), self.cam_scale, self.cam_text])
        self.last_result: Classification | None = None
        self.model.combo.currentIndexChanged.connect(self._sync_model)
        self._sync_model()

    def _sync_model(self, *_) -> None:
        """Class list (bars, CAM choices) and the model's notes follow the chosen model."""
        try:
            card = self.model.checkpoint().card
        except (InputError, CheckpointError):
            names, notes = list(DIAGNOSIS_CLASSES), ""
            colours = dict(zip(DIAGNOSIS_CLASSES, DIAGNOSIS_COLOURS))
        else:
            names, notes = card.class_names, card.notes
            colours = {c["name"]: c.get("colour") for c in card.classes}
        self.cam_for.clear()
        self.cam_for.addItems([PREDICTED, *names])
        self._build_bars(names, colours)
        self.note.setText(f"Model note: {notes}" if notes else GENERIC_NOTE)

    def _build_bars(self, names: list[str], colours: dict) -> None:
        """One 0-100 % bar per class, coloured like the class (DIAGNOSIS_COLOURS for the bundled classes)."""
        for bar in self.prob_bars.values():
            self.prob_box.layout().removeWidget(bar)
            bar.deleteLater()
        self.prob_bars = {}
        known = dict(zip(DIAGNOSIS_CLASSES, DIAGNOSIS_COLOURS))
        for name in names:
            bar = QProgressBar()
            bar.setRange(0, 100)
            bar.setValue(0)
            bar.setFormat(f"{name}: \u2013")
            bar.setStyleSheet(_bar_style(known.get(name) or colours.get(name) or (0.6, 0.6, 0.6, 1.0)))
            self.prob_box.layout().addWidget(bar)
            self.prob_bars[name] = bar

    def prepare(self, layer, volume):
        checkpoint = self.model.checkpoint()
        device = self.device.currentText()
        cam_class = None if self.cam_for.currentText() in (PREDICTED, "") else self.cam_for.currentText()

        def job():
            return (yield from iter_classify(volume, checkpoint, device=device, cam_class=cam_class))

        return job, f"Classifying {layer.name} with {checkpoint.name}"

    def show_result(self, res: Classification, volume, like: dict, image_name: str) -> None:
        names = list(res.probabilities)
        if names != list(self.prob_bars):
            self._build_bars(names, {c["name"]: c.get("colour") for c in res.card.classes})
        predicted = res.predicted
        for name, p in res.probabilities.items():
            bar = self.prob_bars[name]
            bar.setValue(int(round(100 * p)))
            mark = "\u25b6 " if name == predicted else ""
            bar.setFormat(f"{mark}{name}: {100 * p:.1f} %")
            font = bar.font()
            font.setBold(name == predicted)
            bar.setFont(font)
        self.note.setText(f"Model note: {res.card.notes}" if res.card.notes else GENERIC_NOTE)
        probabilities = {k: float(v) for k, v in res.probabilities.items()}
        metadata = {k: v for k, v in like["metadata"].items() if k in (GEOMETRY_KEY, "spacing")}
        metadata.update({"diagnosis probabilities": probabilities, "model": res.card.name, "cam class": res.cam_class})
        metadata.update({ROLE_KEY: CAM, SOURCE_KEY: image_name, "cam region": res.cam_region})
        metadata["cam share inside region"] = res.cam_inside
        cam = np.asarray(res.cam, dtype=np.float32)
        name = f"{image_name} CAM {res.cam_class} ({res.card.name})"
        layer = self.viewer.add_image(
            cam[0] if volume.meta.get("squeezed") else cam,
            name=name,
            colormap=cam_colormap(),
            blending="translucent",
            opacity=0.8,
            contrast_limits=(0.0, 1.0),
            scale=like["scale"],
            translate=like["translate"],
            rotate=like["rotate"],
            shear=like["shear"],
            affine=like["affine"],
            metadata=metadata,
        )
        layer.colorbar.visible = True
        if image_name in self.viewer.layers:  # just above its CT: lesion labels stay on top of the map
            above_ct = self.viewer.layers.index(self.viewer.layers[image_name]) + 1
            self.viewer.layers.move(self.viewer.layers.index(layer), above_ct)
        self.cam_text.setText(cam_explanation(res))
        self.last_result = res
        self.runner.set_status(
            f"{predicted} ({100 * res.probabilities[predicted]:.1f} %); {name} added; "
            f"{res.seconds:.1f} s on {res.device}"
        )
