"""The clip extractor process: ``momentbus clip SOURCE --bind ADDR --out DIR``.

Receives TRIGs (PULL) and writes one clip with a sidecar per TRIG; exits after fusion's Eof once
every pending clip is written. For a file source every TRIG can be cut at once (its post-roll is
already on disk).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from ..daemon.source import probe
from ..ipc import sockets
from ..ipc.errors import DecodeError
from ..ipc.schema import Eof, Trig
from ..supervisor import StopFlag
from ..traces.tracer import Tracer
from .cutter import ClipError, write_clip


@dataclass(frozen=True)
class ClipConfig:
    source: str
    bind: str
    out_dir: str


def run(cfg: ClipConfig, tracer: Tracer, stop: StopFlag) -> int:
    info = probe(cfg.source, require_video=False)
    tracer.source_id = info.source_id
    pull = sockets.bind(zmq.PULL, cfg.bind)
    clips_dir = Path(cfg.out_dir) / "clips"
    written = failed = 0
    try:
        while not stop.is_set():
            if not pull.poll(100):
                continue
            try:
                _, msg = sockets.recv(pull)
            except DecodeError as e:
                tracer.bad_message(e)
                continue
            if isinstance(msg, Eof):
                break
            if not isinstance(msg, Trig):
                tracer.bad_message(DecodeError(f"unexpected {type(msg).__name__} at clip"))
                continue
            t0 = time.perf_counter()
            try:
                res = write_clip(cfg.source, msg, clips_dir, written + failed + 1, info.duration_ns)
            except (ClipError, OSError) as e:
                failed += 1
                tracer.error("clip", e, rule=msg.rule, t_event_ns=msg.t_event_ns)
                continue
            written += 1
            tracer.emit("clip", rule=msg.rule, path=str(res.path), t_event_ns=msg.t_event_ns,
                        requested_start_ns=res.requested_start_ns,
                        requested_end_ns=res.requested_end_ns,
                        actual_start_ns=res.actual_start_ns, actual_end_ns=res.actual_end_ns,
                        cut_ms=round((time.perf_counter() - t0) * 1000, 2))
        tracer.emit("summary", role="clip", clips=written, failed=failed)
    finally:
        pull.close(0)
        sockets.remove_ipc_file(cfg.bind)
    return 0 if failed == 0 else 1
