"""The whole job, ``momentbus run`` (separate processes over ZeroMQ), against a single-process
pipeline that runs the same extractor, fusion and clip code sequentially on the same frames.

    uv run python bench/pipeline.py [--video PATH] [--extractors face,quality] [--fps 10]

Both are measured in one run on this machine: wall time, processed frames/s, real-time factor
(media seconds / wall seconds), CPU % (user + system over wall, 100 % = one core) and peak RSS
(the whole process tree for ``momentbus run``: /proc sampled every 50 ms). The sequential
baseline includes its model loading, as ``run`` does.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from momentbus.daemon import samples
from momentbus.media import FileSource
from momentbus.extractors.base import build
from momentbus.fusion.aligner import Aligner
from momentbus.fusion.rules import build_rules, load_rules
from momentbus.ipc.sampling import FpsSampler
from momentbus.ipc.schema import OBS_TYPES, Frame


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants (MB)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_run(video: str, extractors: str, fps: float) -> dict[str, float]:
    out = tempfile.mkdtemp(prefix="mbpipe-")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "momentbus", "run", video, "--out", out,
                             "--extractors", extractors, "--fps", str(fps), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, tree_rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"momentbus run failed with exit code {code}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    trigs = (Path(out) / "triggers.jsonl").read_text().count("\n")
    return {"wall_s": wall, "cpu_pct": 100 * cpu / wall, "peak_rss_mb": peak, "triggers": trigs}


def bench_sequential(video: str, extractors: str, fps: float) -> dict[str, float]:
    from momentbus.clip.cutter import write_clip

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    kinds = extractors.split(",")
    models = {k: build(k) for k in kinds}
    aligner = Aligner(build_rules(load_rules(), kinds), kinds)
    samplers = {k: FpsSampler(fps) for k in kinds}
    src = FileSource(video)
    trigs = []
    for item in src.items():
        if not isinstance(item, Frame):
            continue
        for kind, model in models.items():
            if not samplers[kind](item.t_ns):
                continue
            payload = model.process(item)
            obs = OBS_TYPES[kind](source_id="seq", group=kind, component=f"{kind}#1",
                                  seq=item.seq, t_ns=item.t_ns, watermark_ns=item.t_ns, **payload)
            trigs += aligner.on_obs(obs, 0).trigs
    trigs += aligner.finish(0).trigs
    out = tempfile.mkdtemp(prefix="mbseq-")
    for i, trig in enumerate(trigs, 1):
        write_clip(video, trig, Path(out) / "clips", i, src.info.duration_ns)
    src.close()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"wall_s": wall, "cpu_pct": 100 * cpu / wall, "peak_rss_mb": r1.ru_maxrss / 1024,
            "triggers": len(trigs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default=None, help="default: the WolfgangLanger sample")
    ap.add_argument("--extractors", default="face,quality")
    ap.add_argument("--fps", type=float, default=10.0)
    args = ap.parse_args()
    video = args.video or str(samples.path("WolfgangLanger_Pexels.mp4"))
    info_src = FileSource(video)
    duration = (info_src.info.duration_ns or 0) / 1e9
    info_src.close()
    processed = len(args.extractors.split(",")) * int(duration * args.fps)
    seq = bench_sequential(video, args.extractors, args.fps)
    run = bench_run(video, args.extractors, args.fps)
    print(f"{Path(video).name}: {duration:.1f} s, extractors {args.extractors} at {args.fps:g} fps "
          f"(~{processed} extractor-frames)")
    print(f"{'pipeline':26} {'wall s':>7} {'frames/s':>9} {'RT factor':>9} {'CPU %':>6} "
          f"{'peak RSS MB':>11} {'triggers':>8}")
    for name, r in (("sequential, one process", seq), ("momentbus run (processes)", run)):
        print(f"{name:26} {r['wall_s']:7.2f} {processed / r['wall_s']:9.1f} "
              f"{duration / r['wall_s']:9.2f} {r['cpu_pct']:6.0f} {r['peak_rss_mb']:11.0f} "
              f"{r['triggers']:8d}")
    print(f"ratio run/sequential: wall {run['wall_s'] / seq['wall_s']:.2f}x, "
          f"throughput {seq['wall_s'] / run['wall_s']:.2f}x, "
          f"memory {run['peak_rss_mb'] / seq['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
