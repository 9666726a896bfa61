"""The corrections store: slices a radiologist corrected, kept as image/mask pairs for fine-tuning.

Folder layout (``default_corrections_dir()`` unless the user picks one)::

    images/<key>.nii.gz   one CT slice (1, y, x) as float32, HU or 0..255 display values as loaded
    masks/<key>.nii.gz    its corrected labels, uint8, same geometry
    corrections.json      index {key: CorrectionEntry fields}; key = "<scan_key>_z<zzzz>"
    autosave/<scan_key>.npz  work in progress: the whole label volume + which slices were edited

Each slice pair is written in the original scan's world position (see :func:`slice_volume`), so it overlays the
source scan in any viewer, and ``training.datasets.load_corrections`` reads the folder directly.

Atomicity: every file (NIfTI, index, autosave) is written to a temporary file in the same folder and moved into
place with ``os.replace``, so a crash or error mid-write leaves the previous version intact and no partial file
under the final name. The index is rewritten only after both files of a pair are in place; a pair without an
index entry is harmless (``list_corrections`` only reports indexed pairs whose files both exist).

Several processes may save into one folder at once: every read-modify-write of the index holds an exclusive lock
on ``.corrections.lock`` (``fcntl.flock``; an ``O_EXCL`` lock file where there is no flock), and re-reads the index
under the lock, so every pair written is indexed. A damaged index (not JSON, too large or deeply nested, not an
object) is never overwritten: it is renamed ``corrections.json.damaged-<time>`` and a new index is rebuilt from the
image/mask pairs on disk, with a note (the ``notes`` list of :func:`list_corrections`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as nio

from napari_covidseg.errors import InputError
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.io.writers import save_array, save_labels, write_atomic
from napari_covidseg.paths import data_home

INDEX_NAME = "corrections.json"
LOCK_NAME = ".corrections.lock"
AUTOSAVE_DIR = "autosave"
MAX_INDEX_BYTES = 64 * 1024 * 1024  # ~200 000 entries
LOCK_TIMEOUT_S = 60.0


def default_corrections_dir() -> Path:
    """``$COVIDSEG_HOME/corrections``, else ``<$XDG_DATA_HOME or ~/.local/share>/napari-covidseg/corrections``."""
    return data_home() / "corrections"


def scan_key(volume: CTVolume) -> str:
    """Stable id of the source scan: ``<slug of volume.name, max 40>-<8 hex of sha1(absolute source path)>``
    (of the source text when it is not an existing path, e.g. the phantom)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", volume.name.lower()).strip("-")[:40].strip("-") or "scan"
    # A real file or folder is identified by its absolute path; anything else (a phantom, a layer) by its text.
    source = Path(volume.source).expanduser() if volume.source else None
    ident = str(source.resolve()) if source is not None and source.exists() else (volume.source or volume.name)
    return f"{slug}-{hashlib.sha1(ident.encode('utf-8')).hexdigest()[:8]}"


def correction_key(scan: str, z: int) -> str:
    """File stem of one corrected slice: ``<scan>_z<z, 4 digits>``."""
    return f"{scan}_z{z:04d}"


def slice_volume(volume: CTVolume, z: int) -> CTVolume:
    """Display slice ``z`` as a (1, y, x) volume at its place in world space (RAS mm): ``slice.display_affine``
    maps (0, y, x) where ``volume.display_affine`` maps (z, y, x). The disk orientation is kept (the disk axis that
    is display z gets size 1), so ``save_array`` + ``load_ct`` give back the same (1, y, x) pixels."""
    z = _slice_index(z, volume.shape[0])
    ornt = np.asarray(volume.meta["ornt"])
    disk_shape = list(volume.meta["disk_shape"])
    disk_shape[int(np.flatnonzero(ornt[:, 0] == 0)[0])] = 1  # the disk axis that is display z
    shift = np.eye(4)
    shift[0, 3] = z
    world = volume.display_affine @ shift  # display (0, y, x) of the slice -> world of (z, y, x)
    affine = world @ np.linalg.inv(nio.inv_ornt_aff(ornt, tuple(disk_shape)))
    meta = {**volume.meta, "ornt": ornt, "disk_shape": tuple(disk_shape), "slice_of": volume.source, "slice_z": z}
    return CTVolume(volume.array[z : z + 1].copy(), volume.spacing, affine, volume.intensity, volume.source, meta)


@dataclass
class CorrectionEntry:
    """One corrected slice: ``key`` names both files; ``z`` is the display slice index (inferior = 0)."""

    key: str
    scan: str
    z: int
    source: str
    saved: str  # ISO datetime, seconds
    model: str  # the model whose output was corrected ("" if unknown)
    classes: list[int]  # label values present in the corrected mask


def save_corrections(
    folder: str | Path,
    volume: CTVolume,
    labels: np.ndarray,
    slices: Iterable[int],
    *,
    model: str = "",
    notes: list[str] | None = None,
) -> list[CorrectionEntry]:
    """Store slices ``slices`` of ``labels`` (z, y, x, display order, ints 0..255) with their CT slices.

    All input is validated before anything is written. Per slice: image, mask, then index, each atomically.
    Saving a scan+slice again replaces exactly that pair and its index entry. ``notes`` gets a line when a damaged
    index had to be set aside and rebuilt."""
    labels = _check_labels(labels, volume)
    zs = sorted({_slice_index(z, volume.shape[0]) for z in slices})
    folder = Path(folder)
    scan = scan_key(volume)
    written = []
    for z in zs:
        key = correction_key(scan, z)
        part = slice_volume(volume, z)
        save_array(part.array.astype(np.float32, copy=False), part, folder / "images" / f"{key}.nii.gz")
        mask = labels[z : z + 1]
        save_labels(mask, part, folder / "masks" / f"{key}.nii.gz")
        saved = datetime.now().isoformat(timespec="seconds")
        entry = CorrectionEntry(key, scan, z, volume.source, saved, model, [int(v) for v in np.unique(mask)])
        with _index_lock(folder):  # re-read under the lock: another process may have added entries meanwhile
            index = _read_index(folder, notes)
            index[key] = asdict(entry)
            _write_json(folder / INDEX_NAME, index)
        written.append(entry)
    return written


def list_corrections(folder: str | Path, notes: list[str] | None = None) -> list[CorrectionEntry]:
    """Indexed corrections whose image and mask files both exist, sorted by key ([] if none).

    A damaged index is set aside and rebuilt from the pairs on disk first; ``notes`` gets a line saying so."""
    folder = Path(folder)
    out = []
    names = {f.name for f in fields(CorrectionEntry)}
    if (folder / INDEX_NAME).exists():
        with _index_lock(folder):
            index = _read_index(folder, notes)
    else:
        index = {}
    for key, item in index.items():
        try:
            entry = CorrectionEntry(**{k: v for k, v in item.items() if k in names})
        except (TypeError, AttributeError):
            continue
        if entry.key == key and all(p.is_file() for p in _pair_paths(folder, key)):
            out.append(entry)
    return sorted(out, key=lambda e: e.key)


def delete_correction(folder: str | Path, key: str) -> bool:
    """Remove the pair and index entry of ``key``; False if neither existed."""
    if not key or Path(key).name != key or key.startswith("."):
        raise InputError(f"{key!r} is not a correction key")
    folder = Path(folder)
    with _index_lock(folder):
        index = _read_index(folder)
        found = index.pop(key, None) is not None
        if found:
            _write_json(folder / INDEX_NAME, index)  # first the index, so no listed entry lacks its files
    for path in _pair_paths(folder, key):
        if path.is_file():
            path.unlink()
            found = True
    return found


@dataclass
class Autosave:
    """A restored autosave: ``labels`` (z, y, x) uint8 in display order, ``edited`` slice indices (sorted)."""

    labels: np.ndarray
    edited: list[int]
    meta: dict
    path: Path


def autosave_path(folder: str | Path, volume: CTVolume) -> Path:
    """``<folder>/autosave/<scan_key>.npz``."""
    return Path(folder) / AUTOSAVE_DIR / f"{scan_key(volume)}.npz"


def write_autosave(
    folder: str | Path, volume: CTVolume, labels: np.ndarray, edited: Iterable[int], meta: dict | None = None
) -> Path:
    """Atomically write ``labels`` (z, y, x, uint8, compressed) and meta: ``scan``, ``source``, ``shape``,
    ``edited`` (sorted z), ``saved`` (ISO) plus the JSON-serialisable ``meta`` (whose same-named keys lose)."""
    labels = _check_labels(labels, volume)
    own = {
        "scan": scan_key(volume),
        "source": volume.source,
        "shape": list(volume.shape),
        "edited": sorted({_slice_index(z, volume.shape[0]) for z in edited}),
        "saved": datetime.now().isoformat(timespec="seconds"),
    }
    try:
        text = json.dumps({**(meta or {}), **own}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"autosave meta is not JSON-serialisable: {exc}") from exc
    path = autosave_path(folder, volume)
    write_atomic(path, lambda fh: np.savez_compressed(fh, labels=labels, meta=np.array(text)))
    return path


def read_autosave(folder: str | Path, volume: CTVolume) -> Autosave | None:
    """The autosave of ``volume``'s scan, or None if absent, unreadable or of another shape."""
    path = autosave_path(folder, volume)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            labels = np.asarray(data["labels"], dtype=np.uint8)
            meta = json.loads(str(data["meta"][()]))
        edited = sorted(int(z) for z in meta["edited"])
    except Exception:  # zip, npy, JSON and key errors: a damaged autosave is simply not offered
        return None
    if not isinstance(meta, dict) or labels.shape != volume.shape:
        return None
    return Autosave(labels, edited, meta, path)


def clear_autosave(folder: str | Path, volume: CTVolume) -> None:
    """Delete ``volume``'s autosave if there is one."""
    autosave_path(folder, volume).unlink(missing_ok=True)


def _check_labels(labels: np.ndarray, volume: CTVolume) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise InputError(f"labels must be an integer array, got {labels.dtype}")
    if labels.shape != volume.shape:
        raise InputError(f"labels shape {labels.shape} does not match the CT {volume.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise InputError("labels must be integers in 0..255")
    return labels.astype(np.uint8, copy=False)


def _slice_index(z: Any, depth: int) -> int:
    try:
        z = operator.index(z)
    except TypeError:
        raise InputError(f"slice index {z!r} is not an integer") from None
    if not 0 <= z < depth:
        raise InputError(f"slice {z} is out of range 0..{depth - 1}")
    return z


def _pair_paths(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / "images" / f"{key}.nii.gz", folder / "masks" / f"{key}.nii.gz"


def _read_index(folder: Path, notes: list[str] | None = None) -> dict[str, dict]:
    """The index (call with :func:`_index_lock` held); {} when there is none; a damaged one is set aside and
    rebuilt from the pairs on disk (and the rebuilt index written)."""
    from napari_covidseg.jsonio import JSONFileError, read_json

    path = folder / INDEX_NAME
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        data = read_json(path, max_bytes=MAX_INDEX_BYTES)
        problem = None if isinstance(data, dict) else "not a JSON object"
    except JSONFileError as exc:
        data, problem = None, str(exc)
    if problem is None:
        return {k: v for k, v in data.items() if isinstance(v, dict)}
    kept = _set_aside(path)
    index = _rebuild_index(folder)
    _write_json(path, index)
    note = (
        f"{path}: the corrections index was damaged ({problem}); kept as {kept.name} and rebuilt from the "
        f"{len(index)} image/mask pairs in the folder"
    )
    if notes is not None:
        notes.append(note)
    return index


def _set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.damaged-<time>[-n]`` (never over an existing file) and return the new path."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while target.exists() or target.is_symlink():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, target)
    return target


def _rebuild_index(folder: Path) -> dict[str, dict]:
    """Index entries for every image/mask pair on disk (scan and slice from the key, classes from the mask)."""
    from napari_covidseg.io.labels import load_labels

    index: dict[str, dict] = {}
    images = folder / "images"
    for image in sorted(images.glob("*.nii.gz")) if images.is_dir() else []:
        key = image.name[: -len(".nii.gz")]
        mask = folder / "masks" / image.name
        match = re.fullmatch(r"(.+)_z(\d{4,})", key)
        if not match or not mask.is_file():
            continue
        try:
            classes = [int(v) for v in np.unique(load_labels(mask))]
        except InputError:
            continue
        saved = datetime.fromtimestamp(mask.stat().st_mtime).isoformat(timespec="seconds")
        index[key] = asdict(CorrectionEntry(key, match.group(1), int(match.group(2)), "", saved, "", classes))
    return index


@contextlib.contextmanager
def _index_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock of the folder's index for one read-modify-write (waits up to ``LOCK_TIMEOUT_S``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # Windows: an O_EXCL lock file
        fcntl = None
    if fcntl is not None:
        with open(lock, "a+b") as fh:

            def flock():
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return None

            _wait_for(flock, f"{folder}: the corrections index stayed locked by another process")
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return

    def create():
        try:
            return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None

    fd = _wait_for(
        create, f"{folder}: the corrections index stayed locked ({lock} exists; delete it if no other save runs)"
    )
    try:
        yield
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def _wait_for(acquire, timeout_message: str):
    """Call ``acquire()`` until it returns something other than None (every 10 ms, up to ``LOCK_TIMEOUT_S``)."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while (got := acquire()) is None:
        if time.monotonic() > deadline:
            raise InputError(timeout_message)
        time.sleep(0.01)
    return got


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda fh: fh.write(json.dumps(data, sort_keys=True, indent=1).encode("utf-8")))
