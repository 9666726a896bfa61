"""Bounded JSON reading for files users and other programs can write (model cards, the corrections index).

``json.loads`` recurses once per nesting level: a file of 100 000 ``[`` takes the interpreter down with a
RecursionError, and a multi-GB "card" is read whole. Files are read up to ``max_bytes`` and their nesting is
measured (without recursion) before parsing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 32


class JSONFileError(ValueError):
    """The file is missing, not a regular file, too large, too deeply nested or not JSON: ``str()`` says which."""


def read_json(path: str | Path, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    path = Path(path)
    if not path.is_file():
        raise JSONFileError("not a regular file" if path.exists() else "file not found")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise JSONFileError((exc.strerror or str(exc)).lower()) from exc
    if len(data) > max_bytes:
        raise JSONFileError(f"larger than {max_bytes // 1024} kB, more than such a file ever holds")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONFileError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JSONFileError(f"nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise JSONFileError(f"not valid JSON ({exc})") from exc


def nesting_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of a JSON text, brackets inside strings ignored; one pass, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest
