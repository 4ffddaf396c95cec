"""``momentbus trace plot FILE -o timeline.png``: one lane per component on the wall clock.

Each processed frame is a bar spanning its processing time (``wall_ns - process_ms`` to
``wall_ns``); drops are red crosses on the lane that dropped; sync delays are orange bars on the
fusion lane (from arrival to release); triggers are green vertical lines, labelled by rule, at
the moment they were emitted. The "sync status" view of the design, as a picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_timeline(records: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Render ``records`` to a PNG at ``out``; returns its path.

    Raises:
        ValueError: no record has a wall time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    walls = [r["wall_ns"] for r in records if isinstance(r.get("wall_ns"), int)]
    if not walls:
        raise ValueError("the trace has no timed records")
    t0 = min(walls)

    def s(ns: int) -> float:
        return (ns - t0) / 1e9

    lanes: list[str] = []

    def lane(name: str) -> int:
        if name not in lanes:
            lanes.append(name)
        return lanes.index(name)

    spans: dict[int, list[tuple[float, float]]] = {}
    reads: dict[int, list[float]] = {}
    drops: list[tuple[float, int]] = []
    syncs: list[tuple[float, float, int]] = []
    trigs: list[tuple[float, str]] = []
    for r in sorted(records, key=lambda r: r.get("component", "")):
        comp = str(r.get("component", "?"))
        kind = r.get("record")
        wall = r.get("wall_ns")
        if not isinstance(wall, int):
            continue
        if kind == "timing" and "process_ms" in r:
            dur = float(r["process_ms"]) / 1000
            spans.setdefault(lane(comp), []).append((s(wall) - dur, dur))
        elif kind == "timing" and r.get("stage") == "read":
            reads.setdefault(lane(comp), []).append(s(wall))
        elif kind == "frame_drop":
            drops.append((s(wall), lane(comp)))
        elif kind == "sync_delay":
            dur = float(r.get("delay_ms", 0)) / 1000
            syncs.append((s(wall) - dur, dur, lane(comp)))
        elif kind == "trigger":
            trigs.append((s(wall), str(r.get("rule"))))
    height = max(2.5, 0.6 * len(lanes) + 1.5)
    fig, ax = plt.subplots(figsize=(14, height))
    for i, bars in spans.items():
        ax.broken_barh(bars, (i - 0.35, 0.7), facecolors="tab:blue", alpha=0.7, linewidth=0)
    for i, xs in reads.items():
        ax.plot(xs, [i] * len(xs), "|", color="tab:gray", markersize=6, alpha=0.6)
    if syncs:
        for start, dur, i in syncs:
            ax.broken_barh([(start, dur)], (i - 0.2, 0.4), facecolors="tab:orange", alpha=0.25)
    if drops:
        ax.plot([d[0] for d in drops], [d[1] for d in drops], "x", color="tab:red",
                markersize=7, label="drop")
    for x, rule in trigs:
        ax.axvline(x, color="tab:green", linewidth=1.5)
        ax.text(x, len(lanes) - 0.4, f" {rule}", color="tab:green", fontsize=8, va="bottom")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(-0.7, max(1, len(lanes)) - 0.3 + 0.5)
    ax.set_xlabel("wall time since the first record (s)")
    ax.set_title(title or "momentbus timeline: processing (blue), reads (gray), sync waits "
                          "(orange), drops (red), triggers (green)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
