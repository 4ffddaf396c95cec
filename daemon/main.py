"""The daemon process: ``momentbus daemon SOURCE --bind ADDR``.

Reads the source and serves it on the credit-based frame bus. With ``every`` groups the file is
read only as fast as the slowest of them consumes; at end of file every member gets an Eof, and
fusion (``--fusion``) gets the daemon's own Eof so the run can end by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import zmq

from ..ipc import sockets
from ..ipc.framebus import DEFAULT_MEMBER_TIMEOUT_S, DEFAULT_QUEUE_SIZE, FrameBusServer
from ..ipc.reliable import ReliableSender, incarnation_now
from ..ipc.schema import Eof, Frame, Message, Welcome
from ..ipc.vocab import MEMBER_LOST
from ..lifecycle import ExitCode, StopFlag
from ..media import FileSource
from ..traces.tracer import Tracer
from .live import LiveOptions, is_live
from .state import StateFile


@dataclass(frozen=True)
class DaemonConfig:
    source: str
    bind: str
    fusion: str | None = None
    expect: tuple[str, ...] = ()
    wait_s: float = 120.0
    queue_size: int = DEFAULT_QUEUE_SIZE
    member_timeout_s: float = DEFAULT_MEMBER_TIMEOUT_S
    source_id: str | None = None
    require_video: bool = True
    #: resume point file (a restarted daemon starts where every group had acknowledged; for a
    #: live source: the generation to continue from)
    state: str | None = None
    #: a live source (URL, camera, file with ``realtime``): how to open, pace and reconnect it
    live: LiveOptions = field(default_factory=LiveOptions)
    #: a live source: stop after this many seconds of streaming (``None``: until stopped)
    duration_s: float | None = None


#: At the end, how long to wait for fusion to acknowledge the end of the stream.
FUSION_DRAIN_TIMEOUT_S = 120.0


def is_microphone(source: str) -> bool:
    """``mic`` or ``mic:DEVICE`` (a PortAudio device index or name) names a microphone."""
    return source == "mic" or source.startswith("mic:")


class FusionLink:
    """The daemon's reliable link to fusion: the source's Welcome, members given up on, the
    end of the stream."""

    def __init__(self, address: str | None) -> None:
        self.sock = sockets.connect(zmq.DEALER, address, hwm=0) if address else None
        self.link = (ReliableSender(self.sock, "daemon", incarnation_now())
                     if self.sock is not None else None)

    def send(self, msg: Message) -> None:
        if self.link is not None:
            self.link.send(msg)

    def pump(self) -> None:
        if self.link is not None:
            self.link.pump()

    def drain(self, server: FrameBusServer, stop: StopFlag,
              timeout_s: float = FUSION_DRAIN_TIMEOUT_S) -> bool:
        if self.link is None:
            return True
        return self.link.wait(lambda: self.link is None or self.link.all_acked()
                              or stop.is_set(), timeout_s, idle=lambda: server.poll(0))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)


def run(cfg: DaemonConfig, tracer: Tracer, stop: StopFlag) -> int:
    if is_microphone(cfg.source):
        return _run_microphone(cfg, tracer, stop)
    if is_live(cfg.source, cfg.live):
        from .serve_live import run_live

        return run_live(cfg, tracer, stop)
    src = FileSource(cfg.source, cfg.source_id, require_video=cfg.require_video)
    info = src.info
    tracer.source_id = info.source_id
    welcome = Welcome(source_id=info.source_id, width=info.width, height=info.height,
                      time_base=info.time_base, duration_ns=info.duration_ns, live=False)
    fusion = FusionLink(cfg.fusion)
    state_file = StateFile(cfg.state, cfg.source) if cfg.state else None
    resume = state_file.load() if state_file is not None else None

    def member_lost(component: str, group: str) -> None:
        fusion.send(Eof(source_id=info.source_id, component=component, last_seq=-1,
                        t_end_ns=0, reason=MEMBER_LOST))

    server = FrameBusServer(cfg.bind, welcome, trace=tracer.emit,
                            on_bad_message=tracer.bad_message, on_member_lost=member_lost,
                            expected_groups=cfg.expect, queue_size=cfg.queue_size,
                            member_timeout_s=cfg.member_timeout_s)
    fusion.send(welcome)
    tracer.emit("source", path=info.path, width=info.width, height=info.height,
                time_base=str(info.time_base), duration_ns=info.duration_ns, frames=info.frames,
                has_audio=info.has_audio, fps=info.average_fps)
    reason = "end_of_stream"
    last = {"video": (-1, 0), "audio": (-1, 0)}
    code: int = ExitCode.OK
    try:
        missing = server.wait_for_groups(cfg.expect, cfg.wait_s, stop.is_set)
        if missing:
            tracer.emit("member", event="never_joined", groups=missing)
        if resume is not None and state_file is not None and state_file.loaded:
            for stream in ("video", "audio"):
                server.resume_from(stream, resume.resume_seq(stream))
            tracer.emit("source", event="resume", video_seq=resume.resume_seq("video"),
                        audio_seq=resume.resume_seq("audio"))
        t_read = time.perf_counter_ns()
        for item in src.items(audio=server.wants("audio"), lazy=True):
            stream = "video" if isinstance(item, Frame) else "audio"
            if isinstance(item, Frame):
                tracer.emit("timing", stage="read", seq=item.seq, t_ns=item.t_ns,
                            read_ms=round((time.perf_counter_ns() - t_read) / 1e6, 3))
            while not server.can_accept() and not stop.is_set():
                server.poll(20)  # backpressure from `every` groups: wait for credit
                fusion.pump()
            if stop.is_set():
                reason = "stopped"
                break
            server.publish(item)
            server.poll(0)
            fusion.pump()
            if state_file is not None:
                state_file.update(stream, _acked(server, stream))
            last[stream] = (item.seq, item.t_ns)
            t_read = time.perf_counter_ns()
        for stream, (seq, t_ns) in last.items():
            server.finish(stream, seq, t_ns, reason)
        while not server.drained() and not stop.is_set():
            server.poll(100)  # members finish their last items (or are given up on)
            fusion.pump()
            if state_file is not None:
                for stream in ("video", "audio"):
                    state_file.update(stream, _acked(server, stream))
        tracer.emit("summary", role="daemon", frames=src.video_seq, audio_chunks=src.audio_seq,
                    decode_errors=src.decode_errors, reason=reason,
                    damage=src.damage.to_trace(),  # what the read could not get (damage.py)
                    groups={g.name: {"delivered": g.delivered, "dropped": g.dropped}
                            for g in server.groups.values()})
        if not stop.is_set():
            fusion.send(Eof(source_id=info.source_id, component="daemon",
                            last_seq=last["video"][0], t_end_ns=last["video"][1], reason=reason))
            if not fusion.drain(server, stop):
                tracer.error("fusion", "fusion did not acknowledge the end of the stream within "
                             f"{FUSION_DRAIN_TIMEOUT_S:.0f} s")
                code = ExitCode.ERROR
    finally:
        if state_file is not None:
            for stream in ("video", "audio"):
                state_file.update(stream, _acked(server, stream), force=True)
        server.close()
        src.close()
        fusion.close()
    return code


def _acked(server: FrameBusServer, stream: str) -> dict[str, int]:
    return {g.name: g.acked_below for g in server.groups.values() if g.stream == stream}


def _run_microphone(cfg: DaemonConfig, tracer: Tracer, stop: StopFlag) -> int:
    """Serve a live microphone until stopped (Ctrl-C / SIGTERM), then end every member."""
    from .microphone import TIME_BASE, MicrophoneSource
    from ..ipc.vocab import AUDIO_RATE as RATE

    device = (cfg.source[4:] or None) if cfg.source.startswith("mic:") else None
    mic = MicrophoneSource(int(device) if device and device.isdigit() else device,
                           source_id=cfg.source_id or "mic")
    tracer.source_id = mic.source_id
    welcome = Welcome(source_id=mic.source_id, width=0, height=0, time_base=TIME_BASE,
                      duration_ns=None, live=True)
    server = FrameBusServer(cfg.bind, welcome, trace=tracer.emit,
                            on_bad_message=tracer.bad_message, queue_size=cfg.queue_size,
                            member_timeout_s=cfg.member_timeout_s)
    fusion = FusionLink(cfg.fusion)
    fusion.send(welcome)
    tracer.emit("source", path=cfg.source, sample_rate=RATE, live=True)
    last = (-1, 0)
    try:
        server.wait_for_groups(cfg.expect, cfg.wait_s, stop.is_set)
        for chunk in mic.items(stop.is_set):
            if server.can_accept():
                server.publish(chunk)
            else:  # live audio cannot wait: a full `every` queue drops, and says so
                tracer.emit("frame_drop", seqs=[chunk.seq], reason="queue_full", stream="audio")
            server.poll(0)
            fusion.pump()
            last = (chunk.seq, chunk.t_ns)
        server.finish("audio", last[0], last[1], "stopped")
        while not server.drained():
            server.poll(100)
        fusion.send(Eof(source_id=mic.source_id, component="daemon", last_seq=last[0],
                        t_end_ns=last[1], reason="stopped"))
        fusion.drain(server, StopFlag())
    finally:
        tracer.emit("summary", role="daemon", audio_chunks=mic.seq, overflows=mic.overflows,
                    dropped_blocks=mic.dropped_blocks)
        server.close()
        mic.close()
        fusion.close()
    return ExitCode.OK
