"""The extractor runner process: ``momentbus extractor KIND --daemon ADDR --fusion ADDR``.

It owns everything but the computing: the frame-bus membership and credits, the PUSH socket to
fusion, heartbeats (from a thread, so a long model call never looks like a death), watermark
messages, ``timing`` trace records and error handling. One bad frame is an ``error`` record and a
watermark advance, not a crash; repeated failures end the process with a non-zero code so the
supervisor can restart it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from ..ipc import sockets
from ..ipc.errors import PeerTimeoutError
from ..ipc.framebus import HEARTBEAT_INTERVAL_S, FrameBusClient
from ..ipc.schema import OBS_TYPES, Eof, Heartbeat, Hello, Watermark
from ..supervisor import StopFlag
from ..traces.tracer import Tracer
from .base import Extractor, StreamingExtractor, build

#: Consecutive per-frame failures after which the runner gives up (exit code 3).
MAX_CONSECUTIVE_ERRORS = 20
#: How long a send to fusion may block (fusion's queue full or fusion gone) before giving up.
FUSION_SEND_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class RunnerConfig:
    kind: str
    daemon: str
    fusion: str
    backend: str | None = None
    group: str | None = None
    index: int = 1
    fps: float | None = None
    policy: str = "every"
    encoding: str = "raw"
    credits: int = 2
    join_timeout_s: float = 60.0

    @property
    def group_name(self) -> str:
        return self.group or self.kind

    @property
    def component(self) -> str:
        return f"extractor:{self.group_name}#{self.index}"


class _FusionHeartbeat(threading.Thread):
    """Sends Heartbeat to fusion every 0.5 s on its own PUSH socket until stopped."""

    def __init__(self, address: str, component: str) -> None:
        super().__init__(name="fusion-heartbeat", daemon=True)
        self.address = address
        self.component = component
        self.stopped = threading.Event()

    def run(self) -> None:
        sock = sockets.connect(zmq.PUSH, self.address, hwm=10)
        try:
            while not self.stopped.wait(HEARTBEAT_INTERVAL_S):
                sockets.try_send(sock, Heartbeat(component=self.component, wall_ns=time.time_ns()))
        finally:
            sock.close(0)


def run(cfg: RunnerConfig, tracer: Tracer, stop: StopFlag, extractor: Extractor | None = None,
        options: dict[str, Any] | None = None) -> int:
    """Serve one extractor until end of stream or stop; returns the process exit code."""
    extractor = extractor or build(cfg.kind, cfg.backend, **(options or {}))
    hello = Hello(component=cfg.component, group=cfg.group_name, pid=os.getpid(),
                  policy=cfg.policy, fps=cfg.fps, encoding=cfg.encoding,
                  streams=[extractor.stream])
    client = FrameBusClient(cfg.daemon, hello, credits=cfg.credits)
    fusion = sockets.connect(zmq.PUSH, cfg.fusion, hwm=sockets.DEFAULT_HWM, linger_ms=5000)
    fusion.setsockopt(zmq.SNDTIMEO, FUSION_SEND_TIMEOUT_MS)
    heartbeat = _FusionHeartbeat(cfg.fusion, cfg.component)
    source_id = ""
    processed = errors = consecutive = 0
    code = 0
    clean = False  # only a clean end says "bye": after a crash the daemon keeps our frames
    try:
        try:
            welcome = client.join(cfg.join_timeout_s, stop.is_set)
        except PeerTimeoutError as e:
            tracer.error("join", e)
            return 4
        source_id = welcome.source_id
        tracer.source_id = source_id

        def send_watermark(t_ns: int) -> None:
            sockets.send(fusion, Watermark(source_id=source_id, group=cfg.group_name,
                                           component=cfg.component, t_ns=t_ns))

        sockets.send(fusion, hello)
        heartbeat.start()
        tracer.emit("member", event="ready", group=cfg.group_name, policy=cfg.policy, fps=cfg.fps)
        wm = -1
        while not stop.is_set():
            item = client.recv(100)
            if item is None:
                continue
            if isinstance(item, Eof):
                for seq, t_ns, payload in extractor.flush():
                    _send_obs(fusion, cfg, source_id, seq, t_ns, max(wm, t_ns), payload, 0)
                final = max(wm, item.t_end_ns)
                send_watermark(final)
                sockets.send(fusion, Eof(source_id=source_id, component=cfg.component,
                                         last_seq=item.last_seq, t_end_ns=final, reason=item.reason))
                if item.reason == "source_lost":
                    tracer.error("frame_bus", "the daemon stopped answering; ending")
                    code = 5
                clean = True
                break
            received_wall = time.time_ns()
            if getattr(item, "gaps", None) and not isinstance(extractor, StreamingExtractor):
                # frames skipped for us (sampling, `latest` drops) will never be processed: say
                # so now, so a rule waiting on this group need not wait for our processing
                early = item.t_ns - 1 - extractor.max_lateness_ns
                if early > wm:
                    wm = early
                    send_watermark(wm)
            t0 = time.perf_counter_ns()
            try:
                payload = extractor.process(item)
            except Exception as e:  # a backend failure on one frame must not kill the process
                errors += 1
                consecutive += 1
                tracer.error("process", e, seq=item.seq, t_ns=item.t_ns)
                wm = max(wm, extractor.watermark_ns if isinstance(extractor, StreamingExtractor)
                         else item.t_ns - extractor.max_lateness_ns)
                send_watermark(wm)
                client.done()
                if consecutive >= MAX_CONSECUTIVE_ERRORS:
                    tracer.error("process", f"{consecutive} consecutive failures; giving up")
                    code = 3
                    break
                continue
            consecutive = 0
            process_ns = time.perf_counter_ns() - t0
            latency_ns = time.time_ns() - item.capture_wall_ns
            if isinstance(extractor, StreamingExtractor):
                # results first (their times are before the new watermark), then the watermark
                new_wm = max(wm, extractor.watermark_ns)
                for seq, t_ns, result in payload:
                    _send_obs(fusion, cfg, source_id, seq, t_ns, wm, result, latency_ns)
                if new_wm > wm:
                    send_watermark(new_wm)
                wm = new_wm
            else:
                wm = max(wm, item.t_ns - extractor.max_lateness_ns)
                _send_obs(fusion, cfg, source_id, item.seq, item.t_ns, wm, payload, latency_ns)
            client.done()
            processed += 1
            tracer.emit("timing", seq=item.seq, t_ns=item.t_ns, stage="process",
                        process_ms=round(process_ns / 1e6, 3),
                        wait_ms=round((received_wall - item.capture_wall_ns) / 1e6, 3),
                        latency_ms=round(latency_ns / 1e6, 3),
                        gaps=getattr(item, "gaps", None) or None)
    except zmq.Again:
        tracer.error("fusion", "fusion did not accept observations for 10 s; ending")
        code = 6
    finally:
        heartbeat.stopped.set()
        tracer.emit("member", event="leave", group=cfg.group_name, processed=processed,
                    errors=errors, bad_messages=client.bad_messages)
        if clean or stop.is_set():
            client.leave()
        client.close()
        fusion.close(5000)
        extractor.close()
        if heartbeat.is_alive():
            heartbeat.join(2)
    return code


def _send_obs(sock: zmq.Socket, cfg: RunnerConfig, source_id: str, seq: int, t_ns: int,
              wm: int, payload: dict[str, Any], latency_ns: int) -> None:
    cls = OBS_TYPES[cfg.kind]
    obs = cls(source_id=source_id, group=cfg.group_name, component=cfg.component, seq=seq,
              t_ns=t_ns, watermark_ns=wm, latency_ns=latency_ns, **payload)
    sockets.send(sock, obs)
