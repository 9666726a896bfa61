"""Outputs checked before any work starts: writable, in a folder, and never one of the inputs.

A user who types ``covidseg segment ct.nii.gz -o ct.nii.gz`` (or points an output at a symlink or hard link of the
scan, or at a file inside the DICOM folder being read) must get a refusal, not a label map where the CT was. The
same file is recognised by its resolved path and by its device + inode, so links count.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from napari_covidseg.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_NAME_BYTES = 255
_MAX_FOLDER_FILES = 100_000  # a DICOM folder's members are compared one by one; beyond this, by path only


class Output:
    """One output the command will write: the option that names it, the path, and the endings it must have."""

    def __init__(self, option: str, path: str | os.PathLike | None, suffixes: Sequence[str] = (), folder=False):
        self.option, self.path, self.suffixes, self.folder = option, path, tuple(suffixes), folder


def check_outputs(outputs: Iterable[Output], inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Raise :class:`InputError` (one line, naming the option and the path) for the first output that cannot be
    written or that is one of the inputs; outputs must also differ from each other. ``None`` entries are skipped."""
    outputs = [o for o in outputs if o.path is not None and str(o.path) != ""]
    if not outputs:
        return
    paths, inodes = _input_identities([Path(p) for p in inputs if p is not None and str(p) != ""])
    seen: dict[Path, str] = {}
    for out in outputs:
        path = Path(out.path)
        label = f"{out.option} {out.path}"
        _check_one(path, out, label)
        resolved = _resolved(path)
        if resolved in paths or _identity(path) in inodes:
            raise InputError(
                f"{label}: this is an input of the command ({paths.get(resolved) or 'the same file'}); writing there "
                "would overwrite it — choose another output path"
            )
        if resolved in seen:
            raise InputError(f"{label}: the same file as {seen[resolved]}; give each output its own path")
        seen[resolved] = label


def _check_one(path: Path, out: Output, label: str) -> None:
    if out.suffixes and not path.name.endswith(out.suffixes):
        raise InputError(f"{label}: output must end in {' or '.join(out.suffixes)}")
    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        raise InputError(f"{label}: file name too long (at most {MAX_NAME_BYTES} bytes)")
    if out.folder:
        if path.exists() and not path.is_dir():
            raise InputError(f"{label}: is a file, not a folder")
    elif path.is_dir():
        raise InputError(f"{label}: is a folder; give a file name")
    ancestor = path if out.folder and path.exists() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{label}: cannot write there, {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{label}: cannot write there, folder {ancestor} is not writable (permission denied)")


def _input_identities(inputs: list[Path]) -> tuple[dict[Path, str], set[tuple[int, int]]]:
    """Resolved paths (-> how to name them) and (device, inode) of every input file; a folder's files count."""
    paths: dict[Path, str] = {}
    inodes: set[tuple[int, int]] = set()
    for p in inputs:
        paths[_resolved(p)] = f"input {p}"
        ident = _identity(p)
        if ident:
            inodes.add(ident)
        if p.is_dir():
            try:
                for k, member in enumerate(p.rglob("*")):
                    if k >= _MAX_FOLDER_FILES:
                        break
                    if member.is_file():
                        paths[_resolved(member)] = f"a file of the input folder {p}"
                        ident = _identity(member)
                        if ident:
                            inodes.add(ident)
            except OSError:
                pass
    inodes.discard(None)
    return paths, inodes


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()  # follows symlinks: a link to the input is the input
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)
