"""Live sources: network streams, V4L2 cameras, and files played as cameras.

A live source never waits for its readers and never ends because its peer did: it is read by a
:class:`LiveReader` thread that connects, demuxes, decodes and stamps, and reconnects after any
end. What it produces goes to the daemon's main loop through a :class:`Mailbox`:

* **Connections are generations** (1, 2, ... per daemon run): each (re)connect starts one on the
  streams' :class:`~momentbus.daemon.liveclock.LiveClock` s, so ``t_ns`` (CLOCK_MONOTONIC) stays
  strictly increasing across reconnects while each connection's own timestamps restart.
  Packets are stamped by ``dts``, decoded frames by ``pts`` on the same anchor; a V4L2 buffer's
  kernel timestamp (already CLOCK_MONOTONIC) is used as is when it is plausible.
* **Encoded packets** at full quality go out as :class:`~momentbus.clip.ring.EncodedPacket` s for
  the clip role's ring, after a :class:`GenerationStart` that describes their streams. Video the
  mp4 ring cannot hold (raw camera formats, MJPEG, anything but H.264/HEVC) is encoded to H.264
  with libx264 first (:class:`H264Encoder`); audio other than AAC is not forwarded.
* **Frames** (BGR24) and **audio chunks** (16 kHz mono float32, sample-counted from the
  generation's first audio frame) are what extractors read. Frames are dropped when the main
  loop falls behind (:data:`MAX_PENDING_FRAMES`, counted); packets and audio never are.
* **Ends**: the end of ``demux()``, any ``av.FFmpegError`` and ``OSError`` are a disconnect; a
  stall surfaces as ``av.error.ExitError`` from FFmpeg's read timeout after about twice
  ``read_timeout_s`` (measured, tests/LIVE_NOTES.md). Reconnects back off from 0.25 s doubling to
  5 s, reset after a connection that lasted a minute, forever by default. Every event is a
  :class:`SourceEvent` the daemon traces (``record: "source"``).

Opening a URL uses ``timeout=(open_s, read_s)`` and ``analyzeduration=0, probesize=32`` (RTSP
open 1,074 ms -> 117 ms measured here) and RTSP over TCP. FFmpeg's
``use_wallclock_as_timestamps`` is not used: with B-frames it reorders frames.

A file is a live source with ``realtime`` (paced at its own rate: each packet is read when the
wall clock reaches its ``dts``) and optionally ``loop`` (reopened at its end with every timestamp
offset by the file's duration: one continuous generation, as a camera).
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import av
import numpy as np

from ..clip.ring import (AUDIO_CODECS, VIDEO_CODECS, EncodedPacket, StreamDescription,
                         StreamKind)
from ..ipc.schema import AudioChunk, Frame
from ..ipc.timebase import ns_to_pts, pts_to_ns
from ..ipc.vocab import AUDIO_RATE, AUDIO_TIME_BASE
from ..media import NotMediaError, SourceError, SourceNotFoundError, source_id_for
from .liveclock import MAX_BEHIND_NS, LiveClock, Reanchor

SourceKind = Literal["file", "url", "v4l2", "mic"]

#: URL schemes FFmpeg (in PyAV) opens as live inputs.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "srt", "tcp")
#: Schemes opened with FFmpeg's fast probe (``analyzeduration=0, probesize=32``); HTTP and raw
#: TCP may carry any container, which needs FFmpeg's normal probe to be recognised.
FAST_PROBE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt")

#: Seconds FFmpeg may take to open a live input (connect + first answer), and to wait for the
#: next packet before a read fails (a stall is seen after about twice this: measured,
#: tests/LIVE_NOTES.md).
DEFAULT_OPEN_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 2.0
#: Reconnect backoff (the live-sources issue): first wait, cap, and how long a connection must
#: last for the next disconnect to start over from the first wait.
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 5.0
BACKOFF_RESET_AFTER_S = 60.0
#: Decoded frames the main loop may have waiting before the reader drops the oldest: frames
#: are worth only their freshness on a live source (extractors take the newest anyway).
MAX_PENDING_FRAMES = 4
#: Re-anchorings smaller than this are the anchor settling on the least-delayed packet under
#: network jitter (tens of µs measured on 127.0.0.1): counted, not traced one by one.
REANCHOR_TRACE_NS = 1_000_000
#: V4L2 pixel formats by the name users know (``--input-format``), as FFmpeg's v4l2 demuxer
#: spells them.
V4L2_INPUT_FORMATS = {"mjpeg": "mjpeg", "h264": "h264", "yuyv": "yuyv422"}


class LiveSourceError(SourceError):
    """A live source cannot be used as given (unreachable, bad options, missing device)."""


class LiveOptionError(LiveSourceError, ValueError):
    """A live-source option is malformed (``--video-size 12x``) or does not apply."""


class SourceUnavailableError(LiveSourceError, ConnectionError):
    """The live source could not be opened (refused, timed out, not a stream FFmpeg reads)."""


# ------------------------------------------------------------------------------- what a source is


def classify_source(source: str) -> SourceKind:
    """``url`` for a live URL scheme, ``v4l2`` for ``/dev/video*``, ``mic`` for a microphone,
    else ``file``."""
    if source == "mic" or source.startswith("mic:"):
        return "mic"
    if source.startswith("/dev/video"):
        return "v4l2"
    scheme = urlsplit(source).scheme.lower()
    return "url" if scheme in LIVE_SCHEMES else "file"


def redact(source: str) -> str:
    """``source`` with any password in a URL replaced by ``***`` (for logs and traces)."""
    parts = urlsplit(source)
    if parts.password is None:
        return source
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def live_source_id(source: str) -> str:
    """A source id for a live source: the device name, or the URL's host and path
    (``rtsp://cam.local:554/stream`` -> ``cam.local_554_stream``), at most 64 characters."""
    kind = classify_source(source)
    if kind == "v4l2":
        return os.path.basename(source)
    if kind == "file":
        return source_id_for(source)
    parts = urlsplit(source)
    text = "_".join(str(x) for x in (parts.hostname, parts.port, parts.path) if x)
    return re.sub(r"[^A-Za-z0-9-]+", "_", text).strip("_")[:64] or parts.scheme


@dataclass(frozen=True)
class V4L2Options:
    """What to ask a V4L2 camera for (FFmpeg's v4l2 demuxer options); ``None``: its default.

    Raises (from :meth:`parse`):
        LiveOptionError: a malformed size or rate, or an unknown input format.
    """

    video_size: str | None = None  #: ``WIDTHxHEIGHT``
    framerate: str | None = None  #: frames/s, an integer or ``N/D``
    input_format: str | None = None  #: ``mjpeg``, ``h264`` or ``yuyv``

    @classmethod
    def parse(cls, video_size: str | None = None, framerate: str | float | None = None,
              input_format: str | None = None) -> V4L2Options:
        if video_size is not None:
            m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", video_size.strip())
            if m is None or not (0 < int(m[1]) <= 16384 and 0 < int(m[2]) <= 16384):
                raise LiveOptionError(f"--video-size {video_size!r}: use WIDTHxHEIGHT, e.g. "
                                      "1280x720")
            video_size = f"{int(m[1])}x{int(m[2])}"
        if framerate is not None:
            text = str(framerate).strip()
            try:
                rate = Fraction(text)
            except (ValueError, ZeroDivisionError):
                raise LiveOptionError(f"--framerate {text!r}: use frames per second, e.g. 30 "
                                      "or 30000/1001") from None
            if not 0 < rate <= 1000:
                raise LiveOptionError(f"--framerate {text}: must be above 0 and at most 1000")
            framerate = str(rate)
        if input_format is not None and input_format not in V4L2_INPUT_FORMATS:
            raise LiveOptionError(f"--input-format {input_format!r}: use one of "
                                  f"{', '.join(V4L2_INPUT_FORMATS)}")
        return cls(video_size, framerate, input_format)

    def av_options(self) -> dict[str, str]:
        """The options for ``av.open(device, format="v4l2", options=...)``."""
        out: dict[str, str] = {}
        if self.video_size:
            out["video_size"] = self.video_size
        if self.framerate:
            out["framerate"] = self.framerate
        if self.input_format:
            out["input_format"] = V4L2_INPUT_FORMATS[self.input_format]
        return out

    @property
    def given(self) -> bool:
        return any((self.video_size, self.framerate, self.input_format))


@dataclass(frozen=True)
class LiveOptions:
    """How a live source is opened, read and reconnected (defaults: the issue's figures)."""

    open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    #: a file: pace it at its own frame rate / repeat it with continuous time
    realtime: bool = False
    loop: bool = False
    v4l2: V4L2Options = field(default_factory=V4L2Options)
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S
    backoff_reset_after_s: float = BACKOFF_RESET_AFTER_S
    #: give up after this many failed connection attempts in a row (``None``: never)
    max_attempts: int | None = None

    def check(self, kind: SourceKind) -> None:
        """Raise :class:`LiveOptionError` for options that do not fit the source kind."""
        if not (0 < self.open_timeout_s <= 600 and 0 < self.read_timeout_s <= 600):
            raise LiveOptionError("--open-timeout and --read-timeout must be above 0 and at "
                                  "most 600 seconds")
        if self.v4l2.given and kind != "v4l2":
            raise LiveOptionError("--video-size, --framerate and --input-format apply to a "
                                  "V4L2 camera (/dev/videoN) only")
        if (self.loop or self.realtime) and kind != "file":
            raise LiveOptionError("--realtime and --loop apply to a file only (a camera or "
                                  "stream is real time already)")
        if self.loop and not self.realtime:
            raise LiveOptionError("--loop needs --realtime (a looped file is played as a "
                                  "live camera)")


def is_live(source: str, options: LiveOptions) -> bool:
    """Whether ``source`` with ``options`` runs as a live source (never waits for its readers,
    runs until stopped): a URL, a camera, or a file with ``realtime``."""
    kind = classify_source(source)
    return kind in ("url", "v4l2") or (kind == "file" and options.realtime)


def open_input(source: str, options: LiveOptions) -> av.container.InputContainer:
    """Open a live input with the timeouts and probe settings of this module.

    Raises:
        SourceNotFoundError: a V4L2 device or file that does not exist.
        SourceUnavailableError: FFmpeg could not open it (refused, timed out, not media).
    """
    kind = classify_source(source)
    timeout = (options.open_timeout_s, options.read_timeout_s)
    try:
        if kind == "v4l2":
            if not os.path.exists(source):
                raise SourceNotFoundError(f"{source}: no such V4L2 device (is the camera "
                                          "plugged in? `ls /dev/video*` lists them)")
            return av.open(source, format="v4l2", options=options.v4l2.av_options(),
                           timeout=timeout)
        if kind == "url":
            scheme = urlsplit(source).scheme.lower()
            opts: dict[str, str] = {}
            if scheme in FAST_PROBE_SCHEMES:
                opts.update(analyzeduration="0", probesize="32")
            if scheme in ("rtsp", "rtsps"):
                opts["rtsp_transport"] = "tcp"
            return av.open(source, options=opts, timeout=timeout)
        if not os.path.exists(source):
            raise SourceNotFoundError(f"{source}: no such file")
        return av.open(source)
    except SourceError:
        raise
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise SourceUnavailableError(f"{redact(source)}: cannot open ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    text = text.split(": '")[0] if text else ""
    return text or type(e).__name__


def plausible_rate(rate: Fraction | None) -> Fraction | None:
    """A stream's frame rate if it is one (FFmpeg guesses the RTP clock, 90000 or 24000, when
    an RTSP stream was opened with the fast probe); ``None`` otherwise."""
    return Fraction(rate) if rate and 0 < rate <= 1000 else None


@dataclass(frozen=True)
class LiveInfo:
    """What a live source is, from one probing connection."""

    source_id: str
    source: str  #: redacted
    kind: SourceKind
    width: int
    height: int
    time_base: Fraction  #: the video stream's (1/90000 for RTSP)
    codec: str
    fps: float | None
    has_audio: bool


def probe_live(source: str, options: LiveOptions, source_id: str | None = None) -> LiveInfo:
    """Connect once, read until the first decoded frame (bounded by the open timeout), close.

    Raises:
        LiveOptionError: options that do not fit the source.
        SourceNotFoundError, SourceUnavailableError: as :func:`open_input`.
        NotMediaError: it opened but has no video stream, or no frame came in time.
    """
    kind = classify_source(source)
    options.check(kind)
    container = open_input(source, options)
    try:
        if not container.streams.video:
            raise NotMediaError(f"{redact(source)}: has no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        width, height = video.codec_context.width, video.codec_context.height
        deadline = time.monotonic() + options.open_timeout_s + options.read_timeout_s
        try:
            for packet in container.demux(video):
                try:  # joined mid-GOP (UDP), the decoder refuses packets until a keyframe
                    frames = packet.decode()
                except av.FFmpegError:
                    frames = []
                if frames:
                    width, height = frames[0].width, frames[0].height
                    break
                if time.monotonic() >= deadline:
                    break
            else:
                raise NotMediaError(f"{redact(source)}: ended before its first frame")
        except av.FFmpegError as e:
            raise SourceUnavailableError(f"{redact(source)}: no frame within "
                                         f"{options.open_timeout_s + options.read_timeout_s:.0f}"
                                         f" s ({_reason(e)})") from None
        if width <= 0 or height <= 0:
            raise NotMediaError(f"{redact(source)}: no decodable frame within "
                                f"{options.open_timeout_s + options.read_timeout_s:.0f} s")
        rate = plausible_rate(video.average_rate or video.guessed_rate)
        return LiveInfo(source_id or live_source_id(source), redact(source), kind, width, height,
                        Fraction(video.time_base or Fraction(1, 90000)), video.codec_context.name,
                        float(rate) if rate else None, audio is not None)
    finally:
        container.close()


# ----------------------------------------------------------------------------- what the reader says


@dataclass(frozen=True)
class GenerationStart:
    """A connection began: the streams its packets belong to."""

    generation: int
    streams: tuple[StreamDescription, ...]


@dataclass(frozen=True)
class GenerationEnd:
    """A connection ended (``reason``: ``end_of_stream``, ``stall``, ``error``, ``stopped``)."""

    generation: int
    reason: str


@dataclass(frozen=True)
class SourceEvent:
    """One ``source`` trace record: ``event`` plus its fields."""

    event: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class ReaderFinished:
    """The reader ended by itself: a file's end (``end_of_stream``) or ``gave_up``."""

    reason: str


LiveItem = (Frame | AudioChunk | EncodedPacket | GenerationStart | GenerationEnd | SourceEvent
            | ReaderFinished)


class Mailbox:
    """Reader thread -> main loop: everything in order, except that at most ``max_frames``
    decoded frames wait; a newer frame replaces the oldest waiting one (counted in
    :attr:`frames_dropped`). Thread-safe."""

    def __init__(self, max_frames: int = MAX_PENDING_FRAMES) -> None:
        self.max_frames = max_frames
        self._items: deque[LiveItem] = deque()
        self._frames = 0
        self._cond = threading.Condition()
        self.frames_dropped = 0
        self.dropped_seqs: list[int] = []

    def put(self, item: LiveItem) -> None:
        with self._cond:
            if isinstance(item, Frame):
                if self._frames >= self.max_frames:
                    for i, old in enumerate(self._items):
                        if isinstance(old, Frame):
                            del self._items[i]
                            self._frames -= 1
                            self.frames_dropped += 1
                            self.dropped_seqs.append(old.seq)
                            break
                self._frames += 1
            self._items.append(item)
            self._cond.notify()

    def take(self, timeout_s: float) -> list[LiveItem]:
        """Everything waiting (after up to ``timeout_s`` for the first item)."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout_s)
            items = list(self._items)
            self._items.clear()
            self._frames = 0
            return items

    def take_dropped(self) -> list[int]:
        with self._cond:
            seqs, self.dropped_seqs = self.dropped_seqs, []
            return seqs


class Backoff:
    """Reconnect delays: ``initial`` doubling to ``maximum``; a connection that lasted
    ``reset_after`` seconds starts the next series from ``initial`` again."""

    def __init__(self, initial: float = BACKOFF_INITIAL_S, maximum: float = BACKOFF_MAX_S,
                 reset_after: float = BACKOFF_RESET_AFTER_S) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial, self.maximum, self.reset_after = initial, maximum, reset_after
        self._next = initial

    def connected_for(self, seconds: float) -> None:
        """A connection ended after ``seconds``: a good one resets the series."""
        if seconds >= self.reset_after:
            self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


# ------------------------------------------------------------------------------ H.264 for the ring


class H264Encoder:
    """libx264 for video the ring's mp4 cannot hold as is (a camera's raw YUYV or MJPEG, and any
    codec other than H.264/HEVC): ``ultrafast`` + ``zerolatency`` (no B-frames, no lookahead:
    a packet per frame, at once), a keyframe every second (the ring trims by GOP, so a GOP is the
    most a clip's lead-in holds), parameter sets in-band on every keyframe (Annex B, no global
    header: what the ring's writer takes). Packets carry the frame's ``t_ns``.

    Raises (from the constructor):
        av.FFmpegError: libx264 is not in this PyAV build.
    """

    TIME_BASE = Fraction(1, 90_000)

    def __init__(self, width: int, height: int, fps: float | None, stream_index: int,
                 generation: int) -> None:
        rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(30)
        self.ctx: Any = av.CodecContext.create("libx264", "w")
        self.ctx.width, self.ctx.height = width - width % 2, height - height % 2
        self.ctx.pix_fmt = "yuv420p"
        self.ctx.time_base = self.TIME_BASE
        self.ctx.framerate = rate
        self.ctx.gop_size = max(1, round(float(rate)))
        self.ctx.max_b_frames = 0
        self.ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "23"}
        self.stream_index = stream_index
        self.generation = generation
        self._t0_ns: int | None = None
        self._last_pts = -1
        self._t_of_pts: dict[int, int] = {}

    def describe(self) -> StreamDescription:
        return StreamDescription(self.stream_index, StreamKind.VIDEO, "h264", self.TIME_BASE,
                                 b"", self.ctx.width, self.ctx.height, "yuv420p",
                                 self.ctx.framerate)

    def encode(self, frame: av.VideoFrame, t_ns: int) -> list[EncodedPacket]:
        if self._t0_ns is None:
            self._t0_ns = t_ns
        pts = max(ns_to_pts(t_ns - self._t0_ns, self.TIME_BASE), self._last_pts + 1)
        self._last_pts = pts
        self._t_of_pts[pts] = t_ns
        out = frame.reformat(width=self.ctx.width, height=self.ctx.height, format="yuv420p")
        out.pts = pts
        out.time_base = self.TIME_BASE
        out.pict_type = av.video.frame.PictureType.NONE
        return [self._packet(p) for p in self.ctx.encode(out)]

    def flush(self) -> list[EncodedPacket]:
        try:
            return [self._packet(p) for p in self.ctx.encode(None)]
        except av.FFmpegError:
            return []

    def _packet(self, p: av.Packet) -> EncodedPacket:
        pts = p.pts if p.pts is not None else self._last_pts
        t_ns = self._t_of_pts.pop(pts, None)
        if t_ns is None:
            assert self._t0_ns is not None
            t_ns = self._t0_ns + pts_to_ns(pts, self.TIME_BASE)
        return EncodedPacket(bytes(p), pts, p.dts if p.dts is not None else pts,
                             p.duration or 0, self.TIME_BASE, bool(p.is_keyframe), t_ns,
                             self.generation, self.stream_index, StreamKind.VIDEO)


# ------------------------------------------------------------------------------ the reader


class _KernelClock:
    """A V4L2 buffer's timestamp is the kernel's CLOCK_MONOTONIC (µs in FFmpeg's v4l2 demuxer,
    ``-ts default``): used as ``t_ns`` when it lies within ``[now - 2 s, now]``, else the
    generation's :class:`LiveClock` maps it (a driver on another clock)."""

    def __init__(self, clock: LiveClock, now_ns: Callable[[], int]) -> None:
        self.clock = clock
        self.now_ns = now_ns
        self._last = -(1 << 62)

    def stamp(self, ts: int | None, time_base: Fraction, packet: bool) -> int:
        if ts is not None:
            t = pts_to_ns(ts, time_base)
            now = self.now_ns()
            if now - MAX_BEHIND_NS <= t <= now:
                t = max(t, self._last + 1)
                self._last = t
                return t
        t = (self.clock.stamp_packet(ts, time_base) if packet
             else self.clock.stamp_frame(ts, time_base))
        t = max(t, self._last + 1)
        self._last = t
        return t


class LiveReader(threading.Thread):
    """Reads a live source in its own thread, forever (or until :meth:`stop`), into ``mailbox``.

    Args:
        source: URL, ``/dev/videoN`` or file path (with ``options.realtime``).
        source_id: the id every Frame/AudioChunk carries.
        options: timeouts, pacing, V4L2 options, backoff.
        mailbox: where items go (the daemon's main loop takes them).
        audio: decode audio into 16 kHz mono chunks (some group reads audio).
        packets: forward encoded packets (a clip role reads them).
        max_frame_pixels: frames larger than this are scaled down to fit (the shared-memory
            slots are sized for the first connection's frames); 0: no bound.
        now_ns: CLOCK_MONOTONIC in ns (injected for tests).
    """

    def __init__(self, source: str, source_id: str, options: LiveOptions, mailbox: Mailbox, *,
                 audio: bool = False, packets: bool = True, max_frame_pixels: int = 0,
                 first_generation: int = 1,
                 now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(name="live-reader", daemon=True)
        self.source = source
        self.kind = classify_source(source)
        self.source_id = source_id
        self.options = options
        self.mailbox = mailbox
        self.want_audio = audio
        self.want_packets = packets
        self.max_frame_pixels = max_frame_pixels
        self.now_ns = now_ns
        self._stop_event = threading.Event()
        self.vclock = LiveClock(now_ns, on_reanchor=self._reanchored)
        self.aclock = LiveClock(now_ns, on_reanchor=self._reanchored)
        self.kernel = _KernelClock(self.vclock, now_ns)
        self.generation = first_generation - 1
        self.video_seq = 0
        self.audio_seq = 0
        self.packets = 0
        self.connects = 0
        self.stalls = 0
        self.disconnects = 0
        self.last_audio_end_ns = -(1 << 62)

    # --- control ---

    def stop(self) -> None:
        self._stop_event.set()

    def wait(self, seconds: float) -> None:
        """Wait ``seconds`` (pacing, backoff), returning early when stopped."""
        self._stop_event.wait(seconds)

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def emit(self, event: str, **fields: Any) -> None:
        self.mailbox.put(SourceEvent(event, fields))

    def _reanchored(self, r: Reanchor) -> None:
        if abs(r.step_ns) < REANCHOR_TRACE_NS:
            return  # network jitter settling the anchor on the least-delayed packet: counted
        self.emit("reanchor", generation=r.generation, reason=r.reason, by=r.by,
                   step_ms=round(r.step_ns / 1e6, 3))

    # --- the loop ---

    def run(self) -> None:
        backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_max_s,
                          self.options.backoff_reset_after_s)
        failures = 0
        down_since: int | None = None
        try:
            while not self.stopping:
                t_open = self.now_ns()
                try:
                    container = open_input(self.source, self.options)
                except SourceError as e:
                    failures += 1
                    if down_since is None:
                        down_since = t_open
                    limit = self.options.max_attempts
                    if self.kind == "file" or (limit is not None and failures >= limit):
                        self.emit("gave_up", attempts=failures, error=str(e))
                        self.mailbox.put(ReaderFinished("gave_up"))
                        return
                    delay = backoff.next_delay()
                    self.emit("connect_failed", attempt=failures, error=str(e),
                               retry_in_ms=round(delay * 1000))
                    self.wait(delay)
                    continue
                failures = 0
                opened = self.now_ns()
                if down_since is not None:
                    self.emit("reconnect", generation=self.generation + 1,
                               after_ms=round((opened - down_since) / 1e6, 1))
                reason = self._connection(container, opened, t_open)
                ended = self.now_ns()
                backoff.connected_for((ended - opened) / 1e9)
                if reason in ("end_of_stream", "gave_up") and self.kind == "file":
                    self.mailbox.put(ReaderFinished(reason))
                    return
                if self.stopping:
                    return
                down_since = ended
                delay = backoff.next_delay()
                self.emit("retry", generation=self.generation, retry_in_ms=round(delay * 1000))
                self.wait(delay)
        except Exception as e:  # a bug must end the daemon loudly, not hang it
            self.emit("reader_failed", error=f"{type(e).__name__}: {e}")
            self.mailbox.put(ReaderFinished("reader_failed"))
            raise

    def _connection(self, container: av.container.InputContainer, opened_ns: int,
                    t_open_ns: int) -> str:
        """One generation: from an open container to its end; returns the end's reason."""
        self.generation += 1
        generation = self.generation
        self.vclock.start_generation()
        self.aclock.start_generation()
        self.connects += 1
        conn = _Connection(self, container, generation)
        self.emit("connect", generation=generation,
                   open_ms=round((opened_ns - t_open_ns) / 1e6, 1), **conn.describe_fields())
        reason, error = "end_of_stream", None
        last_packet = self.now_ns()
        try:
            loop = 0
            while True:
                for packet in conn.demux():
                    if self.stopping:
                        reason = "stopped"
                        break
                    last_packet = self.now_ns()
                    conn.handle(packet)
                else:
                    conn.finish_loop()
                    if self.kind == "file" and self.options.loop and not self.stopping:
                        loop += 1
                        conn.next_loop(loop)
                        continue
                break
        except av.error.ExitError as e:  # FFmpeg's read timeout: the stream stalled
            reason, error = "stall", _reason(e)
            self.stalls += 1
            self.emit("stall", generation=generation,
                       silent_ms=round((self.now_ns() - last_packet) / 1e6, 1),
                       read_timeout_s=self.options.read_timeout_s)
        except (av.FFmpegError, OSError) as e:
            reason, error = "error", f"{type(e).__name__}: {_reason(e)}"
        finally:
            conn.close()
        if self.stopping and reason == "end_of_stream":
            reason = "stopped"
        self.disconnects += 1
        self.emit("disconnect", generation=generation, reason=reason, error=error,
                   lasted_s=round((self.now_ns() - opened_ns) / 1e9, 3), frames=conn.frames,
                   packets=conn.packets, decode_errors=conn.decode_errors,
                   before_keyframe=conn.before_keyframe)
        self.mailbox.put(GenerationEnd(generation, reason))
        return reason


class _Connection:
    """One generation's streams, decoders, pacing and encoder."""

    def __init__(self, reader: LiveReader, container: av.container.InputContainer,
                 generation: int) -> None:
        self.r = reader
        self.container = container
        self.generation = generation
        self.video = container.streams.video[0] if container.streams.video else None
        self.audio = (container.streams.audio[0]
                      if container.streams.audio and (reader.want_audio or reader.want_packets)
                      else None)
        if self.video is None:
            raise NotMediaError(f"{redact(reader.source)}: has no video stream")
        self.frames = 0
        self.packets = 0
        self.decode_errors = 0
        self.before_keyframe = 0  # video packets skipped before the generation's first keyframe
        self._keyframe_seen = False
        self.first_frame_t: int | None = None
        self._realtime_seen = False
        self._encoder: H264Encoder | None = None
        self._copy_video = self.video.codec_context.name in VIDEO_CODECS
        self._copy_audio = (self.audio is not None and reader.want_packets
                            and self.audio.codec_context.name in AUDIO_CODECS)
        self._decode_audio = self.audio is not None and reader.want_audio
        self._resampler = (av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
                           if self._decode_audio else None)
        self._audio_t0: int | None = None
        self._audio_samples = 0
        self._resized = False
        # a file played as a camera: pacing and loop offsets
        self._pace_t0_ns: int | None = None
        self._pace_s0: Fraction | None = None
        self._offset_s = Fraction(0)
        self._loop_end_s = Fraction(0)
        self._described = False
        if reader.want_packets:
            self._describe()

    def describe_fields(self) -> dict[str, Any]:
        v = self.video
        assert v is not None
        ctx = v.codec_context
        return {"codec": ctx.name, "width": ctx.width, "height": ctx.height,
                "time_base": str(v.time_base),
                "audio": self.audio.codec_context.name if self.audio is not None else None,
                "packets": ("copy" if self._copy_video else "h264_encoded")
                if self.r.want_packets else None}

    def _describe(self) -> None:
        assert self.video is not None
        streams: list[StreamDescription] = []
        if self._copy_video:
            streams.append(StreamDescription.from_av_stream(self.video))
        else:
            ctx = self.video.codec_context
            if ctx.width > 0 and ctx.height > 0:
                self._start_encoder(ctx.width, ctx.height)
                assert self._encoder is not None
                streams.append(self._encoder.describe())
            else:
                return  # described at the first decoded frame, when its size is known
        if self._copy_audio and self.audio is not None:
            streams.append(StreamDescription.from_av_stream(self.audio))
        self.r.mailbox.put(GenerationStart(self.generation, tuple(streams)))
        self._described = True

    def _start_encoder(self, width: int, height: int) -> None:
        assert self.video is not None
        rate = plausible_rate(self.video.average_rate or self.video.guessed_rate)
        self._encoder = H264Encoder(width, height, float(rate) if rate else None,
                                    self.video.index, self.generation)

    # --- reading ---

    def demux(self) -> Iterator[av.Packet]:
        streams = [s for s in (self.video, self.audio) if s is not None]
        return self.container.demux(streams)

    def handle(self, packet: av.Packet) -> None:
        if packet.size == 0 and packet.dts is None and packet.pts is None:
            return  # a demuxer's flush packet
        if not self._realtime_seen and self.r.kind == "url":
            self._note_sender_clock()
        tb = Fraction(packet.time_base or packet.stream.time_base)
        if self._offset_s:
            shift = ns_to_pts(int(self._offset_s * 1_000_000_000), tb)
            if packet.pts is not None:
                packet.pts += shift
            if packet.dts is not None:
                packet.dts += shift
        if packet.pts is not None:
            end = Fraction(packet.pts + (packet.duration or 0)) * tb
            self._loop_end_s = max(self._loop_end_s, end)
        if self.r.options.realtime:
            self._pace(packet.dts if packet.dts is not None else packet.pts, tb)
        is_video = packet.stream is self.video
        if is_video:
            t = (self.r.kernel.stamp(packet.dts, tb, True) if self.r.kind == "v4l2"
                 else self.r.vclock.stamp_packet(packet.dts, tb))
        else:
            t = self.r.aclock.stamp_packet(packet.dts, tb)
        if self.r.want_packets and ((is_video and self._copy_video)
                                    or (not is_video and self._copy_audio)):
            if self._described:
                self.r.mailbox.put(EncodedPacket.from_av(packet, t, self.generation))
                self.packets += 1
                self.r.packets += 1
        if is_video:
            self._decode_video(packet)
        elif self._decode_audio:
            self._decode_audio_packet(packet)

    def _note_sender_clock(self) -> None:
        """RTSP: once the first RTCP sender report came (1-2.5 s in, measured), FFmpeg knows the
        sender's wall-clock time of the stream's start: traced as metadata (``t_ns`` stays on
        our monotonic clock; the sender's wall clock is not ours)."""
        value = getattr(self.container, "start_time_realtime", None)
        if value:
            self._realtime_seen = True
            self.r.emit("sender_clock", generation=self.generation,
                         start_time_realtime_us=int(value),
                         behind_our_wall_ms=round((time.time_ns() // 1000 - value) / 1000, 1))

    def _pace(self, ts: int | None, tb: Fraction) -> None:
        """A file played as a camera: wait until the wall clock reaches this packet's time."""
        if ts is None:
            return
        s = Fraction(ts) * tb
        if self._pace_t0_ns is None or self._pace_s0 is None:
            self._pace_t0_ns, self._pace_s0 = self.r.now_ns(), s
            return
        target = self._pace_t0_ns + int((s - self._pace_s0) * 1_000_000_000)
        wait_ns = target - self.r.now_ns()
        if wait_ns > 0:
            self.r.wait(wait_ns / 1e9)

    def _decoded(self, packet: av.Packet, stream: str) -> list[Any]:
        """The packet's frames; a packet the decoder rejects is counted (the first one of a
        generation traced) and skipped."""
        try:
            return list(packet.decode())
        except av.FFmpegError as e:
            self.decode_errors += 1
            if self.decode_errors == 1:
                self.r.emit("decode_error", generation=self.generation, stream=stream,
                            error=_reason(e))
            return []

    def _decode_video(self, packet: av.Packet) -> None:
        if not self._keyframe_seen:
            if not packet.is_keyframe:
                self.before_keyframe += 1  # joined mid-GOP (UDP): nothing decodes before one
                return
            self._keyframe_seen = True
        for frame in self._decoded(packet, "video"):
            tb = Fraction(frame.time_base or packet.stream.time_base)
            t = (self.r.kernel.stamp(frame.pts, tb, False) if self.r.kind == "v4l2"
                 else self.r.vclock.stamp_frame(frame.pts, tb))
            self._frame(frame, t)

    def _frame(self, frame: av.VideoFrame, t: int) -> None:
        if self.r.want_packets and not self._copy_video:
            if self._encoder is None:
                self._start_encoder(frame.width, frame.height)
            if not self._described:
                self._describe()
            assert self._encoder is not None
            for p in self._encoder.encode(frame, t):
                self.r.mailbox.put(p)
                self.packets += 1
                self.r.packets += 1
        img = frame.to_ndarray(format="bgr24")
        limit = self.r.max_frame_pixels
        if limit and img.shape[0] * img.shape[1] > limit:
            img = _fit(img, limit)
            if not self._resized:
                self._resized = True
                self.r.emit("resized", generation=self.generation,
                             width=frame.width, height=frame.height,
                             to_width=img.shape[1], to_height=img.shape[0])
        if self.first_frame_t is None:
            self.first_frame_t = t
            self.r.emit("first_frame", generation=self.generation, t_ns=t, seq=self.r.video_seq)
        pts = frame.pts if frame.pts is not None and frame.pts >= 0 else 0
        item = Frame(source_id=self.r.source_id, seq=self.r.video_seq, pts=pts,
                     time_base=Fraction(frame.time_base or Fraction(1, 90000)), t_ns=t,
                     capture_wall_ns=time.time_ns(), width=img.shape[1], height=img.shape[0],
                     generation=self.generation, data=img)
        self.r.video_seq += 1
        self.frames += 1
        self.r.mailbox.put(item)

    def _decode_audio_packet(self, packet: av.Packet) -> None:
        assert self._resampler is not None
        for frame in self._decoded(packet, "audio"):
            tb = Fraction(frame.time_base or packet.stream.time_base)
            t_frame = self.r.aclock.stamp_frame(frame.pts, tb)
            if self._audio_t0 is None:
                self._audio_t0 = max(t_frame, self.r.last_audio_end_ns)
            for out in self._resampler.resample(frame):
                self._chunk(out.to_ndarray().reshape(-1))

    def _chunk(self, samples: np.ndarray) -> None:
        assert self._audio_t0 is not None
        now = self.r.now_ns()
        t = self._audio_t0 + self._audio_samples * 1_000_000_000 // AUDIO_RATE
        if t > now or t < now - MAX_BEHIND_NS:  # sample count drifted from the clock: re-anchor
            new_t = max(now - len(samples) * 1_000_000_000 // AUDIO_RATE,
                        self.r.last_audio_end_ns)
            self.r.emit("reanchor", generation=self.generation, reason="ahead" if t > now
                         else "behind", by="audio", step_ms=round((new_t - t) / 1e6, 3))
            self._audio_t0 = new_t - self._audio_samples * 1_000_000_000 // AUDIO_RATE
            t = new_t
        n = int(samples.shape[0])
        self._audio_samples += n
        self.r.last_audio_end_ns = t + n * 1_000_000_000 // AUDIO_RATE
        chunk = AudioChunk(source_id=self.r.source_id, seq=self.r.audio_seq,
                           pts=ns_to_pts(t, AUDIO_TIME_BASE), time_base=AUDIO_TIME_BASE, t_ns=t,
                           capture_wall_ns=time.time_ns(), sample_rate=AUDIO_RATE, channels=1,
                           n_samples=n, generation=self.generation,
                           data=np.ascontiguousarray(samples, dtype="<f4"))
        self.r.audio_seq += 1
        self.r.mailbox.put(chunk)

    # --- ends ---

    def finish_loop(self) -> None:
        """The demux ended: drain the decoders (their last frames are real frames)."""
        assert self.video is not None
        try:
            for frame in self.video.codec_context.decode(None):
                tb = Fraction(frame.time_base or self.video.time_base)
                self._frame(frame, self.r.vclock.stamp_frame(frame.pts, tb))
        except av.FFmpegError:
            pass

    def next_loop(self, loop: int) -> None:
        """A looped file: reopen it, every timestamp offset by where the last loop ended."""
        self.container.close()
        self._offset_s = self._loop_end_s
        self.container = open_input(self.r.source, self.r.options)
        self.video = self.container.streams.video[0]
        self.audio = self.container.streams.audio[0] if (
            self.audio is not None and self.container.streams.audio) else None
        if self._resampler is not None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        self.r.emit("loop", generation=self.generation, loop=loop,
                     offset_s=round(float(self._offset_s), 6))

    def close(self) -> None:
        if self._encoder is not None:
            for p in self._encoder.flush():
                self.r.mailbox.put(p)
        self.container.close()


def _fit(img: np.ndarray, max_pixels: int) -> np.ndarray:
    """``img`` scaled down (aspect kept) to at most ``max_pixels`` pixels."""
    import cv2

    scale = math.sqrt(max_pixels / (img.shape[0] * img.shape[1]))
    w = max(1, int(img.shape[1] * scale))
    h = max(1, int(img.shape[0] * scale))
    return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
