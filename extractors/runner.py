"""The extractor runner process: ``momentbus extractor KIND --daemon ADDR --fusion ADDR``.

It owns everything but the computing: the frame-bus membership and credits, the reliable link
to fusion (observations, watermarks, Hello and Eof are kept until fusion acknowledges them, and
sent again if fusion restarts), heartbeats (from a thread, so a long model call never looks like
a death), ``timing`` trace records and error handling. One bad frame is an ``error`` record and a
watermark advance, not a crash; repeated failures end the process with a non-zero code so the
supervisor can restart it. Every extractor goes through the same steps (see :mod:`.base`).

It says Hello to fusion first and joins the frame bus only once fusion has acknowledged it:
fusion must know a member before the member takes a frame (a group's watermark is the minimum
over the members fusion knows). It never ends because the daemon or fusion went away: it says
Hello to the daemon again, and keeps fusion's messages until they are acknowledged. It ends at
the end of the stream once fusion has everything, when stopped, or after ``daemon_timeout_s``
without the daemon.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from ..ipc import sockets
from ..ipc.curve import HandshakeWatch, PeerRefusedError
from ..ipc.errors import PeerTimeoutError
from ..ipc.framebus import HEARTBEAT_INTERVAL_S, FrameBusClient, SupersededError
from ..ipc.clock import REPORT_MIN_SAMPLES
from ..ipc.linkclock import LinkClock
from ..ipc.reliable import ReliableSender, incarnation_now
from ..ipc.schema import Eof, Heartbeat, Hello, Watermark
from ..ipc.vocab import Encoding, Policy, component_name
from ..lifecycle import ExitCode, StopFlag
from ..traces.tracer import Tracer
from .base import Extractor, Result, build
from .stamping import ObsStamper

#: Consecutive per-frame failures after which the runner gives up.
MAX_CONSECUTIVE_ERRORS = 20
#: At the end of the stream, how long to wait for fusion to acknowledge the last messages
#: (fusion restarting takes a few seconds: its log replays at ~35,000 observations/s).
FUSION_DRAIN_TIMEOUT_S = 120.0
#: A member waits for fusion to acknowledge its Hello before it takes frames; past this long it
#: says so (trace ``waiting_for_fusion``, a warning): fusion answers within one poll (0.1 s)
#: when it is up, so a second means it is down, restarting or at a wrong address.
FUSION_WAIT_NOTICE_S = 1.0


@dataclass(frozen=True)
class RunnerConfig:
    kind: str
    daemon: str
    fusion: str
    backend: str | None = None
    group: str | None = None
    instance: int = 1
    fps: float | None = None
    policy: Policy = "auto"
    encoding: Encoding = "raw"
    credits: int = 2
    join_timeout_s: float = 60.0
    daemon_timeout_s: float = 300.0
    incarnation: int = field(default_factory=incarnation_now)

    @property
    def group_name(self) -> str:
        return self.group or self.kind

    @property
    def component(self) -> str:
        return component_name(self.group_name, self.instance)


def _wait_for_fusion(link: ReliableSender, rseq: int, cfg: RunnerConfig, tracer: Tracer,
                     stop: StopFlag, handshake: HandshakeWatch) -> bool:
    """Wait until fusion acknowledged ``rseq`` (our Hello), at most ``cfg.join_timeout_s``;
    traces ``waiting_for_fusion`` once after :data:`FUSION_WAIT_NOTICE_S`. False on timeout or
    stop.

    Raises:
        PeerRefusedError: fusion refuses our CURVE handshake.
    """
    def acked() -> bool:
        handshake.check(sockets.security().curve)
        return link.acked >= rseq or stop.is_set()

    if link.wait(acked, min(FUSION_WAIT_NOTICE_S, cfg.join_timeout_s)):
        return not stop.is_set()
    tracer.emit("member", event="waiting_for_fusion", group=cfg.group_name, fusion=cfg.fusion)
    tracer.log.warning("waiting_for_fusion", fusion=cfg.fusion,
                       hint="frames are taken only once fusion acknowledges this member")
    if link.wait(acked, max(cfg.join_timeout_s - FUSION_WAIT_NOTICE_S, 0.0)):
        return not stop.is_set()
    tracer.error("join", f"fusion at {cfg.fusion} did not acknowledge this member within "
                 f"{cfg.join_timeout_s:.0f} s (is it running, and is the address right?)")
    return False


class _FusionHeartbeat(threading.Thread):
    """Sends Heartbeat to fusion every 0.5 s on its own socket until stopped (heartbeats may
    be lost: they only say "alive"), with clock stamps; fusion answers each, so both ends keep
    an estimate of the other's wall clock (:attr:`clock`).

    :meth:`stop` wakes it at once through a pipe it polls beside the socket: waiting for its
    next beat instead kept every extractor alive up to 0.5 s after its work was done, cores
    idle at the end of each run (measured with strace on a run's last second)."""

    def __init__(self, address: str, component: str) -> None:
        super().__init__(name="fusion-heartbeat", daemon=True)
        self.address = address
        self.component = component
        self.stopped = threading.Event()
        self.clock = LinkClock()
        self._wake_r, self._wake_w = os.pipe()

    def stop(self) -> None:
        """Stop the thread without waiting for it (join it after). Idempotent."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        os.close(self._wake_w)  # the thread's poll sees the read end at EOF and returns
        if self.ident is None:  # never started: nobody else closes the read end
            os.close(self._wake_r)

    def run(self) -> None:
        try:
            with sockets.connect(zmq.DEALER, self.address, hwm=10) as sock:
                self._beat(sock)
        finally:
            os.close(self._wake_r)

    def _beat(self, sock: zmq.Socket[Any]) -> None:
        replies: sockets.Receiver[Heartbeat] = sockets.Receiver(
            sock, (Heartbeat,), where="the fusion heartbeat")
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_beat = time.monotonic()
        while not self.stopped.is_set():
            if time.monotonic() >= next_beat:
                sockets.try_send(sock, Heartbeat(component=self.component,
                                                 wall_ns=time.time_ns(),
                                                 clock=self.clock.stamps()))
                next_beat = time.monotonic() + HEARTBEAT_INTERVAL_S
            ready = dict(poller.poll(max(1, int((next_beat - time.monotonic()) * 1000))))
            if sock not in ready:
                continue  # time for a beat, or stopped
            reply = replies.recv(0)
            if reply is not None:
                self.clock.receive(reply.clock)
                est = self.clock.estimate()
                if est is None or est.samples < REPORT_MIN_SAMPLES:
                    next_beat = time.monotonic()  # a few quick rounds: both ends converge


def run(cfg: RunnerConfig, tracer: Tracer, stop: StopFlag, extractor: Extractor | None = None,
        options: dict[str, Any] | None = None) -> int:
    """Serve one extractor until end of stream or stop; returns the process exit code."""
    extractor = extractor or build(cfg.kind, cfg.backend, **(options or {}))
    hello = Hello(component=cfg.component, group=cfg.group_name, pid=os.getpid(),
                  policy=cfg.policy, fps=cfg.fps, encoding=cfg.encoding,
                  streams=[extractor.stream], instance=cfg.instance,
                  incarnation=cfg.incarnation)
    heartbeat = _FusionHeartbeat(cfg.fusion, cfg.component)
    processed = errors = consecutive = 0
    code: int = ExitCode.OK
    clean = False  # only a clean end says "bye": after a crash the daemon keeps our frames
    fusion_handshake = HandshakeWatch("fusion", cfg.fusion)
    with sockets.connect(zmq.DEALER, cfg.fusion, hwm=0,
                         before_connect=fusion_handshake.attach) as fusion_sock:
        link = ReliableSender(fusion_sock, cfg.component, cfg.incarnation)
        # fusion must know this member before the daemon gives it a frame (a group's watermark
        # is the minimum over the members fusion knows: frames taken by a member it has not
        # heard of could be released past, and come late), so the frame bus comes second
        known = False
        try:
            known = _wait_for_fusion(link, link.send(hello), cfg, tracer, stop,
                                     fusion_handshake)
        except PeerRefusedError as e:  # keys that cannot work: a user mistake, exit 2
            tracer.error("join", e)
            raise
        finally:
            fusion_handshake.close()
            if not known:  # never joined: the heartbeat never started, the model is unused
                heartbeat.stop()
                extractor.close()
        if not known:
            return ExitCode.OK if stop.is_set() else ExitCode.FUSION_UNREACHABLE
        with FrameBusClient(cfg.daemon, hello, credits=cfg.credits,
                            daemon_timeout_s=cfg.daemon_timeout_s) as client:
            def to_fusion(msg: Any) -> None:
                if not link.has_room():  # fusion is down: wait (the source waits with us)
                    link.wait(lambda: link.has_room() or stop.is_set(), float("inf"),
                              idle=client.heartbeat)
                link.send(msg)

            try:
                try:
                    welcome = client.join(cfg.join_timeout_s, stop.is_set)
                except PeerTimeoutError as e:
                    tracer.error("join", e)
                    return ExitCode.JOIN_TIMEOUT
                except PeerRefusedError as e:  # keys that cannot work: a user mistake, exit 2
                    tracer.error("join", e)
                    raise
                tracer.source_id = welcome.source_id
                stamper = ObsStamper(welcome.source_id, cfg.group_name, cfg.component)

                def send_watermark(t_ns: int | None) -> None:
                    if t_ns is not None:
                        to_fusion(Watermark(source_id=welcome.source_id, group=cfg.group_name,
                                            component=cfg.component, t_ns=t_ns))

                def send(results: list[Result], watermark_ns: int, latency_ns: int = 0) -> None:
                    observations, bare = stamper.stamp(results, watermark_ns, latency_ns)
                    for obs in observations:
                        to_fusion(msgspec.structs.replace(obs, sent_wall_ns=time.time_ns()))
                    send_watermark(bare)

                def clock_reports() -> None:
                    for peer, clock in (("daemon", client.clock), ("fusion", heartbeat.clock)):
                        est = clock.report_due()
                        if est is not None:
                            tracer.emit("member", event="clock", member=cfg.component,
                                        group=cfg.group_name, peer=peer, **est.fields())

                heartbeat.start()
                tracer.emit("member", event="ready", group=cfg.group_name, policy=cfg.policy,
                            fps=cfg.fps, instance=cfg.instance, incarnation=cfg.incarnation)
                while not stop.is_set():
                    link.pump()
                    clock_reports()
                    item = client.recv(100)
                    if item is None:
                        continue
                    if isinstance(item, Eof):
                        send(extractor.flush(), item.t_end_ns)
                        to_fusion(Eof(source_id=welcome.source_id, component=cfg.component,
                                      last_seq=item.last_seq, t_end_ns=stamper.watermark_ns,
                                      reason=item.reason))
                        clean = True
                        break
                    received_wall = time.time_ns()
                    if getattr(item, "gaps", None):
                        # frames skipped for us (sampling, `latest` drops) will never be processed:
                        # say so now, so a rule waiting on this group need not wait for our work
                        send_watermark(
                            stamper.advance(item.t_ns - 1 - extractor.max_lateness_ns))
                    t0 = time.perf_counter_ns()
                    try:
                        results = extractor.process(item)
                    except Exception as e:  # one item's backend failure must not kill us
                        errors += 1
                        consecutive += 1
                        tracer.error("process", e, seq=item.seq, t_ns=item.t_ns)
                        send_watermark(stamper.advance(extractor.watermark_after(item)))
                        client.done()
                        if consecutive >= MAX_CONSECUTIVE_ERRORS:
                            tracer.error("process",
                                         f"{consecutive} consecutive failures; giving up")
                            code = ExitCode.EXTRACTOR_FAILED
                            break
                        continue
                    consecutive = 0
                    process_ns = time.perf_counter_ns() - t0
                    # the capture stamp is the daemon's wall clock: moved to ours by the measured
                    # offset, so another host's clock error does not show up as latency
                    captured = client.clock.to_local_ns(item.capture_wall_ns)
                    latency_ns = time.time_ns() - captured
                    send(results, extractor.watermark_after(item), latency_ns)
                    client.done()
                    processed += 1
                    tracer.emit("timing", seq=item.seq, t_ns=item.t_ns, stage="process",
                                process_ms=round(process_ns / 1e6, 3),
                                wait_ms=round((received_wall - captured) / 1e6, 3),
                                latency_ms=round(latency_ns / 1e6, 3),
                                gaps=msgspec.to_builtins(item.gaps) if getattr(item, "gaps", None)
                                else None)
                if clean and not link.wait(lambda: link.all_acked() or stop.is_set(),
                                           FUSION_DRAIN_TIMEOUT_S, idle=client.heartbeat):
                    tracer.error("fusion", f"fusion did not acknowledge the last {link.unacked} "
                                 f"message(s) within {FUSION_DRAIN_TIMEOUT_S:.0f} s")
                    code = ExitCode.FUSION_UNREACHABLE
            except SupersededError as e:
                tracer.error("frame_bus", e)
                code = ExitCode.SUPERSEDED
            except PeerTimeoutError as e:  # the daemon is gone: not the end of the stream
                tracer.error("frame_bus", e)
                code = ExitCode.SOURCE_LOST
            finally:
                heartbeat.stop()
                tracer.emit("member", event="leave", group=cfg.group_name, processed=processed,
                            errors=errors, bad_messages=client.bad_messages,
                            resent_to_fusion=link.resends, rejoins=client.rejoins)
                if clean or stop.is_set():
                    client.leave()
                extractor.close()
                if heartbeat.is_alive():
                    heartbeat.join(2)
    return code
