"""How a local run ends, told honestly: what the source lost, and what could not be written.

``momentbus run`` builds one :class:`Ending` after every role exited: the source's
:class:`~momentbus.damage.Damage` (from the daemon's ``summary`` trace record) and the trace
collector's write error, if any. It turns them into the summary's last lines and the exit code:
``DATA_LOSS`` (65) when part of the source could not be read, ``OUTPUT_INCOMPLETE`` (74) when
an output could not be written (it wins: the outputs are then incomplete whatever the input);
a failure or an interruption keeps its own code.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .damage import Damage
from .lifecycle import ExitCode

__all__ = ["Ending"]


def _whole_json_lines(path: Path) -> int:
    """Lines of ``path`` that parse as JSON (0 when it is missing or unreadable)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return 0
    n = 0
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            continue
        n += 1
    return n


@dataclass(frozen=True)
class Ending:
    """What a run could not do.

    Attributes:
        damage: the source's damage as the daemon reported it (``None``: no report came, e.g.
            the daemon died or ran a live source).
        write_error: the first error writing ``trace_path`` (``None``: all written).
        trace_path: the run's ``trace.jsonl``.
        trace_received: trace records the collector received (count).
        trace_written: trace records written whole to ``trace_path`` (count).
        triggers_path: the run's ``triggers.jsonl``; ``triggers_saved`` its whole lines.
        clips_saved: clip files reported written that exist on disk.
    """

    damage: Damage | None = None
    write_error: OSError | None = None
    trace_path: Path = Path("trace.jsonl")
    trace_received: int = 0
    trace_written: int = 0
    triggers_path: Path = Path("triggers.jsonl")
    triggers_saved: int = 0
    clips_saved: list[Path] = field(default_factory=list)

    @classmethod
    def of(cls, collector: Any, out: Path, clips: Iterable[Path]) -> Ending:
        """The ending of a run whose outputs are in ``out``, from its
        :class:`~momentbus.traces.tracer.TraceCollector` (``summaries``, ``write_error``,
        ``count``, ``written``, ``path``) and the clip paths the clip role reported."""
        damage = None
        for record in getattr(collector, "summaries", ()):
            if record.get("role") == "daemon" and "damage" in record:
                damage = Damage.from_trace(record["damage"])  # the last report counts
        return cls(damage=damage, write_error=getattr(collector, "write_error", None),
                   trace_path=Path(collector.path), trace_received=collector.count,
                   trace_written=getattr(collector, "written", collector.count),
                   triggers_path=out / "triggers.jsonl",
                   triggers_saved=_whole_json_lines(out / "triggers.jsonl"),
                   clips_saved=[p for p in clips if p.exists()])

    @property
    def data_lost(self) -> bool:
        return self.damage is not None and self.damage.lossy

    def exit_code(self, code: int) -> int:
        """The run's exit code given the one its roles ended with (``code``)."""
        if code != ExitCode.OK:
            return code  # a failure or an interruption says more than what follows
        if self.write_error is not None:
            return ExitCode.OUTPUT_INCOMPLETE
        if self.data_lost:
            return ExitCode.DATA_LOSS
        return code

    def data_loss_line(self) -> str | None:
        """``data loss: 226 of 472 frames read; damaged 9.38-19.68 s (243 decode errors)``,
        or ``None`` for a clean read."""
        if self.damage is None or not self.damage.lossy:
            return None
        return f"data loss: {self.damage.describe()}"

    def output_line(self) -> str | None:
        """One line naming what could not be written and what was saved, or ``None``."""
        e = self.write_error
        if e is None:
            return None
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        why = e.strerror or type(e).__name__
        what = "disk full" if full else "cannot write"
        trace = (f"{self.trace_path} stopped at {self.trace_written} of {self.trace_received} "
                 f"records ({why})")
        clips = (f"{len(self.clips_saved)} clip{'s' if len(self.clips_saved) != 1 else ''}"
                 + (f" in {self.clips_saved[0].parent}" if self.clips_saved else ""))
        trigs = f"{self.triggers_saved} trigger{'s' if self.triggers_saved != 1 else ''}"
        return f"{what}: {trace}; saved: {self.triggers_path} ({trigs}) and {clips}"

    def lines(self) -> Sequence[str]:
        return [line for line in (self.data_loss_line(), self.output_line()) if line]
