"""Prometheus metrics built from trace records, and the ``/metrics``, ``/healthz``, ``/readyz``
endpoint.

Every number here comes from a trace record (``traces/records.py``): a role feeds
:meth:`TraceMetrics.observe` its own records, the ``momentbus run`` parent the merged records of
the whole local run (the collector's ``on_record``). The metrics are therefore the trace, counted:
``momentbus trace summary`` on the same records gives the same totals (tested).

Metrics live in the registry the :class:`TraceMetrics` owns; names follow the Prometheus
conventions (``momentbus_`` prefix, base units, ``_total`` counters, ``_seconds`` durations).
Each is listed as ``name`` [labels] (unit): the records it comes from.

Counters (unit: events, frames or records, as named):

* ``momentbus_trace_records_total`` [record] (records): every record, by type (``other`` for a
  type this module does not know).
* ``momentbus_trace_records_malformed_total`` [reason] (records): records that could not be used:
  ``not_an_object``, ``no_type``, ``bad_field``.
* ``momentbus_frames_read_total`` [component] (frames): ``timing`` records with stage=read.
* ``momentbus_frames_processed_total`` [component] (frames or chunks): ``timing`` records with
  ``process_ms``.
* ``momentbus_frames_dropped_total`` [group, reason] (frames): ``frame_drop``, one per seq.
* ``momentbus_bad_messages_total`` [component, error_type] (messages): ``bad_message``.
* ``momentbus_errors_total`` [component, where] (errors): ``error``.
* ``momentbus_triggers_total`` [rule] (triggers): ``trigger``.
* ``momentbus_clips_written_total`` [rule] (clips): ``clip``.
* ``momentbus_clips_failed_total`` [rule] (clips): ``error`` with where=clip.
* ``momentbus_late_observations_total`` [group] (observations): ``late_obs``.
* ``momentbus_future_observations_total`` [group] (observations): ``future_obs``.
* ``momentbus_member_events_total`` [component, event] (events): ``member``.
* ``momentbus_source_reconnects_total`` [source_id] (reconnects): ``source`` event=reconnect.

Histograms (seconds):

* ``momentbus_processing_seconds`` [component, stage]: ``timing`` ``read_ms`` (stage=read) and
  ``process_ms`` (stage=process).
* ``momentbus_latency_seconds`` [component]: ``timing`` ``latency_ms``.
* ``momentbus_sync_delay_seconds`` [group, waiting_for]: ``sync_delay`` ``delay_ms``.
* ``momentbus_clip_cut_seconds`` (no labels): ``clip`` ``cut_ms``.

Gauges:

* ``momentbus_watermark_lag_seconds`` [group] (seconds): ``watermark`` ``lag_ms``.
* ``momentbus_member_state`` [component, group, member, state] (0 or 1): ``member`` events.
* ``momentbus_source_connected`` [source_id] (0 or 1): ``source``.
* ``momentbus_clock_offset_seconds`` [component, peer, host] (seconds, signed): ``member``
  event=clock ``clock_offset_ns`` (ipc/clock.py: the peer's wall clock minus this one's; host is
  the peer's address where the observer knows it, else empty).
* ``momentbus_clock_rtt_seconds`` [component, peer, host] (seconds): the same records' ``rtt_ns``.
* ``momentbus_role_finished`` [component] (0 or 1): ``summary``.

With ``process_metrics=True`` the registry also holds prometheus_client's ``process_*`` metrics
of this process (CPU seconds, resident memory, open fds, start time).

Definitions and units:

* ``momentbus_frames_dropped_total`` counts frames (``len(seqs)``, 1 when a record has no seqs),
  the same count ``trace summary`` gives under ``drops``; ``reason`` is the record's (``latest``,
  ``no_member``, ``member_lost``, ``member_lost_requeued``, ``no_shm_slot``, ``queue_full``...).
* ``momentbus_bad_messages_total``: a role traces the first malformed message of each error type
  (one record with ``error_type``) and, at close, the totals (``counts``: type -> n); the counter
  takes the larger of what it counted and the reported total, so it never double counts.
* ``momentbus_processing_seconds``: ``stage="process"`` is an extractor's ``process_ms`` (the
  backend's compute time for one frame or chunk); ``stage="read"`` the daemon's ``read_ms`` (demux
  and decode of one frame). ``momentbus_latency_seconds`` is ``latency_ms``: source capture wall
  time to the end of processing (CLOCK_REALTIME on both ends, so cross-host values carry the
  hosts' clock offset).
* ``momentbus_sync_delay_seconds``: how long fusion held an observation of ``group`` until every
  group it had to wait for had a watermark past it, once per group waited for (``waiting_for``);
  only observations that waited are recorded.
* ``momentbus_member_state``: 1 for a member's current state as seen by ``component`` (the
  observer: ``daemon`` and ``fusion`` see others; an extractor sees itself), 0 for the other
  states. States: ``joined`` (events join, ready, rejoin), ``idle`` (idle), ``left`` (leave,
  end).
* ``momentbus_source_connected``: 1 after a ``source`` record without ``event`` (the source was
  opened) or with event connect/reconnect, 0 after disconnect/stall.
* ``momentbus_role_finished``: 1 once a role wrote its end-of-run ``summary`` record.

Record shapes accepted here that the roles do not write yet (live sources, watermarks, the
clock-offset probe)::

    {"record": "source", "event": "connect" | "disconnect" | "stall" | "reconnect",
     "source_id": S, "generation": N}
    {"record": "member", "event": ..., "host": H, "clock_offset_ns": int, "rtt_ns": int}
    {"record": "watermark", "group": G, "lag_ms": float, "watermark_ns": int}

``lag_ms`` is how far the group's watermark is behind the newest event time fusion has seen from
any group (file sources) or behind the source clock's now (live sources); >= 0.

Histogram buckets (seconds):

* processing and read: 0.5 ms to 10 s. Measured on the sample (2 cores): quality p50 0.6 ms,
  face p50 34 ms / max 169 ms (first frame), daemon reads ~1-20 ms; speech transcribes a closed
  utterance in 0.5-4 s. Roughly 1-2.5-5 steps keep each a separate bucket.
* end-to-end latency: 1 ms to 30 s: capture to result includes the queue in front of a slow
  extractor (a file source with ``every`` delivery queues whole seconds) and speech utterances.
* sync delay: 1 ms to 5 s (the issue's range): on the sample, quality observations waited for
  face p50 356 ms, max 458 ms (face is 60x slower and the file is read as fast as the slowest
  group); an idle group (2 s of silence) is absent and nobody waits for it, so 5 s bounds it.
* clip cut: 10 ms to 30 s: ``copy`` remux of a 5 s window took 27 ms on the sample; re-encoding
  (``exact``) and long windows take seconds.

Readiness (:func:`readiness`): ready when every expected group has at least one member whose
current state is ``joined`` (the state from the newest ``member`` record about it, whichever role
wrote it: in a merged run the daemon, fusion and the extractor itself all report), and, for a live
source, every source seen is connected (and at least one was seen). At the end of a run members
leave, so ``/readyz`` goes back to 503.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               make_wsgi_app)
from prometheus_client.exposition import ThreadingWSGIServer

from .binds import BindError, parse_bind
from .records import RECORD_LEVELS, SOURCE_DOWN_EVENTS, SOURCE_UP_EVENTS

__all__ = [
    "LATENCY_BUCKETS", "PROCESSING_BUCKETS", "SYNC_DELAY_BUCKETS", "CLIP_CUT_BUCKETS",
    "MEMBER_STATES", "MetricsServer", "Readiness", "TraceMetrics", "readiness", "serve_metrics",
]

#: Seconds; see the module doc for the measurements behind each choice.
PROCESSING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)
SYNC_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CLIP_CUT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: ``member`` event -> state of ``momentbus_member_state``; other events change no state.
_EVENT_STATE = {"join": "joined", "ready": "joined", "rejoin": "joined", "idle": "idle",
                "leave": "left", "end": "left", "lost": "left", "superseded": "left"}

MEMBER_STATES = ("joined", "idle", "left")

#: Record types counted under their own name in ``momentbus_trace_records_total``.
_KNOWN_RECORDS = frozenset(RECORD_LEVELS)
#: Label values are cut to this length (a label is an index, not a store).
_LABEL_MAX = 120


class _Malformed(ValueError):
    """A record field with a type or value that cannot be used (counted, never raised out)."""


def _label(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return str(value)[:_LABEL_MAX]


def _seconds(value: Any, scale: float = 1e-3) -> float:
    """A record duration (ms by default) as seconds; rejects non-numbers, NaN, negatives."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"not a number: {value!r}")
    s = float(value) * scale
    if math.isnan(s) or math.isinf(s) or s < 0:
        raise _Malformed(f"not a duration: {value!r}")
    return s


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Malformed(f"not a number: {value!r}")
    return float(value)


@dataclass(frozen=True)
class Readiness:
    """The answer of ``/readyz``: ``ready`` and a one-line reason for a person."""

    ready: bool
    reason: str


def readiness(members: Mapping[str, tuple[str, str]], sources: Mapping[str, bool],
              expected_groups: Iterable[str], live_source: bool = False) -> Readiness:
    """Decide readiness from membership and source state (pure; see :meth:`TraceMetrics.readiness`).

    Args:
        members: ``member -> (group, state)``, state one of :data:`MEMBER_STATES`: the state
            the newest ``member`` record about that member gave, whoever wrote it.
        sources: ``source_id -> connected``.
        expected_groups: groups that must each have a joined member.
        live_source: also require a connected source (and at least one seen).
    """
    joined = {g for (g, state) in members.values() if state == "joined"}
    waiting = [g for g in expected_groups if g not in joined]
    problems = []
    if waiting:
        problems.append("waiting for group(s) " + ", ".join(waiting))
    if live_source:
        down = sorted(s or "?" for s, up in sources.items() if not up)
        if not sources:
            problems.append("source not connected yet")
        elif down:
            problems.append("source(s) not connected: " + ", ".join(down))
    if problems:
        return Readiness(False, "; ".join(problems))
    return Readiness(True, "ready" + (f": {', '.join(sorted(joined))} joined" if joined else ""))


class TraceMetrics:
    """Prometheus metrics updated from trace records (see the module doc for every metric).

    Owns its :class:`prometheus_client.CollectorRegistry` (:attr:`registry`), so several can live
    in one process (tests, the run parent next to a role) without clashing on names.

    Args:
        process_metrics: also export this process's ``process_*`` metrics (CPU seconds, resident
            memory, open fds, start time) from :class:`prometheus_client.ProcessCollector`.
    """

    def __init__(self, *, process_metrics: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        r = self.registry
        self.records = Counter("momentbus_trace_records", "Trace records observed, by type",
                               ["record"], registry=r)
        self.malformed = Counter("momentbus_trace_records_malformed",
                                 "Trace records that could not be used, by reason",
                                 ["reason"], registry=r)
        self.frames_read = Counter("momentbus_frames_read", "Frames read from the source "
                                   "(timing records with stage=read)", ["component"], registry=r)
        self.frames_processed = Counter("momentbus_frames_processed",
                                        "Frames (or chunks) processed, per component",
                                        ["component"], registry=r)
        self.frames_dropped = Counter("momentbus_frames_dropped",
                                      "Frames dropped (one per seq), by group and reason",
                                      ["group", "reason"], registry=r)
        self.bad_messages = Counter("momentbus_bad_messages", "Malformed messages received",
                                    ["component", "error_type"], registry=r)
        self.errors = Counter("momentbus_errors", "Error records", ["component", "where"],
                              registry=r)
        self.triggers = Counter("momentbus_triggers", "Triggers fired, by rule", ["rule"],
                                registry=r)
        self.clips_written = Counter("momentbus_clips_written", "Clips written, by rule",
                                     ["rule"], registry=r)
        self.clips_failed = Counter("momentbus_clips_failed", "Clips that failed, by rule",
                                    ["rule"], registry=r)
        self.late = Counter("momentbus_late_observations",
                            "Observations older than what was already released", ["group"],
                            registry=r)
        self.future = Counter("momentbus_future_observations",
                              "Observations rejected for a timestamp beyond the future guard",
                              ["group"], registry=r)
        self.member_events = Counter("momentbus_member_events", "Membership events, by observer",
                                     ["component", "event"], registry=r)
        self.source_reconnects = Counter("momentbus_source_reconnects",
                                         "Live source reconnects", ["source_id"], registry=r)
        self.processing = Histogram("momentbus_processing_seconds",
                                    "Time to read (daemon) or process (extractor) one frame",
                                    ["component", "stage"], buckets=PROCESSING_BUCKETS,
                                    registry=r)
        self.latency = Histogram("momentbus_latency_seconds",
                                 "Capture (wall clock) to end of processing", ["component"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.sync_delay = Histogram("momentbus_sync_delay_seconds",
                                    "Time fusion held an observation of group until "
                                    "waiting_for's watermark passed it",
                                    ["group", "waiting_for"], buckets=SYNC_DELAY_BUCKETS,
                                    registry=r)
        self.clip_cut = Histogram("momentbus_clip_cut_seconds", "Time to cut one clip",
                                  buckets=CLIP_CUT_BUCKETS, registry=r)
        self.watermark_lag = Gauge("momentbus_watermark_lag_seconds",
                                   "How far a group's watermark is behind the newest event time",
                                   ["group"], registry=r)
        self.member_state = Gauge("momentbus_member_state",
                                  "1 for a member's current state as seen by component",
                                  ["component", "group", "member", "state"], registry=r)
        self.source_connected = Gauge("momentbus_source_connected",
                                      "1 while the source is connected", ["source_id"],
                                      registry=r)
        self.clock_offset = Gauge("momentbus_clock_offset_seconds",
                                  "Estimated wall-clock offset of a peer's host, seen by "
                                  "component (NTP-style, peer minus here)",
                                  ["component", "peer", "host"], registry=r)
        self.clock_rtt = Gauge("momentbus_clock_rtt_seconds",
                               "Round-trip time of the clock-offset probe on a link",
                               ["component", "peer", "host"], registry=r)
        self.role_finished = Gauge("momentbus_role_finished",
                                   "1 once a role wrote its end-of-run summary", ["component"],
                                   registry=r)
        if process_metrics:
            ProcessCollector(registry=r)
        # state behind the gauges and the reconciled counters (guarded by _lock)
        self._members: dict[str, tuple[str, str]] = {}
        self._sources: dict[str, bool] = {}
        self._bad_counted: dict[tuple[str, str], float] = {}

    # -- updating ---------------------------------------------------------------------------

    def observe(self, record: Any) -> None:
        """Update the metrics from one trace record (a dict as in trace.jsonl).

        Thread-safe. Never raises on a bad record: it is counted in
        ``momentbus_trace_records_malformed_total`` (``not_an_object``, ``no_type``,
        ``bad_field``) and otherwise ignored. A record of a type this class does not know is
        counted under ``record="other"`` and changes nothing else.
        """
        if not isinstance(record, Mapping):
            self.malformed.labels("not_an_object").inc()
            return
        kind = record.get("record")
        if not isinstance(kind, str) or not kind:
            self.malformed.labels("no_type").inc()
            return
        handler = self._handlers.get(kind)
        with self._lock:
            self.records.labels(kind if kind in _KNOWN_RECORDS else "other").inc()
            if handler is None:
                return
            try:
                handler(self, record, _label(record.get("component"), "?"))
            except Exception:  # a field of the wrong type or value: count it, never raise
                self.malformed.labels("bad_field").inc()

    def observe_many(self, records: Iterable[Any]) -> None:
        """:meth:`observe` each record in order."""
        for r in records:
            self.observe(r)

    def _timing(self, r: Mapping[str, Any], comp: str) -> None:
        if r.get("stage") == "read":
            if "read_ms" in r:
                self.processing.labels(comp, "read").observe(_seconds(r["read_ms"]))
            self.frames_read.labels(comp).inc()
        elif "process_ms" in r:
            seconds = _seconds(r["process_ms"])
            latency = _seconds(r["latency_ms"]) if r.get("latency_ms") is not None else None
            self.processing.labels(comp, "process").observe(seconds)
            if latency is not None:
                self.latency.labels(comp).observe(latency)
            self.frames_processed.labels(comp).inc()

    def _frame_drop(self, r: Mapping[str, Any], comp: str) -> None:
        seqs = r.get("seqs")
        n = len(seqs) if isinstance(seqs, list) and seqs else 1
        self.frames_dropped.labels(_label(r.get("group"), comp), _label(r.get("reason"),
                                                                        "unknown")).inc(n)

    def _bad_message(self, r: Mapping[str, Any], comp: str) -> None:
        counts = r.get("counts")
        if isinstance(counts, Mapping):  # totals at close: catch up, never double count
            for error_type, total in counts.items():
                self._catch_up(comp, _label(error_type), _number(total))
        else:
            key = (comp, _label(r.get("error_type"), "unknown"))
            self._bad_counted[key] = self._bad_counted.get(key, 0) + 1
            self.bad_messages.labels(*key).inc()

    def _catch_up(self, comp: str, error_type: str, total: float) -> None:
        key = (comp, error_type)
        seen = self._bad_counted.get(key, 0)
        if total > seen:
            self.bad_messages.labels(*key).inc(total - seen)
            self._bad_counted[key] = total

    def _error(self, r: Mapping[str, Any], comp: str) -> None:
        where = _label(r.get("where"), "unknown")
        self.errors.labels(comp, where).inc()
        if where == "clip":
            self.clips_failed.labels(_label(r.get("rule"), "unknown")).inc()

    def _trigger(self, r: Mapping[str, Any], comp: str) -> None:
        self.triggers.labels(_label(r.get("rule"), "unknown")).inc()

    def _clip(self, r: Mapping[str, Any], comp: str) -> None:
        cut = _seconds(r["cut_ms"]) if r.get("cut_ms") is not None else None
        self.clips_written.labels(_label(r.get("rule"), "unknown")).inc()
        if cut is not None:
            self.clip_cut.observe(cut)

    def _late(self, r: Mapping[str, Any], comp: str) -> None:
        self.late.labels(_label(r.get("group") or r.get("member"), "unknown")).inc()

    def _future(self, r: Mapping[str, Any], comp: str) -> None:
        self.future.labels(_label(r.get("group") or r.get("member"), "unknown")).inc()

    def _sync_delay(self, r: Mapping[str, Any], comp: str) -> None:
        seconds = _seconds(r.get("delay_ms"))
        waiting = r.get("waiting_for")
        if not isinstance(waiting, list):
            raise _Malformed("waiting_for is not a list")
        group = _label(r.get("group"), "unknown")
        for who in waiting or ["unknown"]:
            self.sync_delay.labels(group, _label(who)).observe(seconds)

    def _member(self, r: Mapping[str, Any], comp: str) -> None:
        event = _label(r.get("event"), "unknown")
        if event == "clock" and r.get("clock_offset_ns") is not None:
            link = (comp, _label(r.get("peer"), "?"), _label(r.get("host")))
            self.clock_offset.labels(*link).set(_number(r["clock_offset_ns"]) / 1e9)
            if r.get("rtt_ns") is not None:
                self.clock_rtt.labels(*link).set(_seconds(r["rtt_ns"], 1e-9))
        self.member_events.labels(comp, event).inc()
        state = _EVENT_STATE.get(event)
        if state is None:
            return
        member = _label(r.get("member"), comp)  # an extractor reports about itself
        group = _label(r.get("group"), "unknown")
        self._members[member] = (group, state)
        for s in MEMBER_STATES:
            self.member_state.labels(comp, group, member, s).set(1 if s == state else 0)

    def _source(self, r: Mapping[str, Any], comp: str) -> None:
        source = _label(r.get("source_id"))
        event = r.get("event")
        if event in SOURCE_UP_EVENTS:
            connected = True
        elif event in SOURCE_DOWN_EVENTS:
            connected = False
        elif isinstance(event, str):
            return
        else:
            raise _Malformed(f"source event {event!r} is not a string")
        if event == "reconnect":
            self.source_reconnects.labels(source).inc()
        self._sources[source] = connected
        self.source_connected.labels(source).set(1 if connected else 0)

    def _watermark(self, r: Mapping[str, Any], comp: str) -> None:
        if r.get("lag_ms") is not None:  # None: the group's watermark or newest time unknown
            self.watermark_lag.labels(_label(r.get("group"), "unknown")).set(
                _seconds(r["lag_ms"]))

    def _summary(self, r: Mapping[str, Any], comp: str) -> None:
        bad = r.get("bad_messages")
        if isinstance(bad, Mapping):
            for error_type, total in bad.items():
                self._catch_up(comp, _label(error_type), _number(total))
        self.role_finished.labels(comp).set(1)

    _handlers: dict[str, Callable[["TraceMetrics", Mapping[str, Any], str], None]] = {
        "timing": _timing, "frame_drop": _frame_drop, "bad_message": _bad_message,
        "error": _error, "trigger": _trigger, "clip": _clip, "late_obs": _late,
        "future_obs": _future, "sync_delay": _sync_delay, "member": _member, "source": _source,
        "watermark": _watermark, "summary": _summary,
    }

    # -- reading ----------------------------------------------------------------------------

    def members(self) -> dict[str, tuple[str, str]]:
        """A snapshot: ``member -> (group, state)`` from the newest record about each."""
        with self._lock:
            return dict(self._members)

    def sources(self) -> dict[str, bool]:
        """A snapshot: ``source_id -> connected``."""
        with self._lock:
            return dict(self._sources)

    def readiness(self, expected_groups: Iterable[str] = (),
                  live_source: bool = False) -> Readiness:
        """:func:`readiness` over this object's current membership and source state."""
        return readiness(self.members(), self.sources(), list(expected_groups), live_source)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """A sample's current value by its exposition name (e.g.
        ``momentbus_frames_read_total``), or ``None`` if it has no such sample."""
        return self.registry.get_sample_value(name, dict(labels or {}))

    def total(self, name: str, **match: str) -> float:
        """Sum of every sample of ``name`` whose labels include ``match`` (0 if none)."""
        out = 0.0
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                    out += s.value
        return out


# -- the HTTP endpoint ------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (a scrape every few seconds would drown the role's log)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class MetricsServer:
    """A running ``/metrics``, ``/healthz``, ``/readyz`` endpoint (see :func:`serve_metrics`).

    Attributes:
        host: the bound host; port: the bound port (the real one when 0 was asked for).
    """

    def __init__(self, server: ThreadingWSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host = str(server.server_address[0])
        self.port = int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(bind: str, metrics: TraceMetrics, *, expected_groups: Iterable[str] = (),
                  live_source: bool = False,
                  ready: Callable[[], Readiness] | None = None) -> MetricsServer:
    """Serve ``metrics`` over HTTP on ``bind`` (``HOST:PORT``) from a background thread.

    * ``GET /metrics``: Prometheus text format (OpenMetrics when the scraper asks for it; gzip
      when accepted), from ``metrics.registry``.
    * ``GET /healthz``: 200 ``ok`` while the process is alive (this thread answers).
    * ``GET /readyz``: 200 with ``ready...`` or 503 with the reason, one line of plain text, from
      ``ready()`` (default: ``metrics.readiness(expected_groups, live_source)``).

    Port 0 binds a free port; :attr:`MetricsServer.port` says which. The server runs on a daemon
    thread (one thread per request, as ``prometheus_client.start_http_server``); ``close()``
    stops it and frees the port.

    Raises:
        BindError: a malformed address, or one that cannot be bound (in use, not this host's).
    """
    host, port = parse_bind(bind)
    groups = list(expected_groups)
    check = ready or (lambda: metrics.readiness(groups, live_source))
    prometheus_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return prometheus_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status, body = "200 OK", "ok\n"
        elif path == "/readyz":
            answer = check()
            status = "200 OK" if answer.ready else "503 Service Unavailable"
            body = answer.reason + "\n"
        elif path == "/":
            status, body = "200 OK", "momentbus: /metrics /healthz /readyz\n"
        else:
            status, body = "404 Not Found", "not found: try /metrics, /healthz or /readyz\n"
        data = body.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(data)))])
        return [data]

    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
    except OSError as e:
        raise BindError(f"{bind}: cannot bind ({e.strerror or e})") from None

    class _Server(ThreadingWSGIServer):
        address_family = family
        allow_reuse_address = True

    try:
        server = make_server(host, port, app, _Server, handler_class=_QuietHandler)
    except OSError as e:
        raise BindError(f"{bind}: cannot bind ({e.strerror or e})") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"metrics-{server.server_address[1]}", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
