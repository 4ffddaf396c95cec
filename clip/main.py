"""The clip extractor process: ``momentbus clip SOURCE --bind ADDR --out DIR``.

Receives TRIGs from fusion on a reliable link (:mod:`momentbus.ipc.reliable`) and writes one
clip with a sidecar per TRIG, acknowledging each TRIG only once its clip and sidecar are on disk:
a clip role killed mid-cut gets the TRIG again when it restarts. A clip is named from its TRIG,
so cutting a TRIG twice writes the same file. Exits after fusion's Eof, every clip written. For a
file source every TRIG can be cut at once (its post-roll is already on disk); a live source
(``--frames ADDR``) is cut from a ring of its packets once the post-roll arrived
(:mod:`momentbus.clip.live`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from ..ipc import sockets
from ..ipc.reliable import ReliableReceiver, incarnation_now
from ..ipc.schema import Eof, Message, Trig
from ..lifecycle import ExitCode, StopFlag
from ..media import probe
from ..traces.tracer import Tracer
from .cutter import ClipError, write_clip

#: The last acknowledgement must leave before the socket closes.
ACK_LINGER_MS = 2000


@dataclass(frozen=True)
class ClipConfig:
    source: str
    bind: str
    out_dir: str
    clip_format: str = "auto"
    mode: str = "copy"
    #: a live source: the daemon's frame bus, whose encoded packets fill the ring (clip/live.py)
    frames: str | None = None
    #: live: seconds of packets the ring keeps behind the newest: a TRIG needs its pre-roll,
    #: and it arrives after its event and waits for its post-roll, so at least the longest
    #: pre-roll + post-roll of the rules plus the pipeline's latency
    ring_s: float = 20.0
    #: live: bound on the ring's payload bytes
    ring_bytes: int = 64 * 1024 * 1024
    #: live: give up on a daemon silent for this long (s)
    daemon_timeout_s: float = 300.0


def run(cfg: ClipConfig, tracer: Tracer, stop: StopFlag) -> int:
    if cfg.frames:
        from .live import run_live

        return run_live(cfg, tracer, stop)
    info = probe(cfg.source, require_video=False)
    tracer.source_id = info.source_id
    router = sockets.bind(zmq.ROUTER, cfg.bind, linger_ms=ACK_LINGER_MS)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    inbox: ReliableReceiver[Message] = ReliableReceiver(
        router, (Trig, Eof), incarnation_now(), on_bad=tracer.bad_message, where="clip")
    clips_dir = Path(cfg.out_dir) / "clips"
    written = failed = 0
    try:
        while not stop.is_set():
            delivery = inbox.recv(100)
            if delivery is None:
                inbox.flush_acks()
                continue
            msg = delivery.msg
            if isinstance(msg, Eof):
                inbox.done(delivery)
                break
            assert isinstance(msg, Trig)
            t0 = time.perf_counter()
            try:
                res = write_clip(cfg.source, msg, clips_dir, msg.index, info.duration_ns,
                                 clip_format=cfg.clip_format, mode=cfg.mode)
            except (ClipError, OSError) as e:  # the sidecar says so; the role goes on
                failed += 1
                sidecar = getattr(e, "sidecar", None)
                tracer.error("clip", e, rule=msg.rule, t_event_ns=msg.t_event_ns,
                             sidecar=str(sidecar) if sidecar else None)
            else:
                written += 1
                tracer.emit("clip", rule=msg.rule, path=str(res.path), t_event_ns=msg.t_event_ns,
                            container=res.container, mode=res.mode, reused=res.reused,
                            requested_start_ns=res.requested_start_ns,
                            requested_end_ns=res.requested_end_ns,
                            actual_start_ns=res.actual_start_ns, actual_end_ns=res.actual_end_ns,
                            cut_ms=round((time.perf_counter() - t0) * 1000, 2))
            inbox.done(delivery)  # written (or failed for good): fusion may forget it
            inbox.flush_acks()
        tracer.emit("summary", role="clip", clips=written, failed=failed,
                    duplicates=inbox.duplicates)
    finally:
        inbox.flush_acks(force=True)
        router.close(ACK_LINGER_MS)
        sockets.remove_ipc_file(cfg.bind)
    return ExitCode.OK if failed == 0 else ExitCode.ERROR
