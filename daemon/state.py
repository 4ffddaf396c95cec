"""The daemon's resume point: what every group acknowledged, kept in a small file.

A restarted daemon (``--state FILE``) reads the file it wrote before and starts sending at the
first seq some group had not acknowledged (:meth:`DaemonState.resume_seq`); earlier items are
decoded again to keep seq numbers and sampling exactly as they were, but sent to nobody. Members
that rejoin also say which seq they finished (their Hello), so an item every member of a group
passed is not sent again either; what is sent twice anyway is recognised by fusion as a
duplicate.

The file is JSON, written atomically (temp file + rename) at most every
:data:`SAVE_INTERVAL_S` and at exit; it names the source (path, size, mtime) and is ignored for
any other source.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The resume point lags the truth by at most this much (what it misses is sent again).
SAVE_INTERVAL_S = 0.5


@dataclass
class DaemonState:
    """``acked``: per stream, per group, the seq below which every item was acknowledged."""

    source: dict[str, Any]
    acked: dict[str, dict[str, int]] = field(default_factory=dict)

    @staticmethod
    def identity(path: str) -> dict[str, Any]:
        st = os.stat(path)
        return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def resume_seq(self, stream: str) -> int:
        """The first seq of ``stream`` some group had not acknowledged (0: start over)."""
        groups = self.acked.get(stream, {})
        return min(groups.values()) if groups else 0


class StateFile:
    """Reads and writes one daemon's :class:`DaemonState` at ``path`` for ``source``."""

    def __init__(self, path: str | os.PathLike[str], source: str) -> None:
        self.path = Path(path)
        self.state = DaemonState(DaemonState.identity(source))
        self.loaded = False
        self._saved_at = 0.0
        self._written: dict[str, dict[str, int]] = {}

    def load(self) -> DaemonState:
        """The state a previous daemon of the same source left, else a fresh one."""
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return self.state
        if isinstance(doc, dict) and doc.get("source") == self.state.source:
            acked = doc.get("acked")
            if isinstance(acked, dict):
                self.state.acked = {str(s): {str(g): int(v) for g, v in groups.items()}
                                    for s, groups in acked.items() if isinstance(groups, dict)}
                self.loaded = True
        return self.state

    def update(self, stream: str, acked: dict[str, int], force: bool = False) -> None:
        """Record the groups' acknowledged seqs; written at most every SAVE_INTERVAL_S."""
        self.state.acked[stream] = dict(acked)
        now = time.monotonic()
        if not force and (now - self._saved_at < SAVE_INTERVAL_S
                          or self.state.acked == self._written):
            return
        self._saved_at = now
        tmp = self.path.with_name(f".{self.path.name}.part")
        try:
            tmp.write_text(json.dumps({"source": self.state.source, "acked": self.state.acked}))
            os.replace(tmp, self.path)
            self._written = {s: dict(g) for s, g in self.state.acked.items()}
        except OSError:
            pass  # a resume point is an optimisation: without it a restart starts over
