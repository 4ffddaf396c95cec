"""Clock offset and round-trip time between two hosts, NTP-style, from four wall-clock stamps.

Pure: no sockets, no clock reads. Callers pass wall-clock readings (``time.time_ns()``,
CLOCK_REALTIME, integer ns) taken on each host, and a local monotonic reading for ageing.

The on-wire protocol and the estimator are NTP's (RFC 5905, "Network Time Protocol Version 4",
section 8 "On-Wire Protocol" and section 10 "Clock Filter Algorithm"; D. L. Mills, *Computer
Network Time Synchronization*, 2nd ed., CRC Press 2011, ch. 3, the minimum-delay clock filter):

* a client sends at ``t1`` (its clock), the server receives at ``t2`` and answers at ``t3``
  (server clock), the client receives at ``t4`` (its clock). Then::

      offset = ((t2 - t1) + (t3 - t4)) / 2     # server clock minus client clock
      rtt    = (t4 - t1) - (t3 - t2)            # round trip, without the server's hold time

* whatever the one-way delays ``d_out``, ``d_back`` are, the true offset lies within
  ``offset +- rtt / 2`` (the estimate is off by ``(d_out - d_back) / 2``, and
  ``|d_out - d_back| <= d_out + d_back = rtt``). Queueing inflates the round trip and the
  asymmetry together, so the sample with the **smallest round trip** in a recent window has the
  tightest bound and is the estimate (NTP's clock filter keeps the last 8 samples and picks the
  minimum delay; Mills shows the offset error grows with delay, the "wedge scattergram").
* the bound then grows with the sample's age at the frequency tolerance ``PHI`` = 15 ppm (RFC
  5905, section 7.2: two free-running clocks drift apart by at most that much).

:class:`ClockPeer` carries the stamps on messages that already flow both ways (Hello/Welcome,
heartbeats) in NTP's symmetric mode: each message carries ``org`` (the peer's last transmit
stamp we received), ``rec`` (when we received it, our clock) and ``xmt`` (now, our clock), so each
side gets a sample per exchange, without probe messages. Event time (``t_ns``) is never touched:
this only relates two hosts' wall clocks, for cross-host latency and the future-timestamp guard.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_WINDOW", "PHI_PPM", "DEFAULT_MAX_HOLD_NS", "ClockSampleError", "ClockSample",
    "ClockEstimate", "ClockFilter", "Stamps", "StampsLike", "ClockPeer", "ReportGate",
    "offset_and_rtt",
]

#: Samples kept by the filter: NTP's clock-filter register has 8 stages (RFC 5905 section 10,
#: NSTAGE). With heartbeats every 0.5 s that is the last 4 s.
DEFAULT_WINDOW = 8
#: Frequency tolerance in parts per million (RFC 5905 section 7.2, PHI = 15e-6 s/s): how fast the
#: error bound of a held sample grows.
PHI_PPM = 15
#: A received stamp is echoed only if we answer within this long (2 s at 15 ppm adds at most
#: 30 us of frequency error to the sample). Longer holds give no sample.
DEFAULT_MAX_HOLD_NS = 2_000_000_000


class ClockSampleError(ValueError):
    """Four stamps that cannot come from one exchange (negative round trip or hold time)."""


def offset_and_rtt(t1: int, t2: int, t3: int, t4: int) -> tuple[int, int]:
    """``(offset_ns, rtt_ns)`` of one exchange (formulas above; ns, integers).

    ``offset_ns`` is the server's clock minus the client's, rounded toward minus infinity (the
    exact value is a multiple of 0.5 ns).
    """
    return ((t2 - t1) + (t3 - t4)) // 2, (t4 - t1) - (t3 - t2)


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One exchange: ``t1``/``t4`` client wall clock, ``t2``/``t3`` server wall clock (ns);
    ``at_ns`` the client's monotonic clock when ``t4`` was taken (for ageing only).

    Raises:
        ClockSampleError: ``t3 < t2`` (the server answered before it received) or a negative
            round trip (a clock stepped during the exchange, or mismatched stamps).
    """

    t1: int
    t2: int
    t3: int
    t4: int
    at_ns: int = 0

    def __post_init__(self) -> None:
        if self.t3 < self.t2:
            raise ClockSampleError(f"server hold time is negative ({self.t3 - self.t2} ns)")
        if self.rtt_ns < 0:
            raise ClockSampleError(f"round trip is negative ({self.rtt_ns} ns)")

    @property
    def offset_ns(self) -> int:
        return offset_and_rtt(self.t1, self.t2, self.t3, self.t4)[0]

    @property
    def rtt_ns(self) -> int:
        return offset_and_rtt(self.t1, self.t2, self.t3, self.t4)[1]


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """The peer's clock relative to ours.

    Attributes:
        offset_ns: peer wall clock minus local wall clock (ns). Positive: the peer is ahead.
        rtt_ns: round trip of the sample the estimate comes from (ns).
        error_ns: bound on ``|offset_ns - true offset|``: ``ceil(rtt_ns / 2)`` plus
            ``PHI_PPM`` of the sample's age.
        samples: samples in the window the estimate was chosen from.
        age_ns: local monotonic time since that sample was taken.
    """

    offset_ns: int
    rtt_ns: int
    error_ns: int
    samples: int
    age_ns: int = 0

    def to_local_ns(self, peer_wall_ns: int) -> int:
        """A wall-clock stamp taken on the peer, on our wall clock."""
        return peer_wall_ns - self.offset_ns

    def to_peer_ns(self, local_wall_ns: int) -> int:
        """A wall-clock stamp taken here, on the peer's wall clock."""
        return local_wall_ns + self.offset_ns

    def latency_ns(self, sent_peer_wall_ns: int, received_local_wall_ns: int) -> int:
        """Cross-host latency: stamped on the peer at ``sent``, seen here at ``received``
        (each on its own host's wall clock); uncertain by ``error_ns``."""
        return received_local_wall_ns - self.to_local_ns(sent_peer_wall_ns)

    def fields(self) -> dict[str, int]:
        """Trace fields for a ``member`` record: ``clock_offset_ns``, ``rtt_ns``,
        ``clock_error_ns``, ``clock_samples``."""
        return {"clock_offset_ns": self.offset_ns, "rtt_ns": self.rtt_ns,
                "clock_error_ns": self.error_ns, "clock_samples": self.samples}


def _error_ns(rtt_ns: int, age_ns: int) -> int:
    return (rtt_ns + 1) // 2 + (max(age_ns, 0) * PHI_PPM + 999_999) // 1_000_000


class ClockFilter:
    """Minimum-RTT filter over the last ``window`` samples, none older than ``max_age_ns``.

    Args:
        window: samples kept (>= 1; default NTP's 8).
        max_age_ns: samples older than this (local monotonic, by ``ClockSample.at_ns``) are
            ignored by :meth:`estimate`; ``None``: count only. Bound it where clocks may be
            stepped or drift fast: the window then follows the clock.
    Raises:
        ValueError: ``window < 1`` or ``max_age_ns <= 0``.
    """

    def __init__(self, window: int = DEFAULT_WINDOW, max_age_ns: int | None = None) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if max_age_ns is not None and max_age_ns <= 0:
            raise ValueError("max_age_ns must be > 0")
        self.window = window
        self.max_age_ns = max_age_ns
        self._samples: deque[ClockSample] = deque(maxlen=window)
        #: every sample ever added
        self.added = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: ClockSample) -> ClockEstimate:
        """Keep ``sample`` (the oldest one leaves a full window); the estimate as of it."""
        self._samples.append(sample)
        self.added += 1
        estimate = self.estimate(sample.at_ns)
        assert estimate is not None
        return estimate

    def estimate(self, now_ns: int | None = None) -> ClockEstimate | None:
        """The estimate at local monotonic ``now_ns`` (default: the newest sample's time), or
        ``None`` with no (fresh enough) sample. Ties on RTT go to the newest sample."""
        if not self._samples:
            return None
        now = self._samples[-1].at_ns if now_ns is None else now_ns
        fresh = [s for s in self._samples
                 if self.max_age_ns is None or now - s.at_ns <= self.max_age_ns]
        if not fresh:
            return None
        best = fresh[0]
        for s in fresh[1:]:
            if s.rtt_ns <= best.rtt_ns:
                best = s
        age = now - best.at_ns
        return ClockEstimate(best.offset_ns, best.rtt_ns, _error_ns(best.rtt_ns, age),
                             len(fresh), age)


@dataclass(frozen=True, slots=True)
class Stamps:
    """The three stamps a message carries (RFC 5905 packet fields; ns, sender's wall clock for
    ``xmt``/``rec``, 0 = none).

    Attributes:
        org: the ``xmt`` of the peer's message we are answering (the peer's clock), or 0.
        rec: when that message arrived here (our clock), or 0.
        xmt: when this message leaves (our clock).
    """

    org: int
    rec: int
    xmt: int


class StampsLike(Protocol):
    """Anything with the three stamps (:class:`Stamps`, the wire's ``ClockStamps``)."""

    @property
    def org(self) -> int: ...

    @property
    def rec(self) -> int: ...

    @property
    def xmt(self) -> int: ...


class ClockPeer:
    """The NTP symmetric-mode on-wire state for one peer, and its clock filter.

    For every outgoing message that carries clock stamps (Hello, Welcome, Heartbeat) call
    :meth:`stamp`; for every incoming one, :meth:`receive`. Each received message whose ``org``
    is a stamp we sent yields one sample. Both sides run a ``ClockPeer``; each then knows the
    other's offset (the two estimates are opposite, within their error bounds).

    A received message is echoed once, on our next stamped message, and only within
    ``max_hold_ns``; an ``org`` we did not send recently (a stale or duplicated message) is
    counted in :attr:`bogus` and ignored, as are stamps giving a negative round trip.
    """

    def __init__(self, clock_filter: ClockFilter | None = None, *, remember: int = 16,
                 max_hold_ns: int = DEFAULT_MAX_HOLD_NS) -> None:
        self.filter = clock_filter if clock_filter is not None else ClockFilter()
        self.max_hold_ns = max_hold_ns
        self._sent: deque[int] = deque(maxlen=remember)
        self._peer_xmt = 0
        self._rec = 0
        self._rec_mono = 0
        #: messages whose stamps gave no sample although they carried ``org``
        self.bogus = 0

    def stamp(self, now_wall_ns: int, now_mono_ns: int) -> Stamps:
        """Stamps for a message leaving now (``now_wall_ns`` CLOCK_REALTIME, ``now_mono_ns``
        CLOCK_MONOTONIC, both ns)."""
        org = rec = 0
        if self._peer_xmt and now_mono_ns - self._rec_mono <= self.max_hold_ns:
            org, rec = self._peer_xmt, self._rec
        self._peer_xmt = 0  # echo once
        self._sent.append(now_wall_ns)
        return Stamps(org, rec, now_wall_ns)

    def receive(self, stamps: StampsLike, now_wall_ns: int,
                now_mono_ns: int) -> ClockSample | None:
        """Take a message's stamps on arrival; the new sample (also added to :attr:`filter`) or
        ``None``."""
        if stamps.xmt:
            self._peer_xmt, self._rec, self._rec_mono = stamps.xmt, now_wall_ns, now_mono_ns
        if not (stamps.org and stamps.rec and stamps.xmt):
            return None
        if stamps.org not in self._sent:
            self.bogus += 1
            return None
        self._sent.remove(stamps.org)  # one sample per stamp we sent
        try:
            sample = ClockSample(stamps.org, stamps.rec, stamps.xmt, now_wall_ns, now_mono_ns)
        except ClockSampleError:
            self.bogus += 1
            return None
        self.filter.add(sample)
        return sample

    def estimate(self, now_mono_ns: int | None = None) -> ClockEstimate | None:
        """The filter's estimate of the peer's clock (see :meth:`ClockFilter.estimate`)."""
        return self.filter.estimate(now_mono_ns)


#: A link's clock is first reported once its filter holds this many samples (heartbeats every
#: 0.5 s: 2 s after joining), then every :data:`REPORT_EVERY_NS`.
REPORT_MIN_SAMPLES = 4
REPORT_EVERY_NS = 60_000_000_000


class ReportGate:
    """When to trace a link's clock estimate: once it rests on ``min_samples`` samples, then
    every ``every_ns`` (local monotonic ns)."""

    def __init__(self, min_samples: int = REPORT_MIN_SAMPLES,
                 every_ns: int = REPORT_EVERY_NS) -> None:
        self.min_samples = min_samples
        self.every_ns = every_ns
        self._last: int | None = None

    def resting(self, now_mono_ns: int) -> bool:
        """Reported less than ``every_ns`` ago: :meth:`due` is false whatever the estimate
        (callers skip computing one)."""
        return self._last is not None and now_mono_ns - self._last < self.every_ns

    def due(self, estimate: ClockEstimate | None, now_mono_ns: int) -> bool:
        if estimate is None or estimate.samples < self.min_samples:
            return False
        if self._last is not None and now_mono_ns - self._last < self.every_ns:
            return False
        self._last = now_mono_ns
        return True
