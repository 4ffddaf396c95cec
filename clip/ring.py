"""Clips from a live ring buffer of encoded packets: the records, the ring, the mp4 writer.

A live source's packets reach the clip role at full quality (the daemon forwards every packet;
raw camera formats are encoded first). The role keeps them in a :class:`PacketRing` and, on a
TRIG, writes ``[t_start, t_end]`` with :func:`write_ring_clip` once :meth:`PacketRing.ready`
says the post-roll is in.

Records (plain, typed, independent of the wire schema; ``to_wire``/``from_wire`` give a
MessagePack-friendly header plus the payload bytes):

* :class:`StreamDescription`: enough to create an output stream without an input container
  (codec name, time_base, extradata, size, sample rate/layout).
* :class:`EncodedPacket`: payload bytes + ``pts``/``dts``/``duration`` in ``time_base`` as the
  source gave them (``None``/0 allowed: RTP carries no durations, FFmpeg's RTSP client gives the
  first packets of a connection no pts/dts), ``keyframe``, ``t_ns`` on the live clock (by dts:
  :meth:`momentbus.daemon.liveclock.LiveClock.stamp_packet`), ``generation``, stream index/kind.

Time in the ring: a packet's *presentation* time is ``t_ns + (pts - dts) * time_base`` (the
frame's ``t_ns`` as :meth:`LiveClock.stamp_frame` gives it on the same anchor), all in integer
nanoseconds on CLOCK_MONOTONIC. Missing pts/dts/durations are filled when a clip is planned, from
the neighbours in the same generation (see :func:`fill_timestamps`).

The ring (:class:`PacketRing`) is trimmed by whole GOPs of its *key stream* (the video stream, or
the first stream for an audio-only source, where every packet is a keyframe): the oldest GOP goes
once the next GOP's keyframe is at or before ``newest t_ns - max_pre_roll_ns``, so the head is
always a keyframe at least ``max_pre_roll_ns`` old once the ring is that old. It is bounded in
bytes: past ``max_bytes`` it drops the oldest GOPs early and reports a :class:`TrimEarly` event.

Clips (:func:`plan_clip` then :func:`write_clip`, or :func:`write_ring_clip`):

* ``mode="edit_list"`` (default): packets from the keyframe at or before ``t_start`` through the
  last packet (in decode order) whose frame is shown, timestamps rebased so the first frame at or
  after ``t_start`` has pts 0 (the lead-in is negative) and an mp4 **edit list** that starts at
  that frame and ends after the last frame at or before ``t_end`` (:mod:`.mp4edits`). No
  re-encoding.
* ``mode="keyframe"``: the baseline (Frigate/DeepStream-like keyframe-aligned copy) of the same
  packets: playback starts at the keyframe, no trimming.

A clip never spans a generation boundary; it ends at the disconnect (``cut_short_by``). A
``t_start`` before the ring's head gets the head, one inside an outage gets the next
generation's first keyframe (``pre_roll_clipped_ns`` / ``pre_roll_clipped_by``). A dts jump
inside a generation (backwards, or more than :data:`MAX_DTS_GAP_NS` forwards) is treated like a
generation boundary: clips end before it and the next keyframe after it starts a new stretch.
Writes are atomic (temporary file + ``os.replace``).

Containers and codecs: mp4 with H.264 or HEVC video and AAC audio. Another audio codec is left out
of the clip (``audio_dropped``); another video codec raises :class:`UnsupportedStreamError`.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from statistics import median
from typing import Any, Literal

import av

from ..ipc.schema import Packet, StreamSpec
from ..ipc.timebase import ns_to_pts, pts_to_ns
from .bitstream import (
    BitstreamError,
    adts_header,
    is_adts,
    is_annexb,
    length_prefixed_to_annexb,
    video_parameter_sets,
)
from .mp4edits import Mp4EditError, set_presentation_ends

__all__ = [
    "ClipMode", "ClipPlan", "ClipWriteError", "EmptyWindowError", "EncodedPacket", "PacketDropped",
    "PacketRing", "RingClip", "RingError", "StreamDescription", "StreamKind", "TrimEarly",
    "UnknownStreamError", "UnsupportedStreamError", "fill_timestamps",
    "TimedPacket", "packets_from_file", "plan_clip", "ring_clip_sidecar", "write_clip",
    "write_json_atomic", "write_ring_clip",
]

#: How far past ``t_end`` the ring must reach before a clip is written. A frame shown at or
#: before ``t_end`` has its dts at or before it, so video needs no margin on an in-order (TCP)
#: link; this covers audio packets interleaved behind the video and one reordered UDP datagram.
#: 250 ms = twice the sample's largest pts - dts over RTSP (11261/90000 s = 125 ms, measured:
#: tests/LIVE_NOTES.md). A choice, not a standard.
REORDER_MARGIN_NS = 250_000_000

#: A dts step larger than this inside a generation is a discontinuity: a clip ends before it.
#: The live clock's re-anchor threshold (DESIGN.md, Time: "more than 2 s behind").
MAX_DTS_GAP_NS = 2_000_000_000

VIDEO_CODECS = ("h264", "hevc")
AUDIO_CODECS = ("aac",)


class RingError(Exception):
    """Base class of the ring's errors."""


class UnknownStreamError(RingError, KeyError):
    """A packet names a (generation, stream index) that no :meth:`PacketRing.start_generation`
    described."""


class UnsupportedStreamError(RingError, ValueError):
    """A video codec the mp4 writer cannot carry (only H.264 and HEVC)."""


class EmptyWindowError(RingError, LookupError):
    """Nothing in the ring lies in the requested window (it is all older than the ring's head,
    all inside an outage, or not received yet)."""


class ClipWriteError(RingError, OSError):
    """The mp4 could not be written (muxer error, disk, malformed parameter sets)."""


class StreamKind(str, Enum):
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True, slots=True)
class StreamDescription:
    """What an output stream needs, without an input container to copy from.

    ``extradata`` is the codec's global header as the source gave it: ``avcC``/``hvcC`` (packets
    then carry length-prefixed NAL units) or Annex B parameter sets (packets are Annex B: RTSP,
    MPEG-TS, libx264), or empty (parameter sets in-band); for AAC the AudioSpecificConfig.
    ``frame_rate`` (average, frames/s) only fills missing durations.
    """

    index: int
    kind: StreamKind
    codec: str
    time_base: Fraction
    extradata: bytes = b""
    width: int = 0
    height: int = 0
    pix_fmt: str | None = None
    frame_rate: Fraction | None = None
    sample_rate: int = 0
    layout: str | None = None
    sample_format: str | None = None

    @classmethod
    def from_av_stream(cls, stream: av.stream.Stream) -> StreamDescription:
        """From a PyAV input stream (the daemon's side).

        Raises:
            UnsupportedStreamError: neither video nor audio, or no time_base.
        """
        if stream.type not in ("video", "audio") or stream.time_base is None:
            raise UnsupportedStreamError(f"stream #{stream.index}: {stream.type} without time_base")
        ctx: Any = stream.codec_context  # VideoCodecContext or AudioCodecContext
        extradata = bytes(ctx.extradata or b"")
        if stream.type == "video":
            rate = stream.average_rate or stream.guessed_rate
            # an RTSP stream opened with the fast probe "guesses" the RTP clock (24000/1 and
            # such): no frame rate at all is better than that one
            return cls(stream.index, StreamKind.VIDEO, ctx.name, Fraction(stream.time_base),
                       extradata, ctx.width, ctx.height, ctx.pix_fmt,
                       Fraction(rate) if rate and 0 < rate <= 1000 else None)
        return cls(stream.index, StreamKind.AUDIO, ctx.name, Fraction(stream.time_base),
                   extradata, sample_rate=ctx.sample_rate, layout=ctx.layout.name,
                   sample_format=ctx.format.name if ctx.format is not None else None)

    def to_spec(self) -> StreamSpec:
        """The description as the wire carries it (:class:`~momentbus.ipc.schema.StreamSpec`)."""
        return StreamSpec(index=self.index, kind=self.kind.value, codec=self.codec,
                          time_base=self.time_base, extradata=self.extradata, width=self.width,
                          height=self.height, pix_fmt=self.pix_fmt, frame_rate=self.frame_rate,
                          sample_rate=self.sample_rate, layout=self.layout,
                          sample_format=self.sample_format)

    @classmethod
    def from_spec(cls, spec: StreamSpec) -> StreamDescription:
        """From the wire (already validated by the schema)."""
        return cls(spec.index, StreamKind(spec.kind), spec.codec, spec.time_base,
                   spec.extradata, spec.width, spec.height, spec.pix_fmt, spec.frame_rate,
                   spec.sample_rate, spec.layout, spec.sample_format)


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One encoded packet on its way to the ring.

    ``pts``/``dts``/``duration`` in ``time_base`` exactly as the source gave them (``duration``
    0 = unknown); ``t_ns``: live-clock time of its dts (ns, CLOCK_MONOTONIC); ``generation``:
    the connection it came from.
    """

    data: bytes
    pts: int | None
    dts: int | None
    duration: int
    time_base: Fraction
    keyframe: bool
    t_ns: int
    generation: int
    stream_index: int
    kind: StreamKind

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def from_av(cls, packet: av.Packet[Any], t_ns: int, generation: int) -> EncodedPacket:
        """From a demuxed PyAV packet (its payload is copied)."""
        stream = packet.stream
        return cls(bytes(packet), packet.pts, packet.dts, packet.duration or 0,
                   Fraction(packet.time_base), bool(packet.is_keyframe), t_ns, generation,
                   stream.index, StreamKind(stream.type))

    def presentation_ns(self) -> int:
        """``t_ns + (pts - dts) * time_base`` (``t_ns`` when pts or dts is missing)."""
        if self.pts is None or self.dts is None:
            return self.t_ns
        return self.t_ns + pts_to_ns(self.pts - self.dts, self.time_base)

    def to_message(self, source_id: str, seq: int) -> Packet:
        """The packet as the wire carries it (its bytes are the message's payload part)."""
        return Packet(source_id=source_id, seq=seq, generation=self.generation,
                      stream_index=self.stream_index, kind=self.kind.value, pts=self.pts,
                      dts=self.dts, duration=self.duration, time_base=self.time_base,
                      keyframe=self.keyframe, t_ns=self.t_ns, data=self.data)

    @classmethod
    def from_message(cls, msg: Packet) -> EncodedPacket:
        """From the wire (already validated by the schema); the payload is copied."""
        return cls(bytes(msg.data), msg.pts, msg.dts, msg.duration, msg.time_base, msg.keyframe,
                   msg.t_ns, msg.generation, msg.stream_index, StreamKind(msg.kind))


# --- ring events (for the trace) ---

@dataclass(frozen=True, slots=True)
class TrimEarly:
    """The byte bound forced the ring to drop GOPs younger than the pre-roll horizon."""

    reason: Literal["max_bytes", "gop_larger_than_max_bytes"]
    dropped_packets: int
    dropped_bytes: int
    head_t_ns: int | None  #: the new head keyframe's presentation time (None: ring emptied)
    horizon_t_ns: int  #: newest t_ns - max_pre_roll_ns: where the head should have been
    nbytes: int  #: bytes held after the trim


@dataclass(frozen=True, slots=True)
class PacketDropped:
    """Packets refused on arrival (counted; reported once per generation and reason)."""

    reason: Literal["before_first_keyframe", "old_generation"]
    generation: int
    stream_index: int


RingEvent = TrimEarly | PacketDropped


@dataclass
class _Gop:
    generation: int
    packets: list[EncodedPacket]
    nbytes: int
    key_t_ns: int  # the keyframe's presentation time as pushed (before any fill)


@dataclass
class _Generation:
    number: int
    streams: dict[int, StreamDescription]
    key_index: int
    ended: bool = False
    waiting_for_keyframe: bool = True
    first_t_ns: int | None = None
    last_t_ns: int | None = None  # newest key-stream presentation time
    reported: set[str] = field(default_factory=set)


class PacketRing:
    """Encoded packets of one live source, trimmed by whole GOPs, bounded in bytes.

    Args:
        max_pre_roll_ns: the largest pre-roll any rule asks for (ns); the head keyframe is kept at
            least this old.
        max_bytes: bound on payload bytes held (all streams).
        on_event: called with a :class:`TrimEarly` or :class:`PacketDropped` (trace them).

    Not thread-safe: push and plan from one thread (or under one lock); :func:`plan_clip` returns
    an immutable plan that can be written anywhere.

    Raises:
        ValueError: a bound is not positive.
    """

    def __init__(self, max_pre_roll_ns: int, max_bytes: int,
                 on_event: Callable[[RingEvent], None] | None = None) -> None:
        if max_pre_roll_ns <= 0 or max_bytes <= 0:
            raise ValueError("max_pre_roll_ns and max_bytes must be > 0")
        self.max_pre_roll_ns = max_pre_roll_ns
        self.max_bytes = max_bytes
        self._on_event = on_event
        self._gops: deque[_Gop] = deque()
        self._others: deque[EncodedPacket] = deque()  # non-key streams, arrival order
        self._generations: dict[int, _Generation] = {}
        self._current: int | None = None
        self.nbytes = 0
        self.newest_t_ns: int | None = None
        self.dropped: dict[str, int] = {}

    # --- generations ---

    def start_generation(self, generation: int, streams: Sequence[StreamDescription]) -> None:
        """A new connection with its streams; ends the previous generation.

        Raises:
            ValueError: ``generation`` not above the current one, or no stream given.
        """
        if self._current is not None and generation <= self._current:
            raise ValueError(f"generation {generation} after {self._current}")
        if not streams:
            raise ValueError("a generation needs at least one stream")
        if self._current is not None:
            self._generations[self._current].ended = True
        by_index = {s.index: s for s in streams}
        video = [s.index for s in streams if s.kind is StreamKind.VIDEO]
        key = video[0] if video else streams[0].index
        self._generations[generation] = _Generation(generation, by_index, key)
        self._current = generation

    @property
    def current_generation(self) -> int | None:
        """The latest generation started (``None`` before the first)."""
        return self._current

    def end_generation(self, generation: int) -> None:
        """The connection ended (disconnect): a clip waiting on it is ready, cut short."""
        if generation in self._generations:
            self._generations[generation].ended = True

    def streams(self, generation: int) -> dict[int, StreamDescription]:
        """The stream descriptions of ``generation``.

        Raises:
            UnknownStreamError: not a generation of this ring.
        """
        try:
            return dict(self._generations[generation].streams)
        except KeyError:
            raise UnknownStreamError(f"generation {generation} unknown") from None

    # --- filling ---

    def push(self, packet: EncodedPacket) -> None:
        """Add one packet (arrival order) and trim.

        Raises:
            UnknownStreamError: its (generation, stream) was never described.
        """
        gen = self._generations.get(packet.generation)
        if gen is None or packet.stream_index not in gen.streams:
            raise UnknownStreamError(
                f"generation {packet.generation} stream {packet.stream_index} was not described")
        if packet.generation != self._current:
            self._drop(gen, packet, "old_generation")
            return
        if packet.stream_index == gen.key_index:
            if gen.waiting_for_keyframe and not packet.keyframe:
                self._drop(gen, packet, "before_first_keyframe")
                return
            t = packet.presentation_ns()
            if packet.keyframe:
                gen.waiting_for_keyframe = False
                self._gops.append(_Gop(packet.generation, [packet], packet.size, t))
            else:
                self._gops[-1].packets.append(packet)
                self._gops[-1].nbytes += packet.size
            gen.first_t_ns = t if gen.first_t_ns is None else min(gen.first_t_ns, t)
            gen.last_t_ns = t if gen.last_t_ns is None else max(gen.last_t_ns, t)
            self.newest_t_ns = (packet.t_ns if self.newest_t_ns is None
                                else max(self.newest_t_ns, packet.t_ns))
        else:
            if gen.waiting_for_keyframe:
                self._drop(gen, packet, "before_first_keyframe")
                return
            self._others.append(packet)
        self.nbytes += packet.size
        self.trim()

    def _drop(self, gen: _Generation, packet: EncodedPacket,
              reason: Literal["before_first_keyframe", "old_generation"]) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if reason not in gen.reported:
            gen.reported.add(reason)
            if self._on_event is not None:
                self._on_event(PacketDropped(reason, packet.generation, packet.stream_index))

    # --- trimming ---

    def trim(self, now_ns: int | None = None) -> None:
        """Drop whole GOPs: those older than the pre-roll horizon (``now_ns``, default the newest
        key-stream t_ns, minus ``max_pre_roll_ns``), then, over ``max_bytes``, the oldest ones
        early (a :class:`TrimEarly` event)."""
        now = self.newest_t_ns if now_ns is None else now_ns
        if now is None:
            return
        horizon = now - self.max_pre_roll_ns
        while len(self._gops) >= 2 and self._gops[1].key_t_ns <= horizon:
            self._pop_gop()
        if self.nbytes > self.max_bytes:
            packets = nbytes = 0
            while self.nbytes > self.max_bytes and len(self._gops) >= 2:
                gop = self._pop_gop()
                packets += len(gop.packets)
                nbytes += gop.nbytes
            reason: Literal["max_bytes", "gop_larger_than_max_bytes"] = "max_bytes"
            if self.nbytes > self.max_bytes and self._gops:
                # the GOP being filled alone is too big: drop it; wait for the next keyframe
                gop = self._pop_gop()
                packets += len(gop.packets)
                nbytes += gop.nbytes
                reason = "gop_larger_than_max_bytes"
                if self._current is not None:
                    self._generations[self._current].waiting_for_keyframe = True
            self._trim_others()
            if packets and self._on_event is not None:
                self._on_event(TrimEarly(reason, packets, nbytes,
                                         self._gops[0].key_t_ns if self._gops else None,
                                         horizon, self.nbytes))
        self._trim_others()

    def _pop_gop(self) -> _Gop:
        gop = self._gops.popleft()
        self.nbytes -= gop.nbytes
        return gop

    def _trim_others(self) -> None:
        if not self._gops:
            while self._others:
                self.nbytes -= self._others.popleft().size
            return
        head = self._gops[0]
        while self._others:
            p = self._others[0]
            end = p.presentation_ns() + pts_to_ns(p.duration, p.time_base)
            if p.generation < head.generation or (p.generation == head.generation
                                                  and end <= head.key_t_ns):
                self.nbytes -= self._others.popleft().size
            else:
                break
        # forget generations with nothing left in the ring (keep the current one)
        alive = {g.generation for g in self._gops} | {p.generation for p in self._others}
        for number in [n for n in self._generations if n not in alive and n != self._current]:
            del self._generations[number]

    # --- reading ---

    def __len__(self) -> int:
        return sum(len(g.packets) for g in self._gops) + len(self._others)

    @property
    def head_t_ns(self) -> int | None:
        """Presentation time of the head keyframe (``None`` when empty)."""
        return self._gops[0].key_t_ns if self._gops else None

    @property
    def generations(self) -> list[int]:
        """Generations with packets in the ring, oldest first."""
        return sorted({g.generation for g in self._gops})

    def gop_heads(self) -> list[tuple[int, int]]:
        """(generation, keyframe presentation t_ns) of each GOP held, oldest first."""
        return [(g.generation, g.key_t_ns) for g in self._gops]

    def ready(self, t_end_ns: int, margin_ns: int = REORDER_MARGIN_NS) -> bool:
        """Whether a clip ending at ``t_end_ns`` can be written now: the ring holds key-stream
        packets up to ``t_end_ns + margin_ns``, or the generation a clip starting there would
        use has ended (it will be cut short at the disconnect). A clip inside an outage that
        never ends keeps waiting: the caller owns the deadline."""
        if self.newest_t_ns is not None and self.newest_t_ns >= t_end_ns + margin_ns:
            return True
        gens = [self._generations[n] for n in self.generations]
        holding = [g for g in gens if g.first_t_ns is not None and g.first_t_ns <= t_end_ns]
        return bool(holding) and holding[-1].ended

    def snapshot(self, generation: int) -> tuple[list[EncodedPacket], list[EncodedPacket]]:
        """(key-stream packets in decode order, other packets in arrival order) of
        ``generation`` currently held."""
        key = [p for g in self._gops if g.generation == generation for p in g.packets]
        others = [p for p in self._others if p.generation == generation]
        return key, others

    def generation_info(self, generation: int) -> tuple[bool, int | None]:
        """(ended, newest key-stream presentation t_ns) of ``generation``."""
        g = self._generations[generation]
        return g.ended, g.last_t_ns


# --- timestamps ---

@dataclass(frozen=True, slots=True)
class TimedPacket:
    """A packet with its filled timestamps (in its time_base) and presentation times (ns)."""

    packet: EncodedPacket
    pts: int
    dts: int
    duration: int
    t_ns: int  #: presentation time of this frame on the live clock
    end_ns: int  #: t_ns + duration


def _median_step(values: Sequence[int | None]) -> int | None:
    steps = [b - a for a, b in pairwise(values) if a is not None and b is not None and b > a]
    return int(median(steps)) if steps else None


def fill_timestamps(packets: Sequence[EncodedPacket],
                    stream: StreamDescription | None = None,
                    max_gap_ns: int = MAX_DTS_GAP_NS) -> tuple[list[TimedPacket], bool]:
    """Fill missing dts/pts/durations of one stream's packets (decode order, one generation)
    and compute their presentation times. Returns (timed packets, discontinuity): the list ends
    before the first dts that goes backwards or jumps by more than ``max_gap_ns``.

    How (each a guess only where the source gave nothing):

    * step: the median positive dts step; else the median pts step; else ``1/frame_rate``;
      else the packets' own duration; else 1 tick.
    * missing dts: back from the next known dts (or on from the previous) by whole steps, then
      raised so dts strictly increases.
    * missing pts: a keyframe gets (smallest pts after it in its GOP) - step, which is exact for
      closed GOPs (FFmpeg's RTSP client gives the first keyframe of a connection no pts:
      measured); another frame gets its dts. pts >= dts always.
    * duration 0: the distance to the next frame in presentation order; the last gets the step.
    * presentation time: ``t_ns + (pts - dts) * time_base`` with the packet's own dts; a packet
      whose dts was missing (its t_ns is only its arrival) uses the mapping of the nearest packet
      that had one.
    """
    if not packets:
        return [], False
    tb = packets[0].time_base
    cut = _discontinuity(packets, ns_to_pts(max_gap_ns, tb))
    discontinuity = cut < len(packets)
    packets = packets[:cut]
    n = len(packets)
    known = [i for i, p in enumerate(packets) if p.dts is not None]
    step = (_median_step([p.dts for p in packets])
            or _median_step(sorted(p.pts for p in packets if p.pts is not None)))
    if step is None and stream is not None and stream.frame_rate:
        step = max(1, round(1 / (stream.frame_rate * tb)))
    if step is None:
        step = max([p.duration for p in packets] + [1])

    def nearest_known(i: int) -> int | None:
        after = [j for j in known if j > i]
        if after:
            return after[0]
        before = [j for j in known if j < i]
        return before[-1] if before else None

    dts: list[int] = []
    for i, p in enumerate(packets):
        d = p.dts
        if d is None:
            j = nearest_known(i)
            ref = packets[j].dts if j is not None else None
            d = i * step if j is None or ref is None else ref + (i - j) * step
        if dts and d <= dts[-1]:
            d = dts[-1] + 1
        dts.append(d)
    pts: list[int] = []
    for i, p in enumerate(packets):
        value = p.pts
        if value is None:
            value = dts[i]
            if p.keyframe:
                later: list[int] = []
                for q in packets[i + 1:]:
                    if q.keyframe:
                        break
                    if q.pts is not None:
                        later.append(q.pts)
                if later:
                    value = min(later) - step
        pts.append(max(value, dts[i]))
    durations = [p.duration for p in packets]
    order = sorted(range(n), key=lambda i: pts[i])
    for a, b in pairwise(order):
        if durations[a] <= 0:
            durations[a] = max(1, pts[b] - pts[a])
    if durations[order[-1]] <= 0:
        durations[order[-1]] = step
    out = []
    for i, p in enumerate(packets):
        j = i if p.dts is not None else nearest_known(i)
        ref_packet = packets[j] if j is not None else None
        if ref_packet is not None and ref_packet.dts is not None:
            offset = ref_packet.t_ns - pts_to_ns(ref_packet.dts, tb)
        else:
            offset = p.t_ns - pts_to_ns(dts[i], tb)
        t = offset + pts_to_ns(pts[i], tb)
        out.append(TimedPacket(p, pts[i], dts[i], durations[i], t,
                               t + pts_to_ns(durations[i], tb)))
    return out, discontinuity


def _discontinuity(packets: Sequence[EncodedPacket], gap_ticks: int) -> int:
    """Index of the first packet whose known dts goes backwards from the previous known one or
    jumps further than ``gap_ticks`` per packet in between; ``len(packets)`` when none does."""
    last: int | None = None
    last_i = 0
    for i, p in enumerate(packets):
        if p.dts is None:
            continue
        if last is not None and (p.dts <= last or p.dts - last > gap_ticks * (i - last_i)):
            return i
        last, last_i = p.dts, i
    return len(packets)


def _segments(packets: Sequence[EncodedPacket], stream: StreamDescription | None,
              keyed: bool) -> list[list[TimedPacket]]:
    """``packets`` (one stream, one generation, decode order) filled and split at timestamp
    discontinuities; with ``keyed`` each piece starts at a keyframe (packets between a
    discontinuity and the next keyframe cannot start a clip and are left out)."""
    out: list[list[TimedPacket]] = []
    rest = list(packets)
    while rest:
        timed, discontinuity = fill_timestamps(rest, stream)
        out.append(timed)
        if not discontinuity:
            break
        rest = rest[len(timed):]
        if keyed:
            k = next((i for i, p in enumerate(rest) if p.keyframe), None)
            rest = rest[k:] if k is not None else []
    return out


# --- planning ---

ClipMode = Literal["edit_list", "keyframe"]


@dataclass(frozen=True)
class ClipPlan:
    """What a clip will hold; immutable, computed by :func:`plan_clip` (pure, no I/O)."""

    mode: ClipMode
    generation: int
    video: StreamDescription
    audio: StreamDescription | None
    video_packets: tuple[TimedPacket, ...]  #: decode order, from the keyframe
    audio_packets: tuple[TimedPacket, ...]
    requested_start_ns: int
    requested_end_ns: int
    keyframe_t_ns: int
    first_shown_index: int  #: into video_packets: the first frame presented
    last_shown_index: int  #: into video_packets: the last frame presented
    pre_roll_clipped_ns: int
    pre_roll_clipped_by: Literal["ring_head", "outage", "timestamp_discontinuity"] | None
    cut_short_by: Literal["generation_end", "ring_end", "timestamp_discontinuity"] | None
    audio_dropped: str | None

    @property
    def actual_start_ns(self) -> int:
        return self.video_packets[self.first_shown_index].t_ns

    @property
    def actual_end_ns(self) -> int:
        return self.video_packets[self.last_shown_index].end_ns

    @property
    def shown_frames(self) -> int:
        lo = self.video_packets[self.first_shown_index].t_ns
        hi = self.video_packets[self.last_shown_index].t_ns
        return sum(1 for p in self.video_packets if lo <= p.t_ns <= hi)


def plan_clip(ring: PacketRing, t_start_ns: int, t_end_ns: int,
              mode: ClipMode = "edit_list", audio: bool = True) -> ClipPlan:
    """Choose the packets of the clip ``[t_start_ns, t_end_ns]`` (presentation times, ns).

    In ``edit_list`` mode the shown frames are those with ``t_start_ns <= t <= t_end_ns``; in
    ``keyframe`` mode every frame from the keyframe on is shown (the baseline).

    Raises:
        ValueError: ``t_end_ns < t_start_ns``.
        EmptyWindowError: no frame of any generation in the window.
        UnsupportedStreamError: the key stream is not H.264/HEVC video.
    """
    if t_end_ns < t_start_ns:
        raise ValueError(f"t_end_ns {t_end_ns} < t_start_ns {t_start_ns}")
    # every stretch of continuous timestamps, oldest first: (generation, its pieces)
    pieces: list[tuple[int, list[TimedPacket]]] = []
    for g in ring.generations:
        key, _ = ring.snapshot(g)
        desc = ring.streams(g).get(key[0].stream_index) if key else None
        pieces += [(g, piece) for piece in _segments(key, desc, keyed=True)]
    chosen: int | None = None
    clipped_by: Literal["ring_head", "outage", "timestamp_discontinuity"] | None = None
    for i, (g, piece) in enumerate(pieces):
        first = min(t.t_ns for t in piece)
        last = max(t.t_ns for t in piece)
        if first <= t_start_ns <= last:
            chosen = i
            break
        if t_start_ns < first:
            if first <= t_end_ns:
                chosen = i
                clipped_by = ("ring_head" if i == 0 else
                              "outage" if pieces[i - 1][0] != g else "timestamp_discontinuity")
            break
    if chosen is None:
        raise EmptyWindowError(
            f"no frame in [{t_start_ns}, {t_end_ns}] ns (ring head {ring.head_t_ns}, "
            f"newest {ring.newest_t_ns})")
    generation, timed = pieces[chosen]
    last_piece_of_generation = chosen + 1 == len(pieces) or pieces[chosen + 1][0] != generation
    streams = ring.streams(generation)
    video = streams[timed[0].packet.stream_index]
    if video.kind is not StreamKind.VIDEO or video.codec not in VIDEO_CODECS:
        raise UnsupportedStreamError(f"key stream {video.codec!r}: the mp4 writer takes "
                                     f"{', '.join(VIDEO_CODECS)} video")
    # the keyframe at or before t_start (else the piece's first)
    start = 0
    for i, t in enumerate(timed):
        if t.packet.keyframe and t.t_ns <= t_start_ns:
            start = i
    timed = timed[start:]
    keyframe_t = timed[0].t_ns
    show_from = keyframe_t if mode == "keyframe" else max(t_start_ns, keyframe_t)
    shown = [i for i, t in enumerate(timed) if show_from <= t.t_ns <= t_end_ns]
    if not shown:
        raise EmptyWindowError(
            f"no frame of generation {generation} in [{t_start_ns}, {t_end_ns}]")
    timed = timed[:max(shown) + 1]
    first_shown = min(shown, key=lambda i: timed[i].t_ns)
    last_shown = max(shown, key=lambda i: timed[i].t_ns)
    pre_roll_clipped = max(0, timed[first_shown].t_ns - t_start_ns) if clipped_by else 0
    ended, newest = ring.generation_info(generation)
    cut_short: Literal["generation_end", "ring_end", "timestamp_discontinuity"] | None = None
    if timed[last_shown].end_ns <= t_end_ns:  # the frames stop before t_end: why?
        if not last_piece_of_generation:
            cut_short = "timestamp_discontinuity"
        elif ended:
            cut_short = "generation_end"
        elif newest is None or newest < t_end_ns:
            cut_short = "ring_end"
    # audio: same generation, overlapping the shown span
    audio_desc = None
    audio_timed: list[TimedPacket] = []
    audio_dropped = None
    if audio:
        candidates = [s for s in streams.values() if s.kind is StreamKind.AUDIO]
        if candidates:
            audio_desc = candidates[0]
            if audio_desc.codec not in AUDIO_CODECS:
                audio_dropped = f"{audio_desc.codec} cannot go into mp4 here (only AAC)"
                audio_desc = None
    if audio_desc is not None:
        _, others = ring.snapshot(generation)
        apk = [p for p in others if p.stream_index == audio_desc.index]
        lo = keyframe_t if mode == "keyframe" else timed[first_shown].t_ns
        hi = timed[last_shown].end_ns
        # the audio piece (continuous timestamps) that overlaps the clip most
        overlaps = [[t for t in piece if t.end_ns > lo and t.t_ns < hi]
                    for piece in _segments(apk, audio_desc, keyed=False)]
        audio_timed = max(overlaps, key=len, default=[])
        if not audio_timed:
            audio_desc = None
    return ClipPlan(mode, generation, video, audio_desc, tuple(timed), tuple(audio_timed),
                    t_start_ns, t_end_ns, keyframe_t, first_shown, last_shown, pre_roll_clipped,
                    clipped_by, cut_short, audio_dropped)


# --- writing ---

@dataclass(frozen=True)
class RingClip:
    """A written clip and where its edges really are (ns on the live clock)."""

    path: Path
    mode: ClipMode
    generation: int
    requested_start_ns: int
    requested_end_ns: int
    actual_start_ns: int  #: the first frame presented
    actual_end_ns: int  #: end of the last frame presented
    keyframe_t_ns: int  #: the keyframe decoding starts from
    lead_in_packets: int  #: video packets decoded but not presented before the first frame
    lead_in_ns: int  #: actual_start_ns - keyframe_t_ns
    video_packets: int
    audio_packets: int
    shown_frames: int
    pre_roll_clipped_ns: int
    pre_roll_clipped_by: str | None
    cut_short_by: str | None
    audio_dropped: str | None

    @property
    def cut_short(self) -> bool:
        return self.cut_short_by is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "clip": self.path.name, "mode": self.mode, "generation": self.generation,
            "requested": {"t_start_ns": self.requested_start_ns,
                          "t_end_ns": self.requested_end_ns},
            "actual": {"t_start_ns": self.actual_start_ns, "t_end_ns": self.actual_end_ns},
            "keyframe_t_ns": self.keyframe_t_ns,
            "lead_in": {"packets": self.lead_in_packets, "ns": self.lead_in_ns},
            "video_packets": self.video_packets, "audio_packets": self.audio_packets,
            "shown_frames": self.shown_frames,
            "pre_roll_clipped": {"ns": self.pre_roll_clipped_ns, "by": self.pre_roll_clipped_by},
            "cut_short": {"value": self.cut_short, "by": self.cut_short_by},
            "audio_dropped": self.audio_dropped,
        }


def _video_payloads(plan: ClipPlan) -> list[bytes]:
    try:
        length_size, parameter_sets = video_parameter_sets(plan.video.codec, plan.video.extradata)
        out = []
        for i, t in enumerate(plan.video_packets):
            data = t.packet.data
            if length_size is not None:
                data = length_prefixed_to_annexb(data, length_size)
            elif not is_annexb(data):
                raise BitstreamError("packet is neither Annex B nor described by avcC/hvcC")
            if i == 0:
                data = parameter_sets + data  # extract_extradata finds them here
            out.append(data)
        return out
    except BitstreamError as e:
        raise ClipWriteError(f"generation {plan.generation}: {e}") from None


def _audio_payloads(plan: ClipPlan) -> list[bytes]:
    assert plan.audio is not None
    out = []
    for t in plan.audio_packets:
        data = t.packet.data
        if not is_adts(data):
            try:
                data = adts_header(plan.audio.extradata, len(data)) + data
            except BitstreamError as e:
                raise ClipWriteError(f"audio: {e}") from None
        out.append(data)
    return out


def write_clip(plan: ClipPlan, dest: str | os.PathLike[str]) -> RingClip:
    """Write ``plan`` as an mp4 at ``dest`` (atomically) and return what was written.

    Raises:
        ClipWriteError: the muxer or the edit-list rewrite failed (no file is left behind).
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.part")
    vtb = plan.video.time_base
    first = plan.video_packets[plan.first_shown_index]
    origin_pts = first.pts
    origin_ns = first.t_ns
    try:
        out = av.open(str(tmp), "w", format="mp4")
        try:
            vs = out.add_mux_stream(plan.video.codec, rate=plan.video.frame_rate,
                                    width=plan.video.width, height=plan.video.height)
            vs.time_base = vtb
            items: list[tuple[Fraction, av.Packet[Any]]] = []
            for t, data in zip(plan.video_packets, _video_payloads(plan), strict=True):
                pkt = av.Packet(data)
                pkt.pts, pkt.dts, pkt.duration = t.pts - origin_pts, t.dts - origin_pts, t.duration
                pkt.time_base = vtb
                pkt.is_keyframe = t.packet.keyframe
                pkt.stream = vs
                items.append((pkt.dts * vtb, pkt))
            if plan.audio is not None and plan.audio_packets:
                atb = plan.audio.time_base
                astream = out.add_mux_stream(plan.audio.codec, rate=plan.audio.sample_rate or None)
                astream.time_base = atb
                a0 = plan.audio_packets[0]
                a_origin = ns_to_pts(a0.t_ns - origin_ns, atb) - a0.pts
                for t, data in zip(plan.audio_packets, _audio_payloads(plan), strict=True):
                    pkt = av.Packet(data)
                    pkt.pts, pkt.dts = t.pts + a_origin, t.dts + a_origin
                    pkt.duration = t.duration
                    pkt.time_base = atb
                    pkt.is_keyframe = True
                    pkt.stream = astream
                    items.append((pkt.dts * atb, pkt))
            items.sort(key=lambda it: it[0])  # interleave by decode time
            for _, pkt in items:
                out.mux(pkt)
        finally:
            out.close()
        if plan.mode == "edit_list":
            end_s = Fraction(plan.actual_end_ns - origin_ns, 1_000_000_000)
            ends = {1: end_s}
            if plan.audio is not None and plan.audio_packets:
                ends[2] = end_s
            set_presentation_ends(tmp, ends)
        os.replace(tmp, dest)
    except (av.FFmpegError, OSError, Mp4EditError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, ClipWriteError):
            raise
        raise ClipWriteError(f"{dest.name}: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    lead_in_packets = sum(1 for t in plan.video_packets if t.t_ns < first.t_ns)
    return RingClip(
        path=dest, mode=plan.mode, generation=plan.generation,
        requested_start_ns=plan.requested_start_ns, requested_end_ns=plan.requested_end_ns,
        actual_start_ns=first.t_ns, actual_end_ns=plan.actual_end_ns,
        keyframe_t_ns=plan.keyframe_t_ns,
        lead_in_packets=lead_in_packets,
        lead_in_ns=first.t_ns - plan.keyframe_t_ns,
        video_packets=len(plan.video_packets), audio_packets=len(plan.audio_packets),
        shown_frames=plan.shown_frames if plan.mode == "edit_list" else len(plan.video_packets),
        pre_roll_clipped_ns=plan.pre_roll_clipped_ns,
        pre_roll_clipped_by=plan.pre_roll_clipped_by, cut_short_by=plan.cut_short_by,
        audio_dropped=plan.audio_dropped)


def write_ring_clip(ring: PacketRing, t_start_ns: int, t_end_ns: int,
                    dest: str | os.PathLike[str], mode: ClipMode = "edit_list",
                    audio: bool = True) -> RingClip:
    """:func:`plan_clip` then :func:`write_clip`.

    Raises:
        ValueError, EmptyWindowError, UnsupportedStreamError: as :func:`plan_clip`.
        ClipWriteError: as :func:`write_clip`.
    """
    return write_clip(plan_clip(ring, t_start_ns, t_end_ns, mode, audio), dest)


def ring_clip_sidecar(clip: RingClip, trig: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sidecar JSON of a ring clip: the TRIG (as given, JSON-able), requested and actual
    edges, generation, lead-in, pre-roll clipping and cut-short reason."""
    return {"source": "live_ring", **clip.to_json(), "trig": dict(trig) if trig else None}


def write_json_atomic(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON at ``path`` via a temporary file and ``os.replace``.

    Raises:
        OSError: the folder is not writable.
        TypeError: ``data`` is not JSON-serialisable.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def packets_from_file(path: str | os.PathLike[str], t0_ns: int = 0, generation: int = 1,
                      streams: Iterable[str] = ("video", "audio"),
                      ) -> tuple[list[StreamDescription], list[EncodedPacket]]:
    """Demux a media file into (descriptions, packets in demux order) as a live source would
    deliver them, with ``t_ns = t0_ns + dts * time_base`` (a live clock that never re-anchors).
    For tests and benchmarks of the ring on real packets.

    Raises:
        av.FFmpegError: the file cannot be read.
    """
    with av.open(str(path)) as c:
        chosen = [s for s in c.streams if s.type in tuple(streams)]
        descs = [StreamDescription.from_av_stream(s) for s in chosen]
        out = []
        for p in c.demux(chosen):
            if p.dts is None:
                continue
            out.append(EncodedPacket.from_av(p, t0_ns + pts_to_ns(p.dts, Fraction(p.time_base)),
                                             generation))
    return descs, out
