"""One link's clock: NTP stamps on the messages a link already carries, and the estimate.

The frame bus (daemon <-> each extractor: Hello, Welcome, heartbeats both ways) and the
extractor -> fusion heartbeats (fusion answers each) carry :class:`~momentbus.ipc.schema.ClockStamps`;
each end keeps a :class:`LinkClock` per peer and so knows the peer's wall-clock offset and the
round trip (:mod:`momentbus.ipc.clock`: symmetric mode, minimum-RTT filter over the last 8
samples). Used where two hosts' wall clocks meet: an extractor's capture -> send latency (the
capture stamp is the daemon's), fusion's capture -> arrival figure, and the ``member`` trace
records (``event: clock``). Event time (``t_ns``) is never touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .clock import ClockEstimate, ClockPeer, ReportGate
from .schema import ClockStamps


class LinkClock:
    """The clock state of one peer (thread-safe: an extractor's heartbeat thread feeds the one
    its main loop reads).

    Args:
        wall_ns, mono_ns: this host's CLOCK_REALTIME and CLOCK_MONOTONIC (injected for tests).
    """

    def __init__(self, wall_ns: Callable[[], int] = time.time_ns,
                 mono_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._wall = wall_ns
        self._mono = mono_ns
        self._peer = ClockPeer()
        self._gate = ReportGate()
        self._lock = threading.Lock()

    def stamps(self) -> ClockStamps:
        """Stamps for a message leaving now."""
        with self._lock:
            s = self._peer.stamp(self._wall(), self._mono())
        return ClockStamps(org=s.org, rec=s.rec, xmt=s.xmt)

    def receive(self, stamps: ClockStamps | None) -> None:
        """Take the stamps of a message that arrived now (``None``: the peer sends none)."""
        if stamps is None:
            return
        with self._lock:
            self._peer.receive(stamps, self._wall(), self._mono())

    def estimate(self) -> ClockEstimate | None:
        """The peer's wall clock minus ours, now (``None`` before the first sample)."""
        with self._lock:
            return self._peer.estimate(self._mono())

    def report_due(self) -> ClockEstimate | None:
        """The estimate when it is time to trace it (first once it rests on 4 samples, then
        every minute), else ``None``."""
        now = self._mono()
        if self._gate.resting(now):  # the usual case: no estimate to compute
            return None
        with self._lock:
            est = self._peer.estimate(now)
            return est if self._gate.due(est, now) else None

    def to_local_ns(self, peer_wall_ns: int) -> int:
        """A wall-clock stamp taken by the peer, on our wall clock (unchanged before the first
        sample: no offset known)."""
        est = self.estimate()
        return peer_wall_ns if est is None else est.to_local_ns(peer_wall_ns)
