"""The Compare dock's grid: every panel shows the CT under one result, panels named, cameras linked; leaving it
gives back a normal single view.

napari 0.9's grid puts ``stride`` consecutive layers (by index) in one panel and leaves out panels without a visible
layer. So the comparison's panels are laid out at the bottom of the layer list as pairs (CT, result): the real CT
under the first result and a view of the same array (no copy of the voxels, a layer with its own name and a
``covidseg role`` of ``ct view`` that no picker offers) under each other one. Every other visible layer is hidden
while the grid is on and shown again when it is left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_covidseg._widgets._common import placement
from napari_covidseg.layers import CT_VIEW, ROLE_KEY, SOURCE_KEY

if TYPE_CHECKING:
    import napari


class CompareGrid:
    """Grid view of one comparison: ``ct`` (Image layer) under each layer of ``panels`` (A, B, disagreement)."""

    def __init__(self, viewer: napari.Viewer):
        self.viewer = viewer
        self.ct = None
        self.panels: list = []
        self.views: list = []  # the CT views this grid added (removed when it is left)
        self.hidden: list = []  # layers this grid hid (shown again when it is left)
        self.active = False

    def set_comparison(self, ct, panels: list) -> None:
        """The layers of a new comparison (the grid is left first if it showed an older one)."""
        if self.active:
            self.leave()
        self.ct, self.panels = ct, list(panels)

    def ready(self) -> bool:
        layers = self.viewer.layers
        return self.ct is not None and all(layer in layers for layer in [self.ct, *self.panels])

    def enter(self) -> bool:
        """Lay out (CT, result) pairs and switch napari's grid on; False when there is no comparison to show."""
        if self.active:
            return True
        if not self.ready():
            return False
        layers = self.viewer.layers
        pairs = [self.ct, self.panels[0]]
        for panel in self.panels[1:]:
            view = self._ct_view(panel)
            self.views.append(view)
            pairs += [view, panel]
        for i, layer in enumerate(pairs):  # the pairs at indices 0..2n-1: panel k = layers 2k and 2k+1
            layers.move(layers.index(layer), i)
        self.hidden = [layer for layer in layers if layer.visible and layer not in pairs]
        for layer in self.hidden:
            layer.visible = False
        for layer in pairs:
            layer.visible = True
        for panel in self.panels:
            panel.name_overlay.visible = True  # the model's name in its panel
        self.active = True
        grid = self.viewer.grid
        grid.stride, grid.enabled = 2, True
        self.viewer.reset_view()
        return True

    def leave(self) -> None:
        """One view again: CT, the disagreement on top and visible, the two results hidden, other layers back."""
        was_active, self.active = self.active, False  # first: switching napari's grid off calls back here
        grid = self.viewer.grid
        if grid.enabled:
            grid.enabled = False
        grid.stride = 1
        if not was_active:
            return
        layers = self.viewer.layers
        for view in self.views:
            if view in layers:
                layers.remove(view)
        self.views = []
        for layer in self.hidden:
            if layer in layers:
                layer.visible = True
        self.hidden = []
        for panel in self.panels:
            if panel in layers:
                panel.name_overlay.visible = False
        if self.ready():
            *results, disagreement = self.panels
            for layer in results:
                layer.visible = False  # de-emphasised: the layer list still has them
            disagreement.visible = True
            layers.move(layers.index(disagreement), len(layers))  # on top
        self.viewer.reset_view()

    def _ct_view(self, panel):
        """An Image layer showing the CT's own array (no copy) under ``panel``, looking like the CT."""
        ct = self.ct
        where = {k: v for k, v in placement(ct).items() if k in ("scale", "translate", "rotate", "shear", "affine")}
        return self.viewer.add_image(
            ct.data,
            name=f"{ct.name} under {panel.name}",
            colormap=ct.colormap,
            contrast_limits=ct.contrast_limits,
            gamma=ct.gamma,
            metadata={ROLE_KEY: CT_VIEW, SOURCE_KEY: ct.name},
            **where,
        )
