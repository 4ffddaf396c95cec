"""What an ``OUT`` folder holds, read incrementally for ``momentbus review``.

An OUT folder (written by ``momentbus run`` or by ``momentbus fusion`` + ``momentbus clip``):

* ``triggers.jsonl``: one TRIG per line (``rule``, ``rule_kind``, ``t_event_ns``, ``t_start_ns``,
  ``t_end_ns``, ``score``, ``evidence``, ``missing``); the trigger list comes from here, or from
  the ``trigger`` records of ``trace.jsonl`` when this file is missing.
* ``clips/*.mp4`` (or ``.mka``) with a sidecar ``*.json`` each (``clip``, ``requested``,
  ``actual``, ``trig``): a trigger's clip is the one whose sidecar's ``trig`` has the same
  ``(rule, t_event_ns)``.
* ``trace.jsonl``: trace records (``traces/records.py``), for the processing-time and
  sync-delay lanes, drops, late observations, clip failures and whether the run finished.

Files are read incrementally: each :meth:`OutFolder.refresh` reads only the bytes appended
since the last one, so a live run's page follows the files as they grow. A file that shrank or was
replaced (a new run into the same OUT) is read again from the start. A last line without its
newline is kept aside until it is complete (a line being written, or torn by a run cut short) and
reported; a complete line that is not a JSON object is counted as malformed and skipped.

Every time here is ``t_ns`` (integer nanoseconds on the source clock); durations are the records'
milliseconds. Nothing here raises on bad content: what is missing or wrong is listed in
:meth:`OutFolder.status` as sentences for the page.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import SOURCE_DOWN_EVENTS, SOURCE_UP_EVENTS
from .summary import percentile

__all__ = ["JsonlTail", "OutFolder", "CLIP_NAME"]

#: A clip or sidecar file name we serve: what ``clip.cutter.safe_name`` can produce, plus the
#: extension. Anything else (a path separator, a leading dot) is never a clip.
CLIP_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,200}$")
#: Media types of the clip containers the cutter writes.
CLIP_TYPES = {".mp4": "video/mp4", ".mka": "audio/x-matroska", ".mkv": "video/x-matroska"}
#: Bytes read per file per refresh at most (a huge trace is taken in steps, never all at once).
READ_STEP = 32 << 20
#: Standard trigger fields, shown in their own columns; any other key is listed generically.
TRIGGER_FIELDS = ("rule", "rule_kind", "source_id", "t_event_ns", "t_start_ns", "t_end_ns",
                  "score", "evidence", "missing")
#: Problems listed one by one before "... and N more".
MAX_LISTED = 5


class JsonlTail:
    """The JSON objects of one JSONL file, read from where the last :meth:`refresh` stopped.

    Attributes:
        records: parsed objects in file order (only dicts; anything else is ``malformed``).
        malformed: complete lines that were not a JSON object.
        pending: bytes of an incomplete last line (no newline yet and not valid JSON).
        exists: whether the file existed at the last refresh; size: its size then (bytes).
        generation: incremented each time the file is read again from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.malformed = 0
        self.pending = b""
        self.exists = False
        self.size = 0
        self.generation = 0
        self._offset = 0
        self._inode: tuple[int, int] | None = None

    @property
    def torn(self) -> int:
        """Bytes of an incomplete last line once the whole file was read (0 if none)."""
        return len(self.pending) if self._offset >= self.size else 0

    def _reset(self) -> None:
        self.records = []
        self.malformed = 0
        self.pending = b""
        self._offset = 0
        self.generation += 1

    def refresh(self) -> list[dict[str, Any]]:
        """Read what was appended; returns the new records (all of them after a reset, with
        :attr:`generation` incremented: callers rebuild what they derived)."""
        try:
            st = os.stat(self.path)
        except OSError:
            if self.exists:
                self._reset()
            self.exists, self.size, self._inode = False, 0, None
            return []
        inode = (st.st_dev, st.st_ino)
        if not self.exists or inode != self._inode or st.st_size < self._offset:
            if self._offset or self.records or self.pending:
                self._reset()
        self.exists, self.size, self._inode = True, st.st_size, inode
        if st.st_size == self._offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(READ_STEP)
        except OSError:
            return []
        self._offset += len(chunk)
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()
        new = [r for r in (self._parse(line) for line in lines) if r is not None]
        if self.pending:
            # a last line without its newline: take it if it is already a whole object
            try:
                obj = json.loads(self.pending)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                new.append(obj)
                self.pending = b""
        self.records.extend(new)
        return new

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        line = line.strip()
        if not line:
            return None
        try:
            obj = json.loads(line)
        except ValueError:
            self.malformed += 1
            return None
        if not isinstance(obj, dict):
            self.malformed += 1
            return None
        return obj


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _s(ns: int | None) -> str:
    return "?" if ns is None else f"{ns / 1e9:.2f} s"


@dataclass
class _TraceIndex:
    """What the page needs from trace.jsonl, built record by record."""

    source: dict[str, Any] = field(default_factory=dict)
    # component -> stage -> ([t_ns], [ms])
    timing: dict[str, dict[str, tuple[list[int], list[float]]]] = field(
        default_factory=lambda: defaultdict(dict))
    # "group>waiting_for" -> ([t_ns], [delay_ms])
    sync: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    read_t: dict[int, int] = field(default_factory=dict)  # seq -> t_ns of the daemon's reads
    drops: list[dict[str, Any]] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    clips: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    clip_errors: dict[tuple[str, int], str] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    # a live source: connected now (None: never said), reconnects, its last events
    connected: bool | None = None
    reconnects: int = 0
    source_events: list[dict[str, Any]] = field(default_factory=list)
    # "component -> peer" -> the newest clock estimate of that link (ipc/clock.py)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_t: int = 0
    reads: int = 0

    def add(self, r: dict[str, Any]) -> None:
        kind = r.get("record")
        if not isinstance(kind, str):
            return
        self.counts[kind] += 1
        comp = str(r.get("component", "?"))
        t = _int(r.get("t_ns"))
        if t is not None:
            self.max_t = max(self.max_t, t)
        if kind == "timing":
            stage = "read" if r.get("stage") == "read" else "process"
            ms = _num(r.get("read_ms" if stage == "read" else "process_ms"))
            if stage == "read":
                self.reads += 1
                if t is not None and _int(r.get("seq")) is not None:
                    self.read_t[r["seq"]] = t
            if t is not None and ms is not None:
                ts, vs = self.timing[comp].setdefault(stage, ([], []))
                ts.append(t)
                vs.append(ms)
        elif kind == "sync_delay":
            ms = _num(r.get("delay_ms"))
            waiting = r.get("waiting_for")
            if t is not None and ms is not None and isinstance(waiting, list):
                for who in waiting:
                    name = f"{r.get('group', '?')} waits for {who}"
                    ts, vs = self.sync.setdefault(name, ([], []))
                    ts.append(t)
                    vs.append(ms)
        elif kind == "frame_drop":
            raw = r.get("seqs")
            seqs = raw if isinstance(raw, list) else []
            self.drops.append({"group": str(r.get("group", comp)),
                               "reason": str(r.get("reason", "?")),
                               "seqs": [s for s in seqs if _int(s) is not None],
                               "stream": r.get("stream", "video")})
        elif kind == "late_obs":
            self.late.append({"group": str(r.get("group", r.get("member", "?"))), "t_ns": t,
                              "behind_ms": _num(r.get("behind_ms"))})
        elif kind == "error":
            self.errors.append({"component": comp, "where": r.get("where"),
                                "error": str(r.get("error", ""))})
            t_event = _int(r.get("t_event_ns"))
            if r.get("where") == "clip" and t_event is not None:
                self.clip_errors[(str(r.get("rule")), t_event)] = str(r.get("error", ""))
        elif kind == "trigger":
            self.triggers.append({k: v for k, v in r.items()
                                  if k not in ("record", "wall_ns", "component")})
        elif kind == "clip":
            t_event = _int(r.get("t_event_ns"))
            if t_event is not None:
                self.clips[(str(r.get("rule")), t_event)] = r
        elif kind == "source":
            self._source(r)
        elif kind == "member" and r.get("event") == "clock":
            offset, rtt = _int(r.get("clock_offset_ns")), _int(r.get("rtt_ns"))
            if offset is not None:
                self.links[f"{comp} -> {r.get('peer', '?')}"] = {
                    "host": r.get("host"), "offset_ms": offset / 1e6,
                    "rtt_ms": None if rtt is None else rtt / 1e6,
                    "error_ms": (_int(r.get("clock_error_ns")) or 0) / 1e6}
        elif kind == "summary" and r.get("role"):
            self.finished.add(str(r.get("role")))

    def _source(self, r: dict[str, Any]) -> None:
        if not self.source:
            self.source = {k: r.get(k) for k in ("source_id", "path", "width", "height",
                                                 "duration_ns", "frames", "fps", "live")
                           if r.get(k) is not None}
        event = r.get("event")
        if not isinstance(event, str):  # a file's source record: nothing to connect
            return
        if event in SOURCE_UP_EVENTS:
            self.connected = True
        elif event in SOURCE_DOWN_EVENTS:
            self.connected = False
        if event == "reconnect":
            self.reconnects += 1
        self.source_events.append({"event": event, "wall_ns": _int(r.get("wall_ns")),
                                   "generation": _int(r.get("generation")),
                                   "error": r.get("error")})
        del self.source_events[:-MAX_LISTED]

    def drop_times(self) -> tuple[list[tuple[int, str, str]], int]:
        """((t_ns, group, reason) per dropped frame with a known time, count without one)."""
        placed, unplaced = [], 0
        for d in self.drops:
            seqs = d["seqs"] or [None]
            for s in seqs:
                t = self.read_t.get(s) if s is not None and d["stream"] == "video" else None
                if t is None:
                    unplaced += 1
                else:
                    placed.append((t, d["group"], d["reason"]))
        return placed, unplaced


def _bins(ts: list[int], vs: list[float] | None, t0: int, t1: int, n: int) -> dict[str, Any]:
    """Downsample points into ``n`` equal bins over ``[t0, t1)``: count, mean, max per bin
    (``None`` where a bin is empty). Points outside are ignored."""
    count = [0] * n
    total = [0.0] * n
    peak: list[float | None] = [None] * n
    width = max(1, t1 - t0)
    for i, t in enumerate(ts):
        if t < t0 or t > t1:
            continue
        b = min(n - 1, (t - t0) * n // width)
        count[b] += 1
        if vs is not None:
            v = vs[i]
            total[b] += v
            p = peak[b]
            peak[b] = v if p is None or v > p else p
    out: dict[str, Any] = {"count": count}
    if vs is not None:
        out["mean"] = [round(total[i] / count[i], 3) if count[i] else None for i in range(n)]
        out["max"] = [round(p, 3) if p is not None else None for p in peak]
    return out


class OutFolder:
    """An OUT folder, read incrementally; thread-safe (one lock around every read).

    Args:
        root: the OUT folder (it may not exist yet: a live run that has not started).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.triggers_file = JsonlTail(self.root / "triggers.jsonl")
        self.trace_file = JsonlTail(self.root / "trace.jsonl")
        self.clips_dir = self.root / "clips"
        self._trace = _TraceIndex()
        self._trace_gen = -1
        self._sidecars: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._clip_files: set[str] = set()
        self._clips_mtime: int | None = None
        self._sidecar_by_key: dict[tuple[str, int], dict[str, Any]] = {}
        self._sorted: list[dict[str, Any]] = []
        self._sorted_key: tuple[int, int, int, int] = (-1, -1, -1, -1)
        self._lock = threading.Lock()
        self.version = 0

    # -- reading the files ------------------------------------------------------------------

    def refresh(self) -> dict[str, int]:
        """Read what changed on disk; returns counters that change whenever the page should
        update (``version`` increases on any change)."""
        with self._lock:
            changed = False
            before = (self.triggers_file.size, self.triggers_file.generation,
                      self.triggers_file.exists)
            self.triggers_file.refresh()
            changed |= before != (self.triggers_file.size, self.triggers_file.generation,
                                  self.triggers_file.exists)
            before = (self.trace_file.size, self.trace_file.generation, self.trace_file.exists)
            new = self.trace_file.refresh()
            if self.trace_file.generation != self._trace_gen:
                self._trace = _TraceIndex()
                self._trace_gen = self.trace_file.generation
                new = list(self.trace_file.records)
            for r in new:
                self._trace.add(r)
            changed |= before != (self.trace_file.size, self.trace_file.generation,
                                  self.trace_file.exists)
            changed |= self._refresh_clips()
            if changed:
                self.version += 1
            return {"version": self.version, "triggers": len(self._trigger_records()),
                    "clips": len(self._clip_files), "trace_records": len(self.trace_file.records)}

    def _refresh_clips(self) -> bool:
        try:
            mtime = os.stat(self.clips_dir).st_mtime_ns
        except OSError:
            mtime = None
        # a change within the file system's timestamp granularity of the last scan would leave
        # mtime unchanged: rescan while the folder changed less than a second ago
        if (mtime == self._clips_mtime and mtime is not None
                and time.time_ns() - mtime > 1_000_000_000):
            return False
        if mtime is None and self._clips_mtime is None and not self._clip_files:
            return False
        self._clips_mtime = mtime
        try:
            names = [e.name for e in os.scandir(self.clips_dir) if e.is_file()]
        except OSError:
            names = []
        self._clip_files = {n for n in names if CLIP_NAME.match(n)
                            and Path(n).suffix in CLIP_TYPES}
        sidecars: dict[str, tuple[int, dict[str, Any] | None]] = {}
        for n in names:
            if not n.endswith(".json") or not CLIP_NAME.match(n):
                continue
            try:
                m = os.stat(self.clips_dir / n).st_mtime_ns
            except OSError:
                continue
            cached = self._sidecars.get(n)
            if cached is not None and cached[0] == m:
                sidecars[n] = cached
                continue
            try:
                meta = json.loads((self.clips_dir / n).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = None
            sidecars[n] = (m, meta if isinstance(meta, dict) else None)
        self._sidecars = sidecars
        by_key = {}
        for n, (_, meta) in sidecars.items():
            trig = meta.get("trig") if meta else None
            if isinstance(trig, dict) and _int(trig.get("t_event_ns")) is not None:
                by_key[(str(trig.get("rule")), trig["t_event_ns"])] = {**meta, "_sidecar": n}
        self._sidecar_by_key = by_key
        return True

    # -- triggers ---------------------------------------------------------------------------

    def _trigger_records(self) -> list[dict[str, Any]]:
        if self.triggers_file.exists:
            return self.triggers_file.records
        return self._trace.triggers

    def _sorted_triggers(self) -> list[dict[str, Any]]:
        recs = self._trigger_records()
        key = (len(recs), self.triggers_file.generation, self._trace_gen,
               int(self.triggers_file.exists))
        if key != self._sorted_key:
            items = []
            for i, r in enumerate(recs, start=1):
                items.append((_int(r.get("t_event_ns")) if _int(r.get("t_event_ns")) is not None
                              else 2**62, i, r))
            items.sort(key=lambda x: (x[0], x[1]))
            self._sorted = [{"index": i, "record": r} for _, i, r in items]
            self._sorted_key = key
        return self._sorted

    def _clip_of(self, r: dict[str, Any]) -> dict[str, Any]:
        """The clip of one trigger: ``status`` (ok, missing, failed, pending, none) and, where
        known, ``name``, ``requested``/``actual`` edges and a ``message`` for the page."""
        key = (str(r.get("rule")), _int(r.get("t_event_ns")) or -1)
        meta = self._sidecar_by_key.get(key)
        if meta is not None:
            name = str(meta.get("clip", ""))
            info = {"name": name, "sidecar": meta.get("_sidecar"),
                    "requested": meta.get("requested"), "actual": meta.get("actual"),
                    "audio_only": bool(meta.get("audio_only"))}
            if name in self._clip_files:
                return {**info, "status": "ok"}
            return {**info, "status": "missing",
                    "message": f"clip file clips/{name} is missing on disk "
                               f"(its sidecar clips/{meta.get('_sidecar')} names it)"}
        rec = self._trace.clips.get(key)
        if rec is not None:
            name = Path(str(rec.get("path", ""))).name
            info = {"name": name, "sidecar": None,
                    "requested": {"t_start_ns": rec.get("requested_start_ns"),
                                  "t_end_ns": rec.get("requested_end_ns")},
                    "actual": {"t_start_ns": rec.get("actual_start_ns"),
                               "t_end_ns": rec.get("actual_end_ns")}, "audio_only": False}
            if name in self._clip_files:
                return {**info, "status": "ok"}
            return {**info, "status": "missing",
                    "message": f"clip file clips/{name} is missing on disk (trace.jsonl says "
                               "it was written)"}
        err = self._trace.clip_errors.get(key)
        if err is not None:
            return {"status": "failed", "message": f"the clip failed: {err}"}
        if "clip" in self._trace.finished:
            return {"status": "none", "message": "no clip was written for this trigger"}
        return {"status": "pending", "message": "no clip yet (still being cut, or the clip "
                                                 "role did not run)"}

    def _trigger_item(self, entry: dict[str, Any]) -> dict[str, Any]:
        r = entry["record"]
        evidence = r.get("evidence")
        missing = r.get("missing")
        return {
            "index": entry["index"],
            "rule": str(r.get("rule", "?")), "rule_kind": r.get("rule_kind"),
            "t_event_ns": _int(r.get("t_event_ns")), "t_start_ns": _int(r.get("t_start_ns")),
            "t_end_ns": _int(r.get("t_end_ns")), "score": _num(r.get("score")),
            "missing": missing if isinstance(missing, list) else [],
            "evidence": evidence if isinstance(evidence, list) else [],
            "other": {k: v for k, v in r.items() if k not in TRIGGER_FIELDS},
            "clip": self._clip_of(r),
        }

    def triggers(self, offset: int = 0, limit: int = 50,
                 at_ns: int | None = None) -> dict[str, Any]:
        """A page of triggers in event-time order (``t_event_ns``, then file order).

        ``at_ns`` picks the page holding the first trigger at or after that time (``offset``
        is then a multiple of ``limit``). Returns ``{"total", "offset", "limit", "items"}``;
        each item has ``index`` (1-based line in triggers.jsonl), the TRIG's fields, ``other``
        (fields this page does not know) and ``clip`` (see :meth:`_clip_of`).
        """
        limit = max(1, min(int(limit), 500))
        with self._lock:
            entries = self._sorted_triggers()
            if at_ns is not None:
                times = [_int(e["record"].get("t_event_ns")) or 0 for e in entries]
                pos = bisect_left(times, at_ns)
                offset = (min(pos, max(0, len(entries) - 1)) // limit) * limit
            offset = max(0, min(int(offset), max(0, len(entries) - 1)))
            return {"total": len(entries), "offset": offset, "limit": limit,
                    "items": [self._trigger_item(e) for e in entries[offset:offset + limit]]}

    def trigger(self, index: int) -> dict[str, Any] | None:
        """One trigger by its ``index`` (line number), or ``None``."""
        with self._lock:
            for e in self._sorted_triggers():
                if e["index"] == index:
                    return self._trigger_item(e)
        return None

    # -- the timeline and lanes -------------------------------------------------------------

    def span_ns(self) -> int:
        """The source's duration (its ``source`` record), else the last time seen anywhere."""
        dur = _int(self._trace.source.get("duration_ns"))
        if dur:
            return dur
        ends = [_int(r.get("t_end_ns")) or 0 for r in self._trigger_records()]
        return max([self._trace.max_t, *ends, 1])

    def lanes(self, bins: int = 600, t0: int | None = None,
              t1: int | None = None) -> dict[str, Any]:
        """Per-component lanes over event time, downsampled to ``bins`` bins over ``[t0, t1]``
        (default: the whole source): processing time (``stage`` process) and read time
        (daemon) in ms, sync delay per (group, group waited for) in ms, with count/mean/max per
        bin and overall ``p50``/``p99``/``peak``; dropped frames and late observations as
        per-bin counts (plus up to 2,000 exact points each); trigger onsets per bin (every
        trigger, not one page)."""
        bins = max(10, min(int(bins), 4000))
        with self._lock:
            tr = self._trace
            start = 0 if t0 is None else int(t0)
            end = self.span_ns() if t1 is None else int(t1)
            end = max(end, start + 1)
            lanes = []
            for comp in sorted(tr.timing):
                for stage in ("read", "process"):
                    if stage not in tr.timing[comp]:
                        continue
                    ts, vs = tr.timing[comp][stage]
                    lanes.append({"name": comp, "kind": stage, "unit": "ms", "points": len(ts),
                                  "p50": percentile(vs, 50), "p99": percentile(vs, 99),
                                  "peak": max(vs), **_bins(ts, vs, start, end, bins)})
            for name in sorted(tr.sync):
                ts, vs = tr.sync[name]
                lanes.append({"name": name, "kind": "sync_delay", "unit": "ms",
                              "points": len(ts), "p50": percentile(vs, 50),
                              "p99": percentile(vs, 99), "peak": max(vs),
                              **_bins(ts, vs, start, end, bins)})
            placed, unplaced = tr.drop_times()
            late = [x for x in tr.late if x["t_ns"] is not None]
            onsets = [t for t in (_int(r.get("t_event_ns")) for r in self._trigger_records())
                      if t is not None]
            return {
                "t0_ns": start, "t1_ns": end, "bins": bins, "lanes": lanes,
                "drops": {"total": len(placed) + unplaced, "unplaced": unplaced,
                          "count": _bins([p[0] for p in placed], None, start, end, bins)["count"],
                          "points": [{"t_ns": t, "group": g, "reason": why}
                                     for t, g, why in placed[:2000]]},
                "late": {"total": len(tr.late),
                         "count": _bins([x["t_ns"] for x in late], None, start, end,
                                        bins)["count"],
                         "points": late[:2000]},
                "triggers": {"total": len(onsets),
                             "count": _bins(onsets, None, start, end, bins)["count"]},
            }

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the folder holds and what is missing, for the page's banner.

        ``problems``: sentences naming each missing or damaged thing (missing/empty OUT,
        missing files, malformed or torn lines, clip files missing on disk, failed clips).
        ``state``: ``finished`` (the clip role wrote its summary), ``running`` (files exist,
        no final summary yet: a live run, or one cut short) or ``empty``.
        ``source_state``: a live source's ``connected`` (``None`` if never said), ``reconnects``
        and its last :data:`MAX_LISTED` events. ``links``: ``"component -> peer"`` -> the newest
        clock estimate of that link (``offset_ms`` peer minus here, ``rtt_ms``, ``error_ms``,
        ``host``; ipc/clock.py).
        """
        with self._lock:
            tr = self._trace
            problems: list[str] = []
            root = self.root
            exists = root.is_dir()
            if not root.exists():
                problems.append(f"OUT folder {root} does not exist (yet): nothing to show; "
                                "this page updates when a run writes there")
            elif not exists:
                problems.append(f"{root} is not a folder")
            else:
                files = [self.triggers_file, self.trace_file]
                if not any(f.exists for f in files) and not self.clips_dir.exists():
                    problems.append(f"OUT folder {root} is empty: no triggers.jsonl, "
                                    "trace.jsonl or clips/")
                else:
                    recs = self._trigger_records()
                    if not self.triggers_file.exists:
                        problems.append("triggers.jsonl is missing" + (
                            f": showing the {len(recs)} trigger(s) found in trace.jsonl"
                            if recs else ": no trigger list"))
                    if not self.trace_file.exists:
                        problems.append("trace.jsonl is missing: no processing-time or "
                                        "sync-delay lanes, drops or late observations")
                    elif self.trace_file.size == 0:
                        problems.append("trace.jsonl is empty")
                    for f in files:
                        if f.malformed:
                            problems.append(f"{f.path.name}: {f.malformed} malformed line(s) "
                                            "skipped")
                        if f.torn:
                            problems.append(f"{f.path.name}: the last line is incomplete "
                                            f"({f.torn} bytes): still being written, "
                                            "or the run was cut short")
                    if recs and not self.clips_dir.is_dir():
                        problems.append("clips/ is missing: no clip can play")
            # clips that should be there and are not, failed clips
            missing_clips, failed = [], []
            for e in self._sorted_triggers():
                clip = self._clip_of(e["record"])
                what = (f"trigger #{e['index']} {e['record'].get('rule', '?')} at "
                        f"{_s(_int(e['record'].get('t_event_ns')))}")
                if clip["status"] == "missing":
                    missing_clips.append(f"{clip['message']} ({what})")
                elif clip["status"] == "failed":
                    failed.append(f"{what}: {clip['message']}")
            for group, label in ((missing_clips, "missing clip file(s)"),
                                 (failed, "failed clip(s)")):
                problems.extend(group[:MAX_LISTED])
                if len(group) > MAX_LISTED:
                    problems.append(f"... and {len(group) - MAX_LISTED} more {label}")
            if tr.connected is False and "clip" not in tr.finished:
                last = tr.source_events[-1] if tr.source_events else {}
                problems.append(f"the live source is not connected (last event: "
                                f"{last.get('event', '?')}"
                                + (f", {last['error']}" if last.get("error") else "") + ")")
            placed, unplaced = tr.drop_times()
            if "clip" in tr.finished:
                state = "finished"
            elif self.triggers_file.exists or self.trace_file.exists:
                state = "running"
            else:
                state = "empty"
            return {
                "out": str(root), "state": state, "problems": problems,
                "version": self.version,
                "files": {"triggers.jsonl": self.triggers_file.exists,
                          "trace.jsonl": self.trace_file.exists,
                          "clips/": self.clips_dir.is_dir()},
                "source": tr.source, "span_ns": self.span_ns(),
                "source_state": {"connected": tr.connected, "reconnects": tr.reconnects,
                                 "events": list(tr.source_events)},
                "links": dict(sorted(tr.links.items())),
                "counts": {"triggers": len(self._trigger_records()),
                           "clips": len(self._clip_files),
                           "trace_records": len(self.trace_file.records),
                           "frames_read": tr.reads,
                           "drops": len(placed) + unplaced, "late": len(tr.late),
                           "errors": len(tr.errors),
                           "malformed_lines": (self.trace_file.malformed
                                               + self.triggers_file.malformed)},
                "errors": tr.errors[:20],
                "finished_roles": sorted(tr.finished),
            }
