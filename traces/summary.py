"""``momentbus trace summary FILE``: what a trace says, for a person (or ``--json``).

Reads any trace JSONL, including one from a run that was cut short (a torn last line is
skipped and counted). Latencies are the extractors' ``process_ms``; frames/s is processed frames
over the span between a component's first and last timing record (wall clock). ``damage`` is
what the daemon could not read of its source (:class:`~momentbus.damage.Damage`, from its
``summary`` record), ``None`` when the trace has no such report.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..damage import Damage


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(records, malformed line count). Raises OSError if the file cannot be read."""
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict) and "record" in rec:
                records.append(rec)
            else:
                bad += 1
    return records, bad


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return round(s[lo] + (s[hi] - s[lo]) * (k - lo), 3)


#: A live source's ``source`` events the summary counts.
_LIVE_EVENTS = ("connect", "disconnect", "stall", "reconnect", "connect_failed", "reanchor")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary as a JSON-friendly dict (see module doc for the definitions)."""
    timing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    drops: Counter[str] = Counter()
    drops_by_group: Counter[str] = Counter()
    sync: dict[str, list[float]] = defaultdict(list)
    late: Counter[str] = Counter()
    triggers, clips, errors, members, future = [], [], [], [], 0
    source_events: list[dict[str, Any]] = []
    clocks: dict[tuple[str, str], dict[str, Any]] = {}
    capture_to_fusion: dict[str, list[float]] = defaultdict(list)
    damage: Damage | None = None
    for r in records:
        kind = r.get("record")
        comp = str(r.get("component", "?"))
        if kind == "timing" and "process_ms" in r:
            timing[comp].append(r)
        elif kind == "frame_drop":
            n = len(r.get("seqs") or [1])
            drops[str(r.get("reason"))] += n
            drops_by_group[f"{r.get('group', comp)}:{r.get('reason')}"] += n
        elif kind == "sync_delay":
            for who in r.get("waiting_for") or ["?"]:
                sync[who].append(float(r.get("delay_ms", 0)))
        elif kind == "late_obs":
            late[str(r.get("group", r.get("member", "?")))] += 1
        elif kind == "future_obs":
            future += 1
        elif kind == "trigger":
            triggers.append(r)
        elif kind == "clip":
            clips.append(r)
        elif kind == "error":
            errors.append(r)
        elif kind == "member" and r.get("event") == "clock":
            clocks[(comp, str(r.get("peer", r.get("member", "?"))))] = r  # the latest wins
        elif kind == "member":
            members.append(r)
        elif kind == "summary" and r.get("role") == "daemon" and "damage" in r:
            damage = Damage.from_trace(r["damage"]) or damage
        elif kind == "source" and r.get("event") in _LIVE_EVENTS:
            source_events.append(r)
        elif kind == "timing" and r.get("stage") == "fusion_in" \
                and r.get("capture_to_fusion_ms") is not None:
            capture_to_fusion[str(r.get("member", "?"))].append(
                float(r["capture_to_fusion_ms"]))
    components = {}
    for comp, recs in sorted(timing.items()):
        ms = [float(x["process_ms"]) for x in recs]
        walls = [int(x["wall_ns"]) for x in recs if "wall_ns" in x]
        span = (max(walls) - min(walls)) / 1e9 if len(walls) > 1 else 0
        lat = [float(x["latency_ms"]) for x in recs if "latency_ms" in x]
        components[comp] = {
            "frames": len(recs), "fps": round((len(recs) - 1) / span, 2) if span else None,
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99), "max_ms": round(max(ms), 3),
            "latency_p50_ms": percentile(lat, 50), "latency_p99_ms": percentile(lat, 99)}
    reads = [r for r in records if r.get("record") == "timing" and r.get("stage") == "read"]
    live = None
    if source_events:
        by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in source_events:
            by_event[str(r["event"])].append(r)
        after = [float(r.get("after_ms", 0)) for r in by_event["reconnect"]]
        live = {
            "connections": len(by_event["connect"]),
            "disconnects": dict(Counter(str(r.get("reason")) for r in by_event["disconnect"])),
            "stalls": len(by_event["stall"]),
            "connect_failures": len(by_event["connect_failed"]),
            "reconnect_ms": {"count": len(after), "p50": percentile(after, 50),
                             "max": max(after)} if after else None,
            "reanchors": len(by_event["reanchor"]),
        }
    return {
        "records": len(records),
        "frames_read": len(reads),
        "components": components,
        "drops": dict(drops), "drops_by_group": dict(drops_by_group),
        "sync_delays": {who: {"count": len(v), "p50_ms": percentile(v, 50),
                              "p99_ms": percentile(v, 99), "max_ms": max(v)}
                        for who, v in sorted(sync.items())},
        "late_obs": dict(late), "future_obs": future,
        "members": [{k: m.get(k) for k in ("component", "event", "member", "group", "reason",
                                           "rule", "needs") if m.get(k) is not None}
                    for m in members
                    if m.get("event") in ("idle", "rejoin", "leave", "never_joined",
                                          "rule_disabled")],
        "triggers": [{"rule": t.get("rule"), "t_event_ns": t.get("t_event_ns"),
                      "t_start_ns": t.get("t_start_ns"), "t_end_ns": t.get("t_end_ns"),
                      "score": t.get("score"), "missing": t.get("missing")} for t in triggers],
        "clips": [{"path": c.get("path"), "rule": c.get("rule"),
                   "requested": [c.get("requested_start_ns"), c.get("requested_end_ns")],
                   "actual": [c.get("actual_start_ns"), c.get("actual_end_ns")]}
                  for c in clips],
        "errors": [{"component": e.get("component"), "error": e.get("error")} for e in errors],
        "damage": None if damage is None else {**damage.to_trace(), "text": damage.describe()},
        "live": live,
        # capture (the daemon's clock) -> observation at fusion, per extractor, corrected for
        # the hosts' clock offsets
        "capture_to_fusion_ms": {m: {"count": len(v), "p50": percentile(v, 50),
                                     "p99": percentile(v, 99)}
                                 for m, v in sorted(capture_to_fusion.items())},
        # the latest clock estimate of each link, from each end
        "clocks": [{"by": by, "peer": peer, "host": r.get("host"),
                    "offset_ms": round(r.get("clock_offset_ns", 0) / 1e6, 3),
                    "rtt_ms": round(r.get("rtt_ns", 0) / 1e6, 3),
                    "error_ms": round(r.get("clock_error_ns", 0) / 1e6, 3)}
                   for (by, peer), r in sorted(clocks.items())],
    }


def _s(ns: Any) -> str:
    return f"{ns / 1e9:.2f}" if isinstance(ns, (int, float)) else "-"


def render(summary: dict[str, Any], bad_lines: int = 0) -> None:
    """Print the summary as rich tables."""
    from rich.console import Console
    from rich.table import Table

    out = Console()
    out.print(f"{summary['records']} records, {summary['frames_read']} frames read"
              + (f", {bad_lines} malformed line(s) skipped" if bad_lines else ""))
    damage = summary.get("damage")
    if damage is not None:
        line = (f"data loss: {damage['text']}" if damage["lossy"]
                else f"source: {damage['text']}, no damage")
        out.print(f"[bold yellow]{line}" if damage["lossy"] else line, highlight=False,
                  soft_wrap=True)
    live = summary.get("live")
    if live:
        reconnect = live["reconnect_ms"]
        out.print(f"live source: {live['connections']} connection(s), disconnects "
                  + (", ".join(f"{k} {v}" for k, v in live["disconnects"].items()) or "none")
                  + f", {live['stalls']} stall(s), {live['connect_failures']} failed "
                  f"connect(s)"
                  + (f", reconnected in {reconnect['p50']} ms (p50), {reconnect['max']} ms "
                     f"(max)" if reconnect else "")
                  + f", {live['reanchors']} re-anchoring(s)", highlight=False)
    if summary.get("clocks"):
        t = Table(title="clocks: each link's peer wall clock minus ours", title_justify="left")
        for col in ("seen by", "peer", "host", "offset ms", "rtt ms", "+- ms"):
            t.add_column(col, justify="right" if col.endswith("ms") else "left")
        for c in summary["clocks"]:
            t.add_row(c["by"].replace("extractor:", ""), c["peer"].replace("extractor:", ""),
                      c["host"] or "-", str(c["offset_ms"]), str(c["rtt_ms"]),
                      str(c["error_ms"]))
        out.print(t)
    for member, c in (summary.get("capture_to_fusion_ms") or {}).items():
        out.print(f"capture -> fusion {member.replace('extractor:', '')}: p50 {c['p50']} ms, "
                  f"p99 {c['p99']} ms ({c['count']} observations)", highlight=False)
    t = Table(title="components (process time)", title_justify="left")
    t.add_column("component", no_wrap=True)
    for col in ("frames", "fps", "p50 ms", "p95 ms", "p99 ms", "max ms", "e2e p50 ms"):
        t.add_column(col, justify="right")
    for comp, c in summary["components"].items():
        t.add_row(comp.replace("extractor:", ""), str(c["frames"]), str(c["fps"] or "-"),
                  str(c["p50_ms"]),
                  str(c["p95_ms"]), str(c["p99_ms"]), str(c["max_ms"]),
                  str(c["latency_p50_ms"] or "-"))
    out.print(t)
    drops = ", ".join(f"{k}: {v}" for k, v in sorted(summary["drops_by_group"].items()))
    out.print(f"drops: {drops or 'none'}")
    if summary["sync_delays"]:
        t = Table(title="sync delays by who was waited for", title_justify="left")
        for col in ("waiting for", "count", "p50 ms", "p99 ms", "max ms"):
            t.add_column(col)
        for who, d in summary["sync_delays"].items():
            t.add_row(who, str(d["count"]), str(d["p50_ms"]), str(d["p99_ms"]), str(d["max_ms"]))
        out.print(t)
    else:
        out.print("sync delays: none (no observation waited for another group)")
    late = ", ".join(f"{k}: {v}" for k, v in summary["late_obs"].items())
    out.print(f"late observations: {late or 'none'}; future timestamps rejected: "
              f"{summary['future_obs']}")
    for m in summary["members"]:
        out.print("member: " + " ".join(f"{k}={v}" for k, v in m.items()))
    if summary["triggers"]:
        t = Table(title="triggers", title_justify="left")
        for col in ("rule", "event s", "window s", "score", "missing"):
            t.add_column(col)
        for trig in summary["triggers"]:
            t.add_row(str(trig["rule"]), _s(trig["t_event_ns"]),
                      f"{_s(trig['t_start_ns'])}-{_s(trig['t_end_ns'])}", str(trig["score"]),
                      ",".join(trig["missing"] or []) or "-")
        out.print(t)
    else:
        out.print("triggers: none")
    if summary["clips"]:
        t = Table(title="clips: requested vs actual edges (s)", title_justify="left")
        for col in ("clip", "requested", "actual"):
            t.add_column(col)
        for c in summary["clips"]:
            t.add_row(Path(str(c["path"])).name, "-".join(_s(x) for x in c["requested"]),
                      "-".join(_s(x) for x in c["actual"]))
        out.print(t)
    for e in summary["errors"]:
        out.print(f"[red]error[/] {e['component']}: {e['error']}")
