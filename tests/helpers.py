"""Helpers for tests that start momentbus processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av


def momentbus_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "momentbus", *args]


def run_momentbus(*args: str, timeout: float = 240, env: dict | None = None,
                  **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(momentbus_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def wait_for_trace(proc: subprocess.Popen, trace: Path, predicate,
                   timeout_s: float = 120) -> list[dict]:
    """Block until records in ``trace`` satisfy ``predicate``; returns them. Polls the child
    (``proc.wait`` with a short timeout), never sleeps; fails if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if trace.exists():
            records = [json.loads(line) for line in trace.read_text().splitlines()
                       if line.endswith("}")]
            hits = [r for r in records if predicate(r)]
            if hits:
                return hits
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the expected trace record never came"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)


@contextlib.contextmanager
def reaped(proc: subprocess.Popen):
    """Yield ``proc``; whatever happens in the block, it is not left running after it."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (orphan check)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def mux_call_into_video(video: str, wav: str, dest: str, offset: Fraction) -> None:
    """The sample video's frames (remuxed) with the call's samples (lossless PCM) starting at
    ``offset`` seconds."""
    with av.open(video) as vin, av.open(wav) as ain, av.open(dest, "w", format="matroska") as out:
        vs = out.add_stream_from_template(vin.streams.video[0])
        rate = ain.streams.audio[0].rate
        as_ = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        as_.time_base = Fraction(1, rate)
        for packet in vin.demux(vin.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = vs
            out.mux(packet)
        start = int(offset * rate)
        for frame in ain.decode(audio=0):
            frame.pts = start + frame.pts
            frame.time_base = Fraction(1, rate)
            for packet in as_.encode(frame):
                out.mux(packet)
        for packet in as_.encode(None):
            out.mux(packet)
