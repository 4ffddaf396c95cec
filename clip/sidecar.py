"""Atomic writes of clips and their sidecar JSON.

A file is written under a temporary name unique to the writer (``.NAME.<random>.part``, hidden,
in the same folder) and renamed over ``NAME`` when complete (``os.replace``, atomic on POSIX):
a reader sees the old file or the new one, never half of one, and two writers of the same clip
(a re-delivered TRIG) cannot interleave their bytes. On any failure the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_path(dest: Path) -> Path:
    """A fresh temporary name for ``dest``, in its folder."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")


@contextlib.contextmanager
def atomic_target(dest: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``dest`` when the block ends normally,
    remove it when the block raises (the exception goes on)."""
    tmp = temp_path(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(dest: Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` as indented JSON to ``dest`` atomically; returns ``dest``.

    Raises:
        OSError: the folder cannot be written (nothing is left behind).
    """
    with atomic_target(dest) as tmp:
        tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return dest


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` if it is missing, unreadable or not an object."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
