"""Reading media files with PyAV: frames and audio chunks with their own ``pts``/``time_base``.

Shared by every role that reads a file (the daemon's file source, the clip cutter's probe, the
offline ``extract`` path), so none of them imports another role.

``t_ns = pts * time_base`` in exact rational arithmetic (:func:`~momentbus.ipc.timebase.pts_to_ns`),
so variable-frame-rate files keep their real timestamps. ``seq`` counts frames read per stream,
gap-free. Audio is resampled to 16 kHz mono float32 (what speech models take); each chunk's
``t_ns`` is its first sample's time, counted in samples from the first audio frame's pts, so it is
sample-accurate and never drifts.

Damage is accounted for as the file is read, never by ending the read: a packet the decoder
rejects is counted and the next one is decoded; :attr:`FileSource.damage` says how many failed,
which time ranges they cover, how many frames were read of those the container announced, and
how much of the announced duration never arrived (:class:`~momentbus.damage.Damage`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np

from .damage import Damage, Span, merge_spans
from .ipc.schema import AudioChunk, Frame
from .ipc.timebase import pts_to_ns
from .ipc.vocab import AUDIO_RATE, AUDIO_TIME_BASE


class SourceError(Exception):
    """Base class: a source cannot be opened or read. A user mistake (bad path, not media) is
    one of these, never a traceback: the CLI prints ``momentbus: error: <message>``, exit 2."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The file does not exist."""


class NotMediaError(SourceError, ValueError):
    """The file exists but is not a media container FFmpeg can read (or it is truncated)."""


class NoVideoStreamError(SourceError, ValueError):
    """The container has no video stream (and video was required)."""


@dataclass(frozen=True)
class SourceInfo:
    """What a source is: geometry, video time_base, duration (ns, if the container says)."""

    source_id: str
    path: str
    width: int
    height: int
    time_base: Fraction
    duration_ns: int | None
    frames: int | None
    has_audio: bool
    average_fps: float | None


def source_id_for(path: str | os.PathLike[str]) -> str:
    """A short, filesystem-safe id for a file source: its stem, sanitised."""
    stem = Path(path).stem
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:64]
    return safe or "source"


class _StreamDamage:
    """The running account of one stream's unreadable stretches (see :attr:`Damage.spans`).

    Every packet the demuxer delivers with a pts is *expected* as a frame at that time (the
    container's index survives damage to the media data); a decoder outputs frames in
    presentation order, so once a frame at ``t`` comes out, an expected frame before ``t`` that
    did not is lost, and the damaged span runs from the frame decoded before it to ``t``. This
    finds the loss exactly even when the decoder reports an error packets later (frame threads)
    or reorders (B-frames); a "lost" frame that still comes out later is taken back.

    A packet the demuxer flags corrupt (MPEG-TS continuity errors) is decoded anyway, with
    concealment: its frame is damaged, so a span runs from the frame before it to the frame after.

    Where frame times do not match packet times (no pts, rewritten timestamps) the account falls
    back to the errors themselves: a span from the last good frame before a failed packet to the
    first good frame after that packet's pts (approximate: within the decoder's delay).
    """

    def __init__(self, origin_ns: int, end_ns: int | None) -> None:
        self.origin_ns = origin_ns
        self.end_ns = end_ns
        self.frames = 0
        self.discarded = 0
        self.last_good_ns: int | None = None
        self.tracking = True
        self._pending: set[int] = set()
        #: lost frame time -> (good frame before, good frame after)
        self._lost: dict[int, Span] = {}
        self._spans: list[Span] = []  # error-based (fallback) spans, closed
        self._open: list[int] | None = None  # error-based span: [start, latest failed pts]
        self._suspects: set[int] = set()  # times of packets flagged corrupt, not decoded yet
        self._suspect_from: int | None = None  # a corrupt frame came out: its span's start

    def _clamp(self, t_ns: int) -> int:
        t_ns = max(t_ns, self.origin_ns)  # a damaged index can give any time
        return min(t_ns, self.end_ns) if self.end_ns is not None else t_ns

    def expect(self, t_ns: int) -> None:
        """A packet with a pts (``t_ns``) was demuxed: a frame should come out at that time."""
        if self.tracking:
            self._pending.add(t_ns)

    def bad(self, t_ns: int | None) -> None:
        """A packet of this stream failed to decode (``t_ns``: its pts, or None)."""
        if self.tracking and t_ns is not None:
            return  # its frame stays pending: the next frames out will show it lost
        self._open_blind(t_ns)

    def corrupt(self, t_ns: int | None) -> None:
        """The demuxer flagged a packet of this stream corrupt (``t_ns``: its pts, or None)."""
        if self.tracking and t_ns is not None:
            self._suspects.add(t_ns)
        else:
            self._open_blind(t_ns)

    def _open_blind(self, t_ns: int | None) -> None:
        start = self.last_good_ns if self.last_good_ns is not None else self.origin_ns
        t = self._clamp(t_ns) if t_ns is not None else start
        if self._open is None:
            self._open = [min(start, t), t]
        else:
            self._open[1] = max(self._open[1], t)

    def good(self, t_ns: int, matched_ns: int | None = None) -> None:
        """A frame decoded at ``t_ns`` (``matched_ns``: its time as the decoder gave it, to
        match against the packets, when the reader rewrote it)."""
        key = t_ns if matched_ns is None else matched_ns
        self.frames += 1
        before = self.last_good_ns if self.last_good_ns is not None else self.origin_ns
        if self.tracking:
            if key in self._pending:
                self._pending.discard(key)
                lost = [q for q in self._pending if q < key]
                for q in lost:
                    self._lost[q] = (min(before, q), t_ns)
                    self._pending.discard(q)
            elif key in self._lost:
                del self._lost[key]  # late, not lost
            else:  # frame times are not the packets' times: count errors instead
                self.tracking = False
                self._pending.clear()
        if self._suspect_from is not None:
            self._spans.append((self._suspect_from, t_ns))
            self._suspect_from = None
        if key in self._suspects:
            self._suspects.discard(key)
            self._suspect_from = min(before, t_ns)
        self.last_good_ns = t_ns if self.last_good_ns is None else max(self.last_good_ns, t_ns)
        if self._open is not None and t_ns > self._open[1]:
            self._spans.append((self._open[0], t_ns))
            self._open = None

    def spans(self, end_ns: int | None = None) -> list[Span]:
        """Every span so far; those still open end at ``end_ns`` (default: the last time known
        to be damaged)."""
        out = list(self._spans) + list(self._lost.values())
        before = self.last_good_ns if self.last_good_ns is not None else self.origin_ns
        if self._pending and self.tracking and end_ns is not None:
            out.append((min(before, min(self._pending)), max(end_ns, max(self._pending))))
        if self._open is not None:
            out.append((self._open[0], max(self._open[1], end_ns or self._open[1])))
        if self._suspect_from is not None:
            out.append((self._suspect_from, max(self._suspect_from, end_ns or self._suspect_from)))
        return out

    def finish(self, last_packet_end_ns: int | None) -> None:
        """The stream ended: frames still expected never came, and an open span runs to the
        announced end (else to the end of the last packet seen)."""
        end = self.end_ns if self.end_ns is not None else last_packet_end_ns
        if end is None:
            end = max(self._pending, default=self.last_good_ns or self.origin_ns)
        self._spans = self.spans(end)
        self._pending.clear()
        self._lost.clear()
        self._open = None
        self._suspect_from = None


class FileSource:
    """Read a media file with PyAV.

    Raises (from the constructor):
        SourceNotFoundError: ``path`` does not exist.
        NotMediaError: not a container FFmpeg opens (text file, truncated mp4, ...).
        NoVideoStreamError: no video stream.
    """

    def __init__(self, path: str | os.PathLike[str], source_id: str | None = None,
                 require_video: bool = True) -> None:
        self.path = str(path)
        if not os.path.exists(self.path):
            raise SourceNotFoundError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise NotMediaError(f"{self.path}: is a directory, not a media file")
        try:
            self.container = av.open(self.path)
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
            raise NotMediaError(f"{self.path}: not a readable media file ({_reason(e)})") from None
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        self.video = self.container.streams.video[0] if self.container.streams.video else None
        if self.video is None and (require_video or self.audio is None):
            self.container.close()
            what = "no video stream" if self.audio is not None or require_video else "no stream"
            raise NoVideoStreamError(f"{self.path}: has {what}")
        main = self.video or self.audio
        assert main is not None
        if self.video is not None:
            self.video.thread_type = "AUTO"
            if self.video.codec_context.width <= 0 or self.video.time_base is None:
                self.container.close()
                raise NotMediaError(f"{self.path}: video stream has no size or time base")
        duration_ns = None
        if main.duration is not None and main.time_base is not None:
            duration_ns = pts_to_ns(main.duration, main.time_base)
        elif self.container.duration is not None:
            duration_ns = self.container.duration * 1000  # AV_TIME_BASE is microseconds
        rate = self.video.average_rate if self.video is not None else None
        self.info = SourceInfo(
            source_id=source_id or source_id_for(self.path),
            path=self.path,
            width=self.video.codec_context.width if self.video is not None else 0,
            height=self.video.codec_context.height if self.video is not None else 0,
            time_base=Fraction(main.time_base),
            duration_ns=duration_ns,
            frames=(self.video.frames or None) if self.video is not None else None,
            has_audio=self.audio is not None,
            average_fps=float(rate) if rate else None,
        )
        self.video_seq = 0
        self.audio_seq = 0
        self.last_video_t_ns = 0
        #: packets the decoder rejected, plus a demux that failed before the end (count)
        self.decode_errors = 0
        #: packets the demuxer flagged corrupt (count)
        self.corrupt_packets = 0
        origin_ns = pts_to_ns(main.start_time or 0, main.time_base) if main.time_base else 0
        end_ns = origin_ns + duration_ns if duration_ns is not None else None
        self._main_damage = _StreamDamage(origin_ns, end_ns)
        self._audio_damage: _StreamDamage | None = None
        if self.audio is not None and main is not self.audio and self.audio.time_base:
            a_origin = pts_to_ns(self.audio.start_time or 0, self.audio.time_base)
            a_end = (a_origin + pts_to_ns(self.audio.duration, self.audio.time_base)
                     if self.audio.duration else end_ns)
            self._audio_damage = _StreamDamage(a_origin, a_end)
        self._frames_expected = (main.frames or None)
        #: the main stream's own announced end; the container's duration (the longest stream)
        #: says nothing about where this stream should end
        self._announced_end_ns = (origin_ns + pts_to_ns(main.duration, main.time_base)
                                  if main.duration and main.time_base else None)
        self._last_packet_end_ns: int | None = None
        self._frame_ns = (round(1e9 / float(rate)) if rate else 0)
        self._complete = False

    @property
    def damage(self) -> Damage:
        """What this read could not get so far (a snapshot; see :class:`Damage`). Audio damage
        counts only when audio is read (``items(audio=True)``)."""
        logs = [self._main_damage] + ([self._audio_damage] if self._audio_damage else [])
        spans: list[Span] = [s for log in logs for s in log.spans()]
        tail = 0
        main = self._main_damage
        end = self._announced_end_ns
        if self._complete and end is not None:
            read_to = self._last_packet_end_ns if self._last_packet_end_ns is not None \
                else main.origin_ns
            if end - read_to > self._frame_ns:
                tail = end - read_to
                spans.append((main.last_good_ns if main.last_good_ns is not None
                              else main.origin_ns, end))
        return Damage(decode_errors=self.decode_errors, corrupt_packets=self.corrupt_packets,
                      spans=merge_spans(spans),
                      frames_read=main.frames,
                      frames_expected=(self._frames_expected - main.discarded
                                       if self._frames_expected is not None else None),
                      unread_tail_ns=tail, complete=self._complete)

    def _log_of(self, stream: av.stream.Stream) -> _StreamDamage | None:
        main = self.video or self.audio
        if stream is main:
            return self._main_damage
        return self._audio_damage if stream is self.audio else None

    def items(self, audio: bool = False, lazy: bool = False) -> Iterator[Frame | AudioChunk]:
        """Frames (and, with ``audio``, 16 kHz mono chunks) in demux order.

        ``lazy``: a frame's ``data`` is a function that converts the decoded picture to BGR
        when called (:meth:`~momentbus.ipc.framebus.FrameBusServer.publish` calls it only for
        frames a group samples: the conversion is 0.41 ms a 640x360 frame here, and at 10 fps
        of 24 most frames are not sampled). Call it before the next frame is read.

        A packet the decoder rejects is counted (with its time) in :attr:`damage` and the
        read goes on with the next one; a demux failure after the first frame (a file cut
        short) ends the stream there, counted too. :attr:`damage` is complete once this
        generator ended by itself.

        Raises:
            NotMediaError: the file turns out unreadable before its first frame.
        """
        streams = ([self.video] if self.video is not None else []) + (
            [self.audio] if audio and self.audio is not None else [])
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE) if audio else None
        audio_origin_ns: int | None = None
        audio_samples = 0
        prev_pts: int | None = None
        try:
            packets = self.container.demux(streams)
            main = self.video or self.audio
            for packet in packets:
                log = self._log_of(packet.stream)
                if log is not None and packet.pts is not None and packet.size:
                    tb = Fraction(packet.time_base or packet.stream.time_base)
                    if packet.is_discard:  # before an edit list's start: decoded, not shown
                        log.discarded += 1
                    else:
                        log.expect(pts_to_ns(packet.pts, tb))
                    if packet.is_corrupt:  # e.g. MPEG-TS continuity: decoded with concealment
                        self.corrupt_packets += 1
                        log.corrupt(pts_to_ns(packet.pts, tb))
                    if packet.stream is main:
                        end = pts_to_ns(packet.pts + (packet.duration or 0), tb)
                        if self._last_packet_end_ns is None or end > self._last_packet_end_ns:
                            self._last_packet_end_ns = end
                        if packet.duration:
                            self._frame_ns = pts_to_ns(packet.duration, tb)
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    # one bad packet never ends the stream: count it, decode the next one
                    self.decode_errors += 1
                    if log is not None:
                        log.bad(None if packet.pts is None else pts_to_ns(
                            packet.pts, Fraction(packet.time_base or packet.stream.time_base)))
                    continue
                for frame in decoded:
                    if packet.stream.type == "video":
                        pts = given = frame.pts
                        if pts is None:  # no timestamp: continue from the previous frame
                            pts = (prev_pts + 1) if prev_pts is not None else 0
                        if prev_pts is not None and pts <= prev_pts:
                            pts = prev_pts + 1  # keep event time strictly increasing
                        prev_pts = pts
                        tb = Fraction(frame.time_base or packet.stream.time_base)
                        t_ns = pts_to_ns(pts, tb)
                        bgr = partial(frame.to_ndarray, format="bgr24")
                        item = Frame(source_id=self.info.source_id, seq=self.video_seq, pts=pts,
                                     time_base=tb, t_ns=t_ns, capture_wall_ns=time.time_ns(),
                                     width=frame.width, height=frame.height,
                                     data=bgr if lazy else bgr())
                        self.video_seq += 1
                        self.last_video_t_ns = t_ns
                        if log is not None:
                            log.good(t_ns, None if given is None else pts_to_ns(given, tb))
                        yield item
                    elif resampler is not None:
                        if log is not None and frame.pts is not None:
                            log.good(pts_to_ns(frame.pts, Fraction(frame.time_base)))
                        if audio_origin_ns is None:
                            pts = frame.pts or 0
                            audio_origin_ns = pts_to_ns(pts, Fraction(frame.time_base))
                        for out in resampler.resample(frame):
                            chunk = self._chunk(out.to_ndarray().reshape(-1), audio_origin_ns,
                                                audio_samples)
                            audio_samples += chunk.n_samples
                            yield chunk
            if resampler is not None and audio_origin_ns is not None:
                for out in resampler.resample(None):
                    chunk = self._chunk(out.to_ndarray().reshape(-1), audio_origin_ns, audio_samples)
                    audio_samples += chunk.n_samples
                    yield chunk
        except av.error.FFmpegError as e:
            if self.video_seq == 0 and self.audio_seq == 0:
                raise NotMediaError(f"{self.path}: cannot decode ({_reason(e)})") from None
            self.decode_errors += 1  # truncated tail: end the stream at the last good frame
            self._main_damage.bad(None)
        # the demux ended by itself (not a consumer that stopped early): close the account
        self._main_damage.finish(self._last_packet_end_ns)
        if self._audio_damage is not None:
            self._audio_damage.finish(None)
        self._complete = True

    def _chunk(self, samples: np.ndarray, origin_ns: int, offset: int) -> AudioChunk:
        pts = round(Fraction(origin_ns, 1_000_000_000) / AUDIO_TIME_BASE) + offset
        chunk = AudioChunk(source_id=self.info.source_id, seq=self.audio_seq, pts=pts,
                           time_base=AUDIO_TIME_BASE, t_ns=pts_to_ns(pts, AUDIO_TIME_BASE),
                           capture_wall_ns=time.time_ns(), sample_rate=AUDIO_RATE, channels=1,
                           n_samples=int(samples.shape[0]),
                           data=np.ascontiguousarray(samples, dtype="<f4"))
        self.audio_seq += 1
        return chunk

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '")[0] if text else type(e).__name__


def probe(path: str | os.PathLike[str], require_video: bool = True) -> SourceInfo:
    """Open ``path``, check it has a decodable frame (video, else audio), and return its
    :class:`SourceInfo`.

    Raises:
        SourceNotFoundError, NotMediaError, NoVideoStreamError: as :class:`FileSource`.
    """
    src = FileSource(path, require_video=require_video)
    try:
        for _ in src.items(audio=src.video is None):
            break
        else:
            raise NotMediaError(f"{src.path}: no decodable frame")
        _check_tail(src)
        return src.info
    finally:
        src.close()


def _check_tail(src: FileSource) -> None:
    """Seek to the last second the index promises and demand a packet there.

    A truncated file whose index (moov) survived opens and decodes its first frames, then ends
    early; this catches it before any work starts.

    Raises:
        NotMediaError: no packet in the last second of the announced duration.
    """
    video = src.video or src.audio
    if video is None or not video.duration or not video.time_base:
        return
    one_second = int(1 / video.time_base)
    target = max(0, (video.start_time or 0) + video.duration - one_second)
    try:
        src.container.seek(target, stream=video, backward=True)
        for packet in src.container.demux(video):
            if packet.size:
                return
    except av.error.FFmpegError:
        pass
    raise NotMediaError(f"{src.path}: truncated (no data in its last second; the file says it "
                        f"lasts {pts_to_ns(video.duration, video.time_base) / 1e9:.1f} s)")
