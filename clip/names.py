"""Clip file names, built from sanitised parts of the TRIG only."""

from __future__ import annotations

import re

from ..ipc.schema import Trig


def safe_name(text: str, limit: int = 48) -> str:
    """``text`` reduced to ``[A-Za-z0-9_-]`` (never a path separator or dot-dot)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:limit] or "clip"


def clip_name(index: int, trig: Trig) -> str:
    """``NNN_RULE_SSSS_mmms``: the trigger's ordinal (``trig.index`` when fusion assigned one,
    else ``index``), its sanitised rule and its onset: derived from the TRIG alone, so cutting
    the same TRIG again names the same clip (and its sidecar ``NNN_RULE_SSSS_mmms.json``)."""
    name = f"{trig.index or index:03d}_{safe_name(trig.rule)}_{trig.t_event_ns / 1e9:08.3f}s"
    return name.replace(".", "_", 1)
