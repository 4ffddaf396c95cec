"""Extractor cost on this machine: ms per frame for each kind and backend at 640x360 and
1280x720, and the speech real-time factor.

    uv run python bench/extractors.py [--frames 40] [--json FILE] [--one-core]

Frames are real (the sample video, 640x360; upscaled with INTER_CUBIC for 720p). Each
configuration runs ``--frames`` frames after 3 warm-up frames, in one process, one at a time;
the table shows the median and min-max wall ms per frame, and the median CPU ms (the whole
process: every thread a backend or OpenCV starts). ``--one-core`` confines the process to one
core first, as a run that packs several processes on the cores leaves each about one. Speech:
the 30 s sample call, whole pipeline (VAD + transcription), wall time / audio duration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from msgspec.structs import replace

import cv2

from momentbus.daemon import samples
from momentbus.media import FileSource
from momentbus.extractors.base import build
from momentbus.extractors.offline import extract_file
from momentbus.ipc.schema import Frame

CONFIGS = [("quality", "opencv"), ("face", "insightface"), ("face", "mediapipe"),
           ("pose", "mediapipe"), ("gesture", "mediapipe")]
SIZES = {"640x360": (640, 360), "1280x720": (1280, 720)}


def frames(n: int) -> list[Frame]:
    src = FileSource(samples.path("WolfgangLanger_Pexels.mp4"))
    out = [f for f in src.items() if isinstance(f, Frame) and f.seq % 4 == 0][: n + 3]
    src.close()
    return out


def resized(frame: Frame, size: tuple[int, int]) -> Frame:
    if (frame.width, frame.height) == size:
        return frame
    img = cv2.resize(frame.image(), size, interpolation=cv2.INTER_CUBIC)
    return replace(frame, width=size[0], height=size[1], data=img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--one-core", action="store_true",
                    help="confine this process (and the threads its models start) to one core")
    args = ap.parse_args()
    if args.one_core:  # every thread started so far (imports), and so every later one
        core = {min(os.sched_getaffinity(0))}
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), core)
    base = frames(args.frames)
    records = []
    print(f"{'kind':8} {'backend':12} {'size':9} {'median ms':>9} {'min-max ms':>14} "
          f"{'CPU ms':>7}")
    for kind, backend in CONFIGS:
        ex = build(kind, backend)
        for size_name, size in SIZES.items():
            batch = [resized(f, size) for f in base]
            times, cpu = [], []
            for i, f in enumerate(batch):
                t0, c0 = time.perf_counter(), time.process_time()
                ex.process(f)
                if i >= 3:
                    times.append((time.perf_counter() - t0) * 1000)
                    cpu.append((time.process_time() - c0) * 1000)
            med = statistics.median(times)
            cpu_med = statistics.median(cpu)
            print(f"{kind:8} {backend:12} {size_name:9} {med:9.1f} "
                  f"{min(times):6.1f}-{max(times):6.1f} {cpu_med:7.1f}")
            records.append({"kind": kind, "backend": backend, "size": size_name,
                            "median_ms": round(med, 2), "cpu_ms": round(cpu_med, 2),
                            "min_ms": round(min(times), 2),
                            "max_ms": round(max(times), 2), "frames": len(times)})
        ex.close()
    wav = samples.path("sample.wav")
    ex = build("speech")
    t0 = time.perf_counter()
    segments = list(extract_file("speech", str(wav), extractor=ex))
    wall = time.perf_counter() - t0
    rtf = wall / 30.0
    print(f"speech   faster-whisper 30 s call: {wall:.2f} s, real-time factor {rtf:.3f} "
          f"({len(segments)} segments)")
    records.append({"kind": "speech", "backend": "faster-whisper", "audio_s": 30.0,
                    "wall_s": round(wall, 3), "rtf": round(rtf, 4)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
