"""Event time for live sources: a connection's timestamps anchored to CLOCK_MONOTONIC.

A live input (RTSP, MPEG-TS over UDP, a camera) gives each packet a ``dts``/``pts`` in its
stream's ``time_base`` on the *sender's* clock, which restarts at every connection (FFmpeg's RTSP
client starts near 0 each time; measured, tests/LIVE_NOTES.md) and drifts against ours.
:class:`LiveClock` maps them onto ``CLOCK_MONOTONIC`` nanoseconds (``t_ns``), the pipeline's
single alignment key, by the rules of DESIGN.md (Time) and the live-sources issue:

* Each connection is a **generation** (:meth:`LiveClock.start_generation`). Its first packet that
  has a ``dts`` is anchored to its arrival: ``t = now``. Later packets follow their own ``dts``:
  ``t = anchor_ns + (dts - dts0) * time_base``, in exact rational arithmetic.
* **Re-anchor** (``anchor = (now, this timestamp)``) when the mapped time runs ahead of now, or
  lies more than ``max_behind_ns`` (2 s, the issue's figure) behind now. Ahead means the sender's
  clock runs fast or jumped forward; each such re-anchor moves the mapping earlier, so under
  network jitter the mapping settles on the earliest arrivals (the packets that were delayed
  least). Behind means the sender's clock runs slow, jumped back, or a stall was followed by a
  burst of old packets.
* Packets are stamped by ``dts`` (:meth:`LiveClock.stamp_packet`), decoded frames by ``pts`` on the
  same anchor (:meth:`LiveClock.stamp_frame`), so ``frame.t_ns - packet.t_ns`` is the frame's
  reorder delay ``(pts - dts) * time_base``. A frame whose mapped time runs ahead of now
  re-anchors too (nothing is ever stamped in the future); a frame more than 2 s behind does *not*
  re-anchor: a slow decoder must not move the source's clock (packets keep it honest).
* ``t_ns`` never goes backwards or repeats, across re-anchors and generations: each output
  (packets, frames) is strictly increasing; a value that would not be is raised to the previous
  one + 1 ns. So ``t <= max(now, previous + 1)`` always holds.

Missing timestamps (FFmpeg's RTSP client gives the first packets of a connection ``pts=None`` /
``dts=None``: measured, LIVE_NOTES.md):

* ``stamp_packet(None, ...)`` before the anchor: the arrival time (``now``); it does not anchor
  (``pts`` is not used for the anchor: with B-frames it runs ahead of ``dts`` by the reorder delay).
  After the anchor: the previous ``dts`` plus the last ``dts`` step, mapped, kept within
  ``[now - max_behind_ns, now]``.
* ``stamp_frame(None, ...)``: the previous frame's ``t_ns`` plus the last frame step (or ``now``
  when there is none yet), never beyond ``now``.

B-frames: packets arrive in decode order (``dts`` increasing), the decoder emits frames in
presentation order (``pts`` increasing), so frames come out strictly increasing on one anchor.

One :class:`LiveClock` per stream (video, audio): each anchors independently. (An RTSP session's
streams are not on a common timeline before the first RTCP sender report; MPEG-TS streams are, but
anchoring each separately costs only the arrival-time difference of their first packets.)

The clock is pure: no I/O, no sleeping, the time comes from the injected ``now_ns`` (monotonic
nanoseconds; ``time.monotonic_ns`` in production, a counter in tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

#: Re-anchor when the mapped time lies more than this behind now (the issue's "2 s").
MAX_BEHIND_NS = 2_000_000_000

_NS = 1_000_000_000


class LiveClockError(RuntimeError):
    """Base class of the live clock's errors."""


class NoGenerationError(LiveClockError):
    """A timestamp was stamped before :meth:`LiveClock.start_generation`."""


@dataclass(frozen=True, slots=True)
class Reanchor:
    """One re-anchoring, for the trace (``record: "source", event: "reanchor"``).

    ``step_ns`` is the new mapping minus the old one at this timestamp (negative: the mapping
    moved earlier, the sender's clock ran ahead).
    """

    generation: int
    reason: Literal["ahead", "behind"]
    by: Literal["packet", "frame"]
    now_ns: int
    step_ns: int


def _round_ns(seconds: Fraction) -> int:
    """``seconds`` in integer nanoseconds, rounded half away from zero (as ipc.timebase)."""
    value = seconds * _NS
    if value >= 0:
        return int(value + Fraction(1, 2))
    return -int(-value + Fraction(1, 2))


class LiveClock:
    """Maps one live stream's ``dts``/``pts`` to monotonic ``t_ns``, per generation.

    Args:
        now_ns: the monotonic clock in nanoseconds (injected; it must never go backwards).
        max_behind_ns: re-anchor when a packet maps more than this behind now (default 2 s).
        on_reanchor: called with a :class:`Reanchor` each time the anchor moves (trace it).

    Raises:
        ValueError: ``max_behind_ns`` is not positive.
    """

    def __init__(self, now_ns: Callable[[], int], max_behind_ns: int = MAX_BEHIND_NS,
                 on_reanchor: Callable[[Reanchor], None] | None = None) -> None:
        if max_behind_ns <= 0:
            raise ValueError(f"max_behind_ns must be > 0, got {max_behind_ns}")
        self._now = now_ns
        self.max_behind_ns = max_behind_ns
        self._on_reanchor = on_reanchor
        self.generation = 0  #: 0 before the first :meth:`start_generation`, then 1, 2, ...
        self.reanchors = 0  #: re-anchorings so far, all generations
        self._last_packet_ns: int | None = None
        self._last_frame_ns: int | None = None
        self._reset_generation_state()

    def _reset_generation_state(self) -> None:
        self._anchor_ns: int | None = None
        self._anchor_s = Fraction(0)  # the anchored timestamp, in seconds of the sender's clock
        self._last_dts_s: Fraction | None = None
        self._dts_step_s: Fraction | None = None
        self._last_pts_s: Fraction | None = None
        self._frame_step_ns: int | None = None

    # --- generations ---

    def start_generation(self) -> int:
        """Begin a new connection: forget the anchor (the next packet with a ``dts`` anchors);
        keep the last stamped times, so ``t_ns`` stays strictly increasing. Returns the new
        generation number (1 for the first connection)."""
        self.generation += 1
        self._reset_generation_state()
        return self.generation

    @property
    def anchored(self) -> bool:
        """Whether this generation has an anchor (a packet with a ``dts`` was stamped)."""
        return self._anchor_ns is not None

    # --- pure mapping ---

    def map(self, ts: int, time_base: Fraction) -> int | None:
        """``ts`` (in ``time_base``) on the current anchor, in ns; ``None`` before the anchor.
        Pure: no re-anchoring, no monotonic clamp."""
        if self._anchor_ns is None:
            return None
        return self._anchor_ns + _round_ns(Fraction(ts) * Fraction(time_base) - self._anchor_s)

    # --- stamping ---

    def stamp_packet(self, dts: int | None, time_base: Fraction) -> int:
        """``t_ns`` of a packet that arrived just now, by its ``dts``.

        Raises:
            NoGenerationError: before :meth:`start_generation`.
        """
        self._require_generation()
        now = self._now()
        if dts is None:
            return self._bump_packet(self._predict_packet(now))
        ts_s = Fraction(dts) * Fraction(time_base)
        if self._anchor_ns is None:
            self._set_anchor(now, ts_s)
            t = now
        else:
            t = self._anchor_ns + _round_ns(ts_s - self._anchor_s)
            if t > now:
                t = self._reanchor(now, ts_s, t, "ahead", "packet")
            elif t < now - self.max_behind_ns:
                t = self._reanchor(now, ts_s, t, "behind", "packet")
        if self._last_dts_s is not None and ts_s > self._last_dts_s:
            self._dts_step_s = ts_s - self._last_dts_s
        self._last_dts_s = ts_s
        return self._bump_packet(t)

    def stamp_frame(self, pts: int | None, time_base: Fraction) -> int:
        """``t_ns`` of a decoded frame, by its ``pts`` on the packets' anchor.

        Frames must be stamped in the order the decoder emits them (presentation order).

        Raises:
            NoGenerationError: before :meth:`start_generation`.
        """
        self._require_generation()
        now = self._now()
        if pts is None or self._anchor_ns is None:
            if self._last_frame_ns is not None and self._frame_step_ns is not None:
                t = min(self._last_frame_ns + self._frame_step_ns, now)
            else:
                t = now
            return self._bump_frame(t)
        ts_s = Fraction(pts) * Fraction(time_base)
        t = self._anchor_ns + _round_ns(ts_s - self._anchor_s)
        if t > now:
            t = self._reanchor(now, ts_s, t, "ahead", "frame")
        if self._last_pts_s is not None and ts_s > self._last_pts_s:
            self._frame_step_ns = _round_ns(ts_s - self._last_pts_s)
        self._last_pts_s = ts_s
        return self._bump_frame(t)

    # --- internals ---

    def _require_generation(self) -> None:
        if self.generation == 0:
            raise NoGenerationError("call start_generation() before stamping")

    def _set_anchor(self, now: int, ts_s: Fraction) -> None:
        self._anchor_ns = now
        self._anchor_s = ts_s

    def _reanchor(self, now: int, ts_s: Fraction, mapped: int,
                  reason: Literal["ahead", "behind"], by: Literal["packet", "frame"]) -> int:
        self._set_anchor(now, ts_s)
        self.reanchors += 1
        if self._on_reanchor is not None:
            self._on_reanchor(Reanchor(self.generation, reason, by, now, now - mapped))
        return now

    def _predict_packet(self, now: int) -> int:
        if self._anchor_ns is None or self._last_dts_s is None or self._dts_step_s is None:
            return now
        self._last_dts_s += self._dts_step_s  # consecutive missing dts keep advancing
        t = self._anchor_ns + _round_ns(self._last_dts_s - self._anchor_s)
        return max(min(t, now), now - self.max_behind_ns)

    def _bump_packet(self, t: int) -> int:
        if self._last_packet_ns is not None and t <= self._last_packet_ns:
            t = self._last_packet_ns + 1
        self._last_packet_ns = t
        return t

    def _bump_frame(self, t: int) -> int:
        if self._last_frame_ns is not None and t <= self._last_frame_ns:
            t = self._last_frame_ns + 1
        self._last_frame_ns = t
        return t
