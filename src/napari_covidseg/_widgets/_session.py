"""What the Correct and Fine-tune docks of one viewer share: the corrections folder and the slices saved so far."""

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
