"""Live latency and clip edges on a real RTSP stream, and the clip role's memory over a long run.

    uv run python bench/live.py [--duration 60] [--soak 300]

Needs GStreamer's RTSP server under Debian's Python (tests/LIVE_NOTES.md, "Set-up CI needs").
It serves the sample looped at real time on 127.0.0.1 and runs ``momentbus run rtsp://...
--extractors face,quality --fps 10 --duration D``, then reads the run's trace and sidecars:

* **capture -> Obs at fusion** per extractor: fusion's CLOCK_MONOTONIC when the observation
  arrived minus its frame's ``t_ns`` (the live clock's capture time, same clock on one host).
* **confirmation -> TRIG emitted -> clip closed**, per trigger: from the last evidence's ``t_ns``
  (the observation that confirmed the rule) to fusion's ``emitted_ns`` and to the clip's
  ``written_t_ns``; the floor is the clip's remaining post-roll (``t_end`` minus the
  confirmation: no clip can close before its last frame was captured), so "above the floor" is
  what waiting for the ring, muxing and writing cost.
* **start-edge error** of each live clip, in frames: ours (edit list: the first frame shown is
  the first at or after ``t_start``) against a keyframe-aligned copy of the same ring (what
  Frigate/DeepStream do: it would start at the keyframe the ring had before ``t_start``). Each
  clip is decoded to check it shows exactly the frames its sidecar lists.

``--soak S`` also plays the sample as a camera (``--realtime --loop``) for S seconds and samples
the resident memory (VmRSS) of the clip and fusion processes every 5 s: growth from the first
minute to the end. Prints tables; every figure comes from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
from rich.console import Console
from rich.table import Table

from momentbus.daemon import samples
from momentbus.traces.summary import percentile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from live_servers import APT_COMMAND, RtspServer, rtsp_unavailable_reason  # noqa: E402

FRAME_NS = 1_000_000_000 * 1001 // 24000


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "momentbus", *args], capture_output=True,
                          text=True, timeout=timeout)


def latency(console: Console, duration: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, RtspServer(samples.path()) as server:
        out = Path(tmp) / "out"
        proc = run(["run", server.url, "--out", str(out), "--quiet", "--extractors",
                    "face,quality", "--fps", "10", "--duration", str(duration)],
                   timeout=duration + 180)
        if proc.returncode != 0:
            raise SystemExit(f"momentbus run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        recs = records(out / "trace.jsonl")
        fusion_in: dict[str, list[float]] = {}
        for r in recs:
            if r.get("record") == "timing" and r.get("stage") == "fusion_in" \
                    and r.get("capture_to_fusion_ms") is not None:
                fusion_in.setdefault(r["member"], []).append(r["capture_to_fusion_ms"])
        emitted = {r["t_event_ns"]: r["emitted_ns"] for r in recs
                   if r.get("record") == "trigger"}
        frames = sorted(r["t_ns"] for r in recs if r.get("record") == "timing"
                        and r.get("stage") == "read" and r.get("component") == "daemon")
        sidecars = [json.loads(p.read_text()) for p in sorted((out / "clips").glob("*.json"))]
        to_trig, to_clip, floor, above, ours, keyframe, decoded_ok = [], [], [], [], [], [], 0
        for meta in sidecars:
            if not meta.get("ok"):
                continue
            trig = meta["trig"]
            confirm = max(e["t_ns"] for e in trig["evidence"])
            to_trig.append((emitted[trig["t_event_ns"]] - confirm) / 1e6)
            to_clip.append((meta["written_t_ns"] - confirm) / 1e6)
            floor.append((trig["t_end_ns"] - confirm) / 1e6)
            above.append(to_clip[-1] - floor[-1])
            # the first frame at or after t_start, as the daemon decoded it (its own record)
            first_wanted = min(t for t in frames if t >= meta["requested"]["t_start_ns"])
            ours.append(round((meta["actual"]["t_start_ns"] - first_wanted) / FRAME_NS))
            keyframe.append(round((meta["keyframe_t_ns"] - first_wanted) / FRAME_NS))
            with av.open(str(out / "clips" / meta["clip"])) as c:
                decoded_ok += sum(1 for _ in c.decode(video=0)) == meta["shown_frames"]

    def row(t: Table, name: str, values: list[float], floor_values: list[float] | None = None,
            ) -> None:
        t.add_row(name, str(len(values)), f"{percentile(values, 50):.0f}",
                  f"{percentile(values, 99):.0f}",
                  f"{percentile(floor_values, 50):.0f}" if floor_values else "-")

    t = Table(title=f"live latency on the RTSP loop, face+quality at 10 fps, {duration:.0f} s "
                    "(ms)", title_justify="left")
    for col in ("path", "n", "p50", "p99", "floor p50"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for member, values in sorted(fusion_in.items()):
        row(t, f"capture -> Obs at fusion ({member.replace('extractor:', '')})", values)
    row(t, "confirmation -> TRIG emitted", to_trig)
    row(t, "confirmation -> clip closed", to_clip, floor)
    row(t, "clip closed - post-roll floor", above)
    console.print(t)
    e = Table(title="start-edge error of the live clips (frames: shown first - wanted first)",
              title_justify="left")
    for col in ("cut", "clips", "min", "median", "max", "decoded = planned"):
        e.add_column(col, justify="left" if col == "cut" else "right")
    for name, values in (("edit list (ours)", ours),
                         ("keyframe copy of the same ring", keyframe)):
        e.add_row(name, str(len(values)), str(min(values, default="-")),
                  f"{percentile(values, 50):.1f}" if values else "-",
                  str(max(values, default="-")),
                  f"{decoded_ok}/{len(ours)}" if name.startswith("edit") else "-")
    console.print(e)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def roles_of(out: Path) -> dict[str, int]:
    """pid of the clip and fusion roles of the run writing to ``out``."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if str(out) in args and "momentbus" in args:
            role = args[args.index("momentbus") + 1]
            if role in ("clip", "fusion"):
                found[role] = int(pid)
    return found


def soak(console: Console, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        proc = subprocess.Popen([sys.executable, "-m", "momentbus", "run", str(samples.path()),
                                 "--realtime", "--loop", "--duration", str(seconds), "--out",
                                 str(out), "--quiet"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        samples_kb: dict[str, list[tuple[float, int]]] = {}
        t0 = time.monotonic()
        done = threading.Event()

        def sample() -> None:
            while not done.wait(5.0):
                for role, pid in roles_of(out).items():
                    kb = rss_kb(pid)
                    if kb is not None:
                        samples_kb.setdefault(role, []).append((time.monotonic() - t0, kb))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        _, err = proc.communicate(timeout=seconds + 240)
        done.set()
        thread.join()
        if proc.returncode != 0:
            raise SystemExit(f"soak run failed ({proc.returncode}):\n{err[-3000:]}")
        clips = len(list((out / "clips").glob("*.mp4")))
    t = Table(title=f"resident memory over a {seconds:.0f} s --realtime --loop run "
                    f"({clips} clips)", title_justify="left")
    for col in ("role", "samples", "RSS at 60 s MiB", "RSS at end MiB", "growth"):
        t.add_column(col, justify="left" if col == "role" else "right")
    for role, points in sorted(samples_kb.items()):
        after = [kb for s, kb in points if s >= 60] or [kb for _, kb in points]
        first, last = after[0], after[-1]
        t.add_row(role, str(len(points)), f"{first / 1024:.1f}", f"{last / 1024:.1f}",
                  f"{(last - first) / first * 100:+.1f} %")
    console.print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0,
                    help="seconds of the RTSP run (default 60: three loops of the sample)")
    ap.add_argument("--soak", type=float, default=0.0, metavar="S",
                    help="also play the sample as a camera for S seconds and watch memory")
    args = ap.parse_args()
    console = Console()
    why = rtsp_unavailable_reason()
    if why:
        print(f"no RTSP server here ({why}); install: {APT_COMMAND}", file=sys.stderr)
        return 2
    latency(console, args.duration)
    if args.soak:
        soak(console, args.soak)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
