"""Clip start-edge error on the live ring: mp4 edit list vs a keyframe-aligned copy of it.

    uv run python bench/ring_edges.py [--windows 200] [--seed 1]

The sample's real packets (H.264 High, B-frames, a keyframe every 72 frames) go into a
:class:`~momentbus.clip.ring.PacketRing` as a live source would send them; for seeded random
windows both clips are written and *decoded* with PyAV, and the first presented frame is found
in the source by content (a hash of its pixels), so the error is what a viewer sees, in frames:
``index(first presented) - index(first frame at or after t_start)``. Also prints packets stored
vs frames presented and the write time. Not a test; tests/LIVE_NOTES.md has a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
from momentbus.clip.ring import ClipMode, PacketRing, packets_from_file, write_ring_clip
from momentbus.daemon import samples
from momentbus.ipc.timebase import pts_to_ns

S = 1_000_000_000
T0 = 1_000 * S


def frame_hash(frame: av.VideoFrame) -> str:
    return hashlib.sha1(frame.to_ndarray(format="gray").tobytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--write-examples", metavar="DIR",
                    help="also write the clips [16.0 s, +82.5 frames] of both modes into DIR "
                         "(edit_list.mp4, keyframe.mp4) for a second decoder to check")
    args = ap.parse_args()
    path = samples.path()
    times: list[int] = []
    index_of: dict[str, int] = {}
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            assert f.pts is not None and f.time_base is not None  # an mp4 gives both
            times.append(T0 + pts_to_ns(f.pts, Fraction(f.time_base)))
            index_of.setdefault(frame_hash(f), i)
    descs, packets = packets_from_file(path, t0_ns=T0)
    ring = PacketRing(max_pre_roll_ns=60 * S, max_bytes=200_000_000)
    ring.start_generation(1, descs)
    for p in packets:
        ring.push(p)
    modes: tuple[ClipMode, ...] = ("edit_list", "keyframe")
    if args.write_examples:
        Path(args.write_examples).mkdir(parents=True, exist_ok=True)
        t_start = T0 + 16 * S
        t_end = t_start + 82 * 1001 * S // 24000 + 20_000_000
        for mode in modes:
            clip = write_ring_clip(ring, t_start, t_end,
                                   Path(args.write_examples) / f"{mode}.mp4", mode=mode)
            print(json.dumps({"example": str(clip.path), "stored": clip.video_packets,
                              "presented": clip.shown_frames, "lead_in": clip.lead_in_packets}))
    rng = random.Random(args.seed)
    rows: dict[ClipMode, list[dict[str, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.windows):
            t_start = T0 + rng.randrange(0, times[-1] - T0 - 2 * S)
            t_end = t_start + rng.randrange(S // 2, 2 * S)
            wanted = next(i for i, t in enumerate(times) if t >= t_start)
            for mode, rs in rows.items():
                t0 = time.perf_counter()
                clip = write_ring_clip(ring, t_start, t_end, Path(tmp) / f"{mode}{k}.mp4",
                                       mode=mode)
                ms = (time.perf_counter() - t0) * 1000
                with av.open(str(clip.path)) as c:
                    frames = list(c.decode(video=0))
                got = index_of[frame_hash(frames[0])]
                rs.append({"error_frames": got - wanted, "stored": clip.video_packets,
                           "presented": len(frames), "write_ms": ms})
    for mode, rs in rows.items():
        errors = [r["error_frames"] for r in rs]
        print(json.dumps({
            "mode": mode, "windows": len(rs),
            "start_error_frames": {"min": min(errors), "median": statistics.median(errors),
                                   "max": max(errors),
                                   "mean_abs": round(statistics.fmean(map(abs, errors)), 2)},
            "stored_per_presented": round(sum(r["stored"] for r in rs)
                                          / sum(r["presented"] for r in rs), 3),
            "write_ms_median": round(statistics.median(r["write_ms"] for r in rs), 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
