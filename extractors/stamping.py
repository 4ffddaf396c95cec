"""Results to observations: who sent them and the watermark that rides on each.

Shared by the runner process and the in-process :func:`~momentbus.extractors.offline.extract_file`,
so both emit the same observations with the same watermarks.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ipc.schema import Obs
from .base import Result

#: Below every real time: the watermark of a member that promised nothing yet.
NO_WATERMARK = -(1 << 62)


@dataclass
class ObsStamper:
    """Wraps one member's results into :class:`~momentbus.ipc.schema.Obs` and keeps its watermark.

    A watermark promises that nothing more will come at or before it, so it must stay below the
    time of every result still to be sent: each Obs carries ``min(new watermark, next result's
    t_ns - 1)``, the last one the new watermark itself. A per-frame kind thus sends one message a
    frame (the Obs carries its own time as watermark); a bare watermark is only needed when the
    watermark advanced with no result to carry it (:meth:`stamp` returns it).
    """

    source_id: str
    group: str
    component: str
    watermark_ns: int = NO_WATERMARK

    def advance(self, t_ns: int) -> int | None:
        """Promise ``t_ns`` with no result (frames skipped for this member, a failed frame);
        returns the new watermark to send, or ``None`` if it did not advance."""
        if t_ns <= self.watermark_ns:
            return None
        self.watermark_ns = t_ns
        return t_ns

    def stamp(self, results: list[Result], watermark_ns: int,
              latency_ns: int = 0) -> tuple[list[Obs], int | None]:
        """The Obs for ``results`` (sent in event-time order) and, if no Obs carries it, the new
        watermark to send on its own (else ``None``)."""
        ordered = sorted(results, key=lambda r: (r.t_ns, r.seq))
        target = max(self.watermark_ns, watermark_ns)
        out: list[Obs] = []
        for i, r in enumerate(ordered):
            limit = ordered[i + 1].t_ns - 1 if i + 1 < len(ordered) else target
            self.watermark_ns = max(self.watermark_ns, min(target, limit))
            out.append(Obs(source_id=self.source_id, group=self.group, component=self.component,
                           seq=r.seq, t_ns=r.t_ns, watermark_ns=self.watermark_ns,
                           payload=r.payload, latency_ns=latency_ns))
        return out, self.advance(target)
