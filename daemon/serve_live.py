"""The daemon on a live source: ``momentbus daemon rtsp://... --bind ADDR``.

The :class:`~momentbus.daemon.live.LiveReader` thread connects, reads and reconnects; this main
loop owns the sockets: it publishes frames and audio to the extractors' groups and the encoded
packets (each generation introduced by a :class:`~momentbus.ipc.schema.StreamInfo`) to the clip
role's ``packets`` group, never waiting for a reader (video groups default to ``latest``; an
``every`` group's queue is bounded, oldest dropped and traced). The source's events become
``source`` trace records. It runs until SIGTERM/SIGINT or ``--duration``, then ends gracefully:
what was read is published, every member gets its Eof (bounded wait), fusion gets the daemon's
Eof, so triggers already fired still get their clips.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..clip.ring import EncodedPacket
from ..ipc.framebus import FrameBusServer
from ..ipc.schema import AudioChunk, Eof, Frame, Packet, StreamInfo, Welcome
from ..ipc.vocab import MEMBER_LOST
from ..lifecycle import ExitCode, StopFlag
from ..traces.tracer import Tracer
from .live import (GenerationEnd, GenerationStart, LiveItem, LiveReader, Mailbox, ReaderFinished,
                   SourceEvent, probe_live)
from .main import DaemonConfig, FusionLink

#: At the end, how long members get to finish the items they hold (a live run's stop must not
#: hang on a stalled extractor).
LIVE_DRAIN_TIMEOUT_S = 10.0
#: ... and how long fusion gets to acknowledge the daemon's Eof.
LIVE_FUSION_DRAIN_TIMEOUT_S = 30.0


def _load_generation(path: str | None) -> int:
    """The last generation a previous daemon of this run used (0: none): a restarted daemon
    continues the numbering, so the clip role's ring sees generations only increase."""
    if not path:
        return 0
    try:
        doc = json.loads(Path(path).read_text())
        return max(0, int(doc.get("live_generation", 0)))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _save_generation(path: str | None, generation: int) -> None:
    if not path:
        return
    tmp = Path(path).with_name(f".{Path(path).name}.part")
    try:
        tmp.write_text(json.dumps({"live_generation": generation}))
        os.replace(tmp, path)
    except OSError:
        pass  # numbering continues from 1 after a restart: the clip role starts a fresh ring


def run_live(cfg: DaemonConfig, tracer: Tracer, stop: StopFlag) -> int:
    """Serve a live source until stopped (see the module doc).

    Raises:
        LiveOptionError, SourceNotFoundError, SourceUnavailableError, NotMediaError: the source
            cannot be used (checked by one probing connection before anything is bound).
    """
    info = probe_live(cfg.source, cfg.live, cfg.source_id)
    tracer.source_id = info.source_id
    welcome = Welcome(source_id=info.source_id, width=info.width, height=info.height,
                      time_base=info.time_base, duration_ns=None, live=True)
    fusion = FusionLink(cfg.fusion)
    joined: list[tuple[str, str]] = []

    def member_lost(component: str, group: str) -> None:
        fusion.send(Eof(source_id=info.source_id, component=component, last_seq=-1,
                        t_end_ns=0, reason=MEMBER_LOST))

    server = FrameBusServer(cfg.bind, welcome, trace=tracer.emit,
                            on_bad_message=tracer.bad_message, on_member_lost=member_lost,
                            on_member_joined=lambda group, stream: joined.append((group, stream)),
                            expected_groups=cfg.expect, queue_size=cfg.queue_size,
                            member_timeout_s=cfg.member_timeout_s)
    fusion.send(welcome)
    tracer.emit("source", event="open", path=info.source, live=True, kind=info.kind,
                width=info.width, height=info.height, time_base=str(info.time_base),
                codec=info.codec, fps=info.fps, has_audio=info.has_audio,
                open_timeout_s=cfg.live.open_timeout_s, read_timeout_s=cfg.live.read_timeout_s)
    mailbox = Mailbox()
    reader: LiveReader | None = None
    out = _Publisher(server, tracer, info.source_id, cfg.state)
    reason = "stopped"
    code: int = ExitCode.OK
    try:
        missing = server.wait_for_groups(cfg.expect, cfg.wait_s, stop.is_set)
        if missing:
            tracer.emit("member", event="never_joined", groups=missing)
        joined.clear()
        reader = LiveReader(cfg.source, info.source_id, cfg.live, mailbox,
                            audio=server.wants("audio"), packets=True,
                            max_frame_pixels=info.width * info.height,
                            first_generation=_load_generation(cfg.state) + 1)
        reader.start()
        started = time.monotonic()
        while True:
            if stop.is_set():
                reason = "stopped"
                break
            if cfg.duration_s is not None and time.monotonic() - started >= cfg.duration_s:
                reason = "duration"
                break
            finished = out.handle_all(mailbox.take(0.02))
            if (dropped := mailbox.take_dropped()):
                tracer.emit("frame_drop", group="*", seqs=dropped, reason="reader_behind")
            if joined:
                if any(stream == "packets" for _, stream in joined):
                    out.introduce_again()  # a newcomer needs the current generation's streams
                joined.clear()
            server.poll(0)
            fusion.pump()
            if finished is not None:
                reason = finished
                if finished in ("gave_up", "reader_failed"):
                    tracer.error("source", f"the live source ended for good ({finished})")
                    code = ExitCode.ERROR
                break
        reader.stop()
        reader.join(cfg.live.open_timeout_s + 2 * cfg.live.read_timeout_s + 2)
        out.handle_all(mailbox.take(0))  # what was read before the stop is real data
        out.end_generation(reason)
        for stream, (seq, t_ns) in out.last.items():
            server.finish(stream, seq, t_ns, reason)
        deadline = time.monotonic() + LIVE_DRAIN_TIMEOUT_S
        while not server.drained() and time.monotonic() < deadline:
            server.poll(50)  # members finish their last items (bounded: a live stop is prompt)
            fusion.pump()
        tracer.emit("summary", role="daemon", live=True, reason=reason,
                    frames=reader.video_seq, audio_chunks=reader.audio_seq,
                    packets=reader.packets, generations=reader.connects,
                    disconnects=reader.disconnects, stalls=reader.stalls,
                    reader_drops=mailbox.frames_dropped,
                    groups={g.name: {"delivered": g.delivered, "dropped": g.dropped}
                            for g in server.groups.values()})
        last_seq, t_end = out.last["video"]
        fusion.send(Eof(source_id=info.source_id, component="daemon", last_seq=last_seq,
                        t_end_ns=t_end, reason=reason))
        if not fusion.drain(server, StopFlag(), LIVE_FUSION_DRAIN_TIMEOUT_S):
            tracer.error("fusion", "fusion did not acknowledge the end of the stream within "
                         f"{LIVE_FUSION_DRAIN_TIMEOUT_S:.0f} s")
            code = ExitCode.ERROR
    finally:
        if reader is not None:
            reader.stop()
        server.close()
        fusion.close()
    return code


class _Publisher:
    """Turns the reader's items into frame-bus messages (the packets' seq counter is here)."""

    def __init__(self, server: FrameBusServer, tracer: Tracer, source_id: str,
                 state: str | None) -> None:
        self.server = server
        self.tracer = tracer
        self.source_id = source_id
        self.state = state
        self.packet_seq = 0
        self.current: GenerationStart | None = None
        self.last: dict[str, tuple[int, int]] = {
            "video": (-1, 0), "audio": (-1, 0), "packets": (-1, 0)}

    def handle_all(self, items: list[LiveItem]) -> str | None:
        """Publish ``items``; returns the reader's end reason if it finished."""
        finished = None
        for item in items:
            if isinstance(item, Frame):
                now = time.monotonic_ns()
                self.tracer.emit("timing", stage="read", seq=item.seq, t_ns=item.t_ns,
                                 generation=item.generation,
                                 capture_to_publish_ms=round((now - item.t_ns) / 1e6, 3))
                self.server.publish(item)
                self.last["video"] = (item.seq, item.t_ns)
            elif isinstance(item, AudioChunk):
                self.server.publish(item)
                self.last["audio"] = (item.seq, item.t_ns)
            elif isinstance(item, EncodedPacket):
                self._publish_packets(item.to_message(self.source_id, self.packet_seq), item.t_ns)
            elif isinstance(item, GenerationStart):
                self.current = item
                self._introduce(item, ended=False)
                _save_generation(self.state, item.generation)
            elif isinstance(item, GenerationEnd):
                if self.current is not None and self.current.generation == item.generation:
                    self._introduce(self.current, ended=True)
                    self.current = None
            elif isinstance(item, SourceEvent):
                self.tracer.emit("source", event=item.event, **item.fields)
            elif isinstance(item, ReaderFinished):
                finished = item.reason
            self.server.poll(0)
        return finished

    def _publish_packets(self, msg: Packet | StreamInfo, t_ns: int) -> None:
        self.server.publish(msg)
        self.last["packets"] = (self.packet_seq, t_ns)
        self.packet_seq += 1

    def _introduce(self, gen: GenerationStart, ended: bool) -> None:
        t_ns = time.monotonic_ns()
        msg = StreamInfo(source_id=self.source_id, seq=self.packet_seq, t_ns=t_ns,
                         generation=gen.generation, streams=[s.to_spec() for s in gen.streams],
                         ended=ended)
        self._publish_packets(msg, t_ns)

    def introduce_again(self) -> None:
        if self.current is not None:
            self._introduce(self.current, ended=False)

    def end_generation(self, reason: str) -> None:
        """The run ends with a generation open: say it ended (its clips are cut short here)."""
        if self.current is not None:
            self._introduce(self.current, ended=True)
            self.current = None
