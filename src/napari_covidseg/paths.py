"""Where the user's own data lives (no heavy imports: the corrections store and the checkpoints both use it)."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """``$COVIDSEG_HOME`` if set, else ``<$XDG_DATA_HOME or ~/.local/share>/napari-covidseg``.

    User models go to ``models/``, corrections to ``corrections/`` below it.
    """
    home = os.environ.get("COVIDSEG_HOME")
    if home:
        return Path(home)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "napari-covidseg"
