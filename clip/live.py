"""The clip role on a live source: ``momentbus clip URL --frames ADDR --bind ADDR --out DIR``.

It joins the daemon's frame bus as group ``clip`` on the ``packets`` stream (``every``: no packet
is skipped on purpose) and keeps the source's encoded packets, at full quality, in a
:class:`~momentbus.clip.ring.PacketRing` trimmed by whole GOPs to the longest pre-roll any rule
asks for and bounded in bytes. A TRIG from fusion (reliable link, acknowledged once its clip and
sidecar are on disk) waits until the ring holds its ``t_end`` plus the reorder margin, or its
generation ended (a disconnect: the clip stops there and says so), then is written from the
keyframe at or before ``t_start`` with an mp4 edit list, so playback starts on the first frame at
or after ``t_start`` without re-encoding.

Nothing waits forever: a TRIG whose post-roll never comes (the daemon gone) is cut from what
the ring holds after :data:`MAX_POST_ROLL_WAIT_S` beyond its expected end. The role exits once
fusion's Eof came and every TRIG has its clip (or failure sidecar).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from ..ipc import sockets
from ..ipc.errors import PeerTimeoutError
from ..ipc.framebus import FrameBusClient
from ..ipc.reliable import Delivery, ReliableReceiver, incarnation_now
from ..ipc.schema import Eof, Hello, Message, Packet, StreamInfo, Trig, to_json_dict
from ..lifecycle import ExitCode, StopFlag
from ..traces.tracer import Tracer
from .cutter import write_failure_sidecar
from .names import clip_name
from .ring import (EncodedPacket, PacketDropped, PacketRing, RingError,
                   StreamDescription, TrimEarly, plan_clip, ring_clip_sidecar, write_clip)
from .sidecar import read_json, write_json

#: Packets the clip role may hold un-acknowledged (credit): at 25 fps plus audio, ~1 s of
#: packets in flight, so the bus never waits on a round trip.
PACKET_CREDITS = 64
#: Default byte bound of the ring: 10 s of pre-roll at 40 Mbit/s (a 4K camera's main stream);
#: a 1080p camera at 4 Mbit/s needs 5 MB for the same.
DEFAULT_RING_BYTES = 64 * 1024 * 1024
#: A TRIG waits at most this long past its expected end (its arrival plus its post-roll) for
#: the ring to reach it, then is cut from what the ring holds.
MAX_POST_ROLL_WAIT_S = 30.0
#: How long to wait for the daemon's Welcome (it waits for its expected groups, clip included).
JOIN_TIMEOUT_S = 120.0
#: The last acknowledgement must leave before the socket closes.
ACK_LINGER_MS = 2000


@dataclass
class _Pending:
    delivery: Delivery[Message]
    trig: Trig
    arrived: float  # monotonic s
    deadline: float  # monotonic s


def run_live(cfg: Any, tracer: Tracer, stop: StopFlag) -> int:
    """Serve one live source's clips (``cfg``: :class:`~momentbus.clip.main.ClipConfig` with
    ``frames`` set) until fusion's Eof and the last clip; returns the exit code."""
    router = sockets.bind(zmq.ROUTER, cfg.bind, linger_ms=ACK_LINGER_MS)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    inbox: ReliableReceiver[Message] = ReliableReceiver(
        router, (Trig, Eof), incarnation_now(), on_bad=tracer.bad_message, where="clip")
    hello = Hello(component="clip", group="clip", pid=os.getpid(), policy="every",
                  streams=["packets"], incarnation=incarnation_now())
    bus = FrameBusClient(cfg.frames, hello, credits=PACKET_CREDITS,
                         daemon_timeout_s=cfg.daemon_timeout_s)
    clips_dir = Path(cfg.out_dir) / "clips"
    live = _LiveClips(cfg, tracer, clips_dir)
    fusion_ended = False
    code: int = ExitCode.OK
    try:
        welcome = bus.join(JOIN_TIMEOUT_S, stop.is_set)
        tracer.source_id = welcome.source_id
        tracer.emit("member", event="ready", group="clip", stream="packets",
                    ring_s=cfg.ring_s, ring_bytes=cfg.ring_bytes)
        while not stop.is_set():
            live.read_packets(bus)
            delivery = inbox.recv(0 if live.pending else 10)
            if delivery is not None:
                if isinstance(delivery.msg, Eof):
                    fusion_ended = True
                    inbox.done(delivery)
                else:
                    assert isinstance(delivery.msg, Trig)
                    live.add(delivery, delivery.msg)
            for done in live.cut_ready():
                inbox.done(done)
            inbox.flush_acks()
            if fusion_ended and not live.pending:
                break
        if stop.is_set() and live.pending:  # stopped by hand: cut what the ring holds
            for done in live.cut_ready(force=True):
                inbox.done(done)
        tracer.emit("summary", role="clip", live=True, clips=live.written, failed=live.failed,
                    duplicates=inbox.duplicates, ring_packets=len(live.ring),
                    ring_bytes=live.ring.nbytes, ring_dropped=dict(live.ring.dropped),
                    packets=live.packets, unknown_packets=live.unknown_packets)
        if live.failed:
            code = ExitCode.ERROR
    except PeerTimeoutError as e:
        tracer.error("clip", f"the daemon's frame bus at {cfg.frames}: {e}")
        code = ExitCode.SOURCE_LOST
    finally:
        inbox.flush_acks(force=True)
        bus.leave()
        bus.close()
        router.close(ACK_LINGER_MS)
        sockets.remove_ipc_file(cfg.bind)
    return code


class _LiveClips:
    """The ring, the TRIGs waiting for their post-roll, and the writing."""

    def __init__(self, cfg: Any, tracer: Tracer, clips_dir: Path) -> None:
        self.cfg = cfg
        self.tracer = tracer
        self.clips_dir = clips_dir
        self.ring = self._new_ring()
        self.pending: list[_Pending] = []
        self.bus_ended = False
        self.written = self.failed = 0
        self.packets = self.unknown_packets = 0
        self.index = 0

    def _new_ring(self) -> PacketRing:
        return PacketRing(int(self.cfg.ring_s * 1e9), self.cfg.ring_bytes,
                          on_event=self._ring_event)

    def _ring_event(self, ev: TrimEarly | PacketDropped) -> None:
        if isinstance(ev, TrimEarly):
            self.tracer.emit("ring", event="trim_early", reason=ev.reason,
                             dropped_packets=ev.dropped_packets, dropped_bytes=ev.dropped_bytes,
                             head_t_ns=ev.head_t_ns, horizon_t_ns=ev.horizon_t_ns,
                             nbytes=ev.nbytes)
        else:
            self.tracer.emit("ring", event="packets_dropped", reason=ev.reason,
                             generation=ev.generation, stream_index=ev.stream_index)

    # --- the packets ---

    def read_packets(self, bus: FrameBusClient) -> None:
        """Everything the bus has now (up to a few hundred items), into the ring."""
        wait = 0 if self.pending else 10
        for _ in range(PACKET_CREDITS * 4):
            try:
                item = bus.recv(wait)
            except PeerTimeoutError:
                self._bus_lost()
                raise
            wait = 0
            if item is None:
                return
            if isinstance(item, Eof):
                self._bus_lost()
                return
            if isinstance(item, StreamInfo):
                self._stream_info(item)
            elif isinstance(item, Packet):
                self.packets += 1
                try:
                    self.ring.push(EncodedPacket.from_message(item))
                except RingError:
                    self.unknown_packets += 1  # before its generation was described to us
            bus.done()

    def _bus_lost(self) -> None:
        self.bus_ended = True
        for g in self.ring.generations:
            self.ring.end_generation(g)

    def _stream_info(self, info: StreamInfo) -> None:
        current = self.ring.generations[-1] if self.ring.generations else None
        known = self.ring.current_generation
        if info.ended:
            self.ring.end_generation(info.generation)
            self.tracer.emit("ring", event="generation_end", generation=info.generation)
            return
        if known is not None and info.generation == known:
            return  # introduced again (we joined, or rejoined, mid-generation)
        if known is not None and info.generation < known:
            # a restarted daemon numbering from 1 again: what the ring holds is another run's
            self.tracer.emit("ring", event="reset", generation=info.generation,
                             previous=known, held_packets=len(self.ring), newest=current)
            self.ring = self._new_ring()
        self.ring.start_generation(info.generation,
                                   [StreamDescription.from_spec(s) for s in info.streams])
        self.tracer.emit("ring", event="generation", generation=info.generation,
                         streams=[f"{s.kind}:{s.codec}" for s in info.streams])

    # --- the TRIGs ---

    def add(self, delivery: Delivery[Message], trig: Trig) -> None:
        now = time.monotonic()
        post_s = max(0, trig.t_end_ns - trig.t_event_ns) / 1e9
        self.pending.append(_Pending(delivery, trig, now,
                                     now + post_s + MAX_POST_ROLL_WAIT_S))

    def cut_ready(self, force: bool = False) -> list[Delivery[Message]]:
        """Write every pending TRIG whose post-roll the ring holds (all of them with
        ``force``); returns their deliveries, to acknowledge."""
        done = []
        now = time.monotonic()
        for p in list(self.pending):
            waited_out = now >= p.deadline
            if not (force or self.bus_ended or waited_out or self.ring.ready(p.trig.t_end_ns)):
                continue
            self.pending.remove(p)
            self._cut(p, now, why="deadline" if waited_out else None)
            done.append(p.delivery)
        return done

    def _cut(self, p: _Pending, now: float, why: str | None) -> None:
        trig = p.trig
        self.index += 1
        name = clip_name(self.index, trig)
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        dest = self.clips_dir / f"{name}.mp4"
        sidecar = self.clips_dir / f"{name}.json"
        old = read_json(sidecar)
        if old is not None and old.get("ok") and dest.exists():  # a re-delivered TRIG
            self.written += 1
            self.tracer.emit("clip", rule=trig.rule, path=str(dest), t_event_ns=trig.t_event_ns,
                             container="mp4", mode="edit_list", reused=True)
            return
        t0 = time.perf_counter()
        try:
            plan = plan_clip(self.ring, trig.t_start_ns, trig.t_end_ns, "edit_list")
            clip = write_clip(plan, dest)
            meta: dict[str, Any] = {"ok": True, **ring_clip_sidecar(clip, to_json_dict(trig))}
            meta.update(written_t_ns=time.monotonic_ns(), ring_newest_t_ns=self.ring.newest_t_ns,
                        waited_ms=round((now - p.arrived) * 1000, 1), wait_ended_by=why)
            write_json(sidecar, meta)
        except (RingError, ValueError, OSError) as e:
            self.failed += 1
            dest.unlink(missing_ok=True)
            path = None
            try:
                path = write_failure_sidecar(self.cfg.source, trig, self.clips_dir, self.index, e,
                                             mode="edit_list", clip_format="mp4")
            except OSError:
                pass
            self.tracer.error("clip", e, rule=trig.rule, t_event_ns=trig.t_event_ns,
                              sidecar=str(path) if path else None)
            return
        self.written += 1
        self.tracer.emit("clip", rule=trig.rule, path=str(dest), t_event_ns=trig.t_event_ns,
                         container="mp4", mode="edit_list", reused=False,
                         generation=clip.generation,
                         requested_start_ns=clip.requested_start_ns,
                         requested_end_ns=clip.requested_end_ns,
                         actual_start_ns=clip.actual_start_ns, actual_end_ns=clip.actual_end_ns,
                         lead_in_packets=clip.lead_in_packets,
                         pre_roll_clipped_ns=clip.pre_roll_clipped_ns,
                         cut_short_by=clip.cut_short_by,
                         waited_ms=round((now - p.arrived) * 1000, 1),
                         cut_ms=round((time.perf_counter() - t0) * 1000, 2))
