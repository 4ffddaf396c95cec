"""The whole job, ``momentbus run`` (separate processes over ZeroMQ), against one process that runs
the same extractor, fusion and clip code sequentially on the same frames.

    uv run python bench/pipeline.py [--long] [--extractors face,quality] [--fps 10]
                                    [--repeat N] [--rows sequential,workers1,auto]

``--long`` builds a 118 s video from the sample by remuxing it six times end to end (packets
copied with shifted timestamps, no re-encode; cached next to the samples) and runs on that.

Measured in one run on this machine, each row against the sequential loop of the same run:

* wall time, analysed frames/s, CPU % (user + system over wall, 100 % = one core);
* time to the first analysed frame: from the start (``Popen`` of ``momentbus run``; the first
  line of the loop for the sequential one) to the end of the first extractor ``process`` call
  (``run``: the first ``timing`` record of stage ``process`` in trace.jsonl, its ``wall_ns``);
* memory of the process tree, sampled every second from /proc: peak of the summed RSS (counts
  the pages processes share once per process: libraries, copy-on-write) and peak of the summed
  PSS (``smaps_rollup``: a shared page split between its sharers, so the tree's real cost),
  and the CPU that sampling took (*mem CPU s*: the machine's time not given to the row);
* triggers, which must be the same in every row (rule, onset).

Rows: the sequential loop, ``momentbus run --workers 1`` (one process per kind: the plan before
``--workers``) and ``momentbus run`` (``--workers auto``, the default).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av

from momentbus.clip.cutter import write_clip
from momentbus.daemon import samples
from momentbus.extractors.base import build, stream_of
from momentbus.extractors.stamping import ObsStamper
from momentbus.fusion.aligner import Aligner
from momentbus.fusion.rules import build_rules, load_rules
from momentbus.ipc.sampling import FpsSampler
from momentbus.ipc.schema import Frame
from momentbus.media import FileSource

LONG_REPEATS = 6
#: ``--rows`` keys -> row names, in the order they run
ROWS = {"sequential": "sequential, one process", "workers1": "run --workers 1",
        "auto": "run (--workers auto)"}


def long_video(repeats: int = LONG_REPEATS) -> Path:
    """The sample remuxed ``repeats`` times end to end (no re-encode), cached."""
    src_path = samples.path("WolfgangLanger_Pexels.mp4")
    dest = src_path.with_name(f"{src_path.stem}_x{repeats}.mp4")
    if dest.exists():
        return dest
    tmp = dest.with_suffix(".part.mp4")
    with av.open(str(src_path)) as src, av.open(str(tmp), "w") as out:
        streams = [s for s in src.streams if s.type in ("video", "audio")]
        outs = {s.index: out.add_stream_from_template(s) for s in streams}
        # one repeat's length, per stream, in that stream's time base: the end of its packets
        span: dict[int, int] = {}
        for packet in src.demux(streams):
            if packet.pts is not None and packet.duration is not None:
                end = packet.pts + packet.duration
                span[packet.stream.index] = max(span.get(packet.stream.index, 0), end)
        for i in range(repeats):
            src.seek(0)
            for packet in src.demux(streams):
                if packet.dts is None:
                    continue
                shift = i * span[packet.stream.index]
                packet.pts = None if packet.pts is None else packet.pts + shift
                packet.dts += shift
                packet.stream = outs[packet.stream.index]
                out.mux(packet)
    tmp.rename(dest)
    return dest


class TreeMemory:
    """Peak summed RSS and PSS (MB) of a process and its descendants, sampled every
    ``interval_s`` by a thread of this process.

    Reading ``smaps_rollup`` walks each process's page tables: ~28 ms of CPU a sample for the
    eight processes of a four-kind ``momentbus run`` (~3 ms for the sequential loop's one),
    measured on this 2-core VM. Every 250 ms that took ~6 % of the machine from the ``run``
    rows only; every second it is ~1.4 %. :attr:`cpu_s` is what the sampling cost."""

    def __init__(self, root: int, interval_s: float = 1.0) -> None:
        self.root = root
        self.interval_s = interval_s
        self.peak_rss_mb = 0.0
        self.peak_pss_mb = 0.0
        self.cpu_s = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        out, stack = [], [self.root]
        while stack:
            pid = stack.pop()
            out.append(pid)
            stack += children.get(pid, [])
        return out

    def _sample(self) -> None:
        while not self._done.wait(self.interval_s):
            started = time.thread_time()
            rss = pss = 0
            for pid in self._pids():
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as f:
                        for line in f:
                            if line.startswith("Rss:"):
                                rss += int(line.split()[1])
                            elif line.startswith("Pss:"):
                                pss += int(line.split()[1])
                except OSError:
                    continue
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 1024)
            self.peak_pss_mb = max(self.peak_pss_mb, pss / 1024)
            self.cpu_s += time.thread_time() - started

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def bench_run(video: str, extractors: str, fps: float, workers: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="mbpipe-"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_wall_ns = time.time_ns()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "momentbus", "run", video, "--out", str(out),
                             "--extractors", extractors, "--fps", str(fps), "--workers", workers,
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    memory = TreeMemory(proc.pid)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    memory.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"momentbus run failed with exit code {proc.returncode}: "
                         f"{stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    first_ns = None
    processes = set()
    with open(out / "trace.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r.get("record") == "timing" and r.get("stage") == "process":
                processes.add(r["component"])
                first_ns = r["wall_ns"] if first_ns is None else min(first_ns, r["wall_ns"])
    trigs = [[t["rule"], t["t_event_ns"]] for t in map(
        json.loads, (out / "triggers.jsonl").read_text().splitlines())]
    return {"wall_s": wall, "cpu_pct": 100 * cpu / wall, "peak_rss_mb": memory.peak_rss_mb,
            "peak_pss_mb": memory.peak_pss_mb, "sampling_cpu_s": memory.cpu_s,
            "triggers": sorted(trigs),
            "first_frame_s": None if first_ns is None else (first_ns - start_wall_ns) / 1e9,
            "processes": sorted(processes)}


def bench_sequential(video: str, extractors: str, fps: float) -> dict[str, Any]:
    """Decode once; every kind's extractor on its sampled frames, in turn, in this process; the
    same aligner and rules as fusion; the clips cut at the end."""
    child = subprocess.run([sys.executable, __file__, "--sequential-child", video,
                            "--extractors", extractors, "--fps", str(fps)],
                           capture_output=True, text=True, check=True)
    return json.loads(child.stdout)


def sequential_child(video: str, extractors: str, fps: float) -> dict[str, Any]:
    start = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    memory = TreeMemory(os.getpid())
    kinds = extractors.split(",")
    models = {k: build(k) for k in kinds if stream_of(k) == "video"}
    aligner = Aligner(build_rules(load_rules(), kinds), kinds)
    samplers = {k: FpsSampler(fps) for k in models}
    first: float | None = None
    trigs = []
    with FileSource(video) as src:
        stampers = {k: ObsStamper(src.info.source_id, k, f"{k}#1") for k in models}
        for item in src.items():
            if not isinstance(item, Frame):
                continue
            for kind, model in models.items():
                if not samplers[kind](item.t_ns):
                    continue
                results = model.process(item)
                if first is None:
                    first = time.perf_counter() - start
                observations, bare = stampers[kind].stamp(results, model.watermark_after(item))
                for obs in observations:
                    trigs += aligner.on_obs(obs, 0).trigs
                if bare is not None:
                    trigs += aligner.on_watermark(f"{kind}#1", kind, bare, 0).trigs
        trigs += aligner.finish(0).trigs
        duration_ns = src.info.duration_ns
    clips = tempfile.mkdtemp(prefix="mbseq-")
    for i, trig in enumerate(trigs, 1):
        write_clip(video, trig, Path(clips) / "clips", i, duration_ns)
    wall = time.perf_counter() - start
    memory.stop()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    # this process's CPU, less its memory-sampling thread's (the run rows sample from outside)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime) - memory.cpu_s
    return {"wall_s": wall, "cpu_pct": 100 * cpu / wall, "peak_rss_mb": memory.peak_rss_mb,
            "peak_pss_mb": memory.peak_pss_mb, "sampling_cpu_s": memory.cpu_s,
            "first_frame_s": first,
            "triggers": sorted([t.rule, t.t_event_ns] for t in trigs), "processes": ["one"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default=None, help="default: the WolfgangLanger sample")
    ap.add_argument("--long", action="store_true",
                    help=f"the sample remuxed {LONG_REPEATS} times end to end (118 s)")
    ap.add_argument("--extractors", default="face,quality")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="repetitions of all rows; with more than one, the median speed-up of "
                         "each row is printed at the end (this 2-core VM's runs vary by ~10 %%)")
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated rows to run: sequential (always: the baseline), "
                         "workers1 (run --workers 1), auto (run --workers auto)")
    ap.add_argument("--sequential-child", metavar="VIDEO", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sequential_child:
        print(json.dumps(sequential_child(args.sequential_child, args.extractors, args.fps)))
        return
    video = args.video or str(long_video() if args.long
                              else samples.path("WolfgangLanger_Pexels.mp4"))
    with FileSource(video) as info_src:
        duration = (info_src.info.duration_ns or 0) / 1e9
    analysed = len(args.extractors.split(",")) * int(duration * args.fps)
    chosen = args.rows.split(",")
    unknown = [r for r in chosen if r not in ROWS]
    if unknown or "sequential" not in chosen:
        ap.error(f"--rows: a comma-separated subset of {','.join(ROWS)} with sequential "
                 f"(the baseline); unknown: {','.join(unknown) or '-'}")
    print(f"{Path(video).name}: {duration:.1f} s, extractors {args.extractors} at {args.fps:g} "
          f"fps (~{analysed} extractor-frames), {os.cpu_count()} cores")
    runs = {"sequential": lambda: bench_sequential(video, args.extractors, args.fps),
            "workers1": lambda: bench_run(video, args.extractors, args.fps, "1"),
            "auto": lambda: bench_run(video, args.extractors, args.fps, "auto")}
    speedups: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    same = True
    for rep in range(1, args.repeat + 1):
        # the rows of one repetition run back to back, so a slow spell of the machine hits a
        # row and its baseline alike; each row is compared with its own repetition's baseline
        rows = [(ROWS[key], runs[key]()) for key in ROWS if key in chosen]
        seq = rows[0][1]
        if args.repeat > 1:
            print(f"\nrepetition {rep} of {args.repeat}")
        print(f"{'pipeline':24} {'wall s':>7} {'speed-up':>8} {'CPU %':>6} {'1st frame s':>11} "
              f"{'RSS MB':>7} {'PSS MB':>7} {'PSS x':>6} {'mem CPU s':>9} {'triggers':>8}  processes")
        for name, r in rows:
            first = "-" if r["first_frame_s"] is None else f"{r['first_frame_s']:.2f}"
            speedups.setdefault(name, []).append(seq["wall_s"] / r["wall_s"])
            cpus.setdefault(name, []).append(r["cpu_pct"])
            print(f"{name:24} {r['wall_s']:7.2f} {seq['wall_s'] / r['wall_s']:7.2f}x "
                  f"{r['cpu_pct']:6.0f} {first:>11} {r['peak_rss_mb']:7.0f} "
                  f"{r['peak_pss_mb']:7.0f} {r['peak_pss_mb'] / seq['peak_pss_mb']:5.2f}x "
                  f"{r['sampling_cpu_s']:9.2f} {len(r['triggers']):8d}  {','.join(r['processes'])}")
        if not all(r["triggers"] == seq["triggers"] for _, r in rows):
            same = False
            print("TRIGGERS DIFFER: " + "; ".join(f"{n}: {r['triggers']}" for n, r in rows))
    if args.repeat > 1:
        print(f"\nmedian of {args.repeat} repetitions (each row against its own repetition's "
              "sequential loop)")
        print(f"{'pipeline':24} {'speed-up':>8} {'CPU %':>6}  speed-ups")
        for name, values in speedups.items():
            print(f"{name:24} {statistics.median(values):7.2f}x "
                  f"{statistics.median(cpus[name]):6.0f}  "
                  + " ".join(f"{v:.2f}x" for v in values))
    print("triggers (rule, onset) identical in every row" if same else
          "TRIGGERS DIFFER in some repetition (above)")

if __name__ == "__main__":
    main()
