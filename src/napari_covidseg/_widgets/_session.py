"""What the docks of one viewer share: the corrections folder and the slices saved so far (Correct, Fine-tune), and
the lung masks Segment made (Quantify)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

from napari_covidseg.corrections import default_corrections_dir


@dataclass
class CorrectionSession:
    """The corrections folder in use and the correction keys saved to it in this napari session."""

    folder: Path = field(default_factory=default_corrections_dir)
    saved_keys: list[str] = field(default_factory=list)

    def add(self, keys: list[str]) -> None:
        for key in keys:
            if key not in self.saved_keys:
                self.saved_keys.append(key)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer) -> CorrectionSession:
    """The session of ``viewer`` (created on first use; it goes away with the viewer)."""
    if viewer not in _SESSIONS:
        _SESSIONS[viewer] = CorrectionSession()
    return _SESSIONS[viewer]


# Lung masks made while segmenting, for the Quantify dock (the same classical HU mask it would compute again): lesion
# Labels layer -> (weak reference to the CT array it was made from, lung mask). Gone with the layer; reused only
# for that very CT array.
_LUNGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_lungs(labels_layer, ct_data, lungs) -> None:
    try:
        _LUNGS[_unwrap(labels_layer)] = (weakref.ref(_unwrap(ct_data)), lungs)
    except TypeError:  # an array type without weak references (e.g. a view of a memmap subclass): nothing kept
        pass


def lungs_for(labels_layer, ct_data):
    """The lung mask remembered for ``labels_layer`` if it was made from ``ct_data`` itself, else None."""
    entry = _LUNGS.get(_unwrap(labels_layer))
    if entry is None or entry[0]() is not _unwrap(ct_data):
        return None
    return entry[1]


def _unwrap(obj):
    """The object behind napari's plugin proxy (a dock's viewer hands out short-lived proxies of its layers)."""
    return getattr(obj, "__wrapped__", obj)
