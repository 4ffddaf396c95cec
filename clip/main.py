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

from ..ipc import sockets
from ..ipc.schema import Eof, Message, Trig
from ..lifecycle import ExitCode, StopFlag
from ..media import probe
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
    inbox: sockets.Receiver[Message] = sockets.Receiver(pull, (Trig, Eof),
                                                        on_bad=tracer.bad_message, where="clip")
    clips_dir = Path(cfg.out_dir) / "clips"
    written = failed = 0
    try:
        while not stop.is_set():
            msg = inbox.recv(100)
            if msg is None:
                continue
            if isinstance(msg, Eof):
                break
            assert isinstance(msg, Trig)
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
    return ExitCode.OK if failed == 0 else ExitCode.ERROR
