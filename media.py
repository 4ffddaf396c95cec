"""Reading media files with PyAV: frames and audio chunks with their own ``pts``/``time_base``.

Shared by every role that reads a file (the daemon's file source, the clip cutter's probe, the
offline ``extract`` path), so none of them imports another role.

``t_ns = pts * time_base`` in exact rational arithmetic (:func:`~momentbus.ipc.timebase.pts_to_ns`),
so variable-frame-rate files keep their real timestamps. ``seq`` counts frames read per stream,
gap-free. Audio is resampled to 16 kHz mono float32 (what speech models take); each chunk's
``t_ns`` is its first sample's time, counted in samples from the first audio frame's pts, so it is
sample-accurate and never drifts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

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
        self.decode_errors = 0

    def items(self, audio: bool = False) -> Iterator[Frame | AudioChunk]:
        """Frames (and, with ``audio``, 16 kHz mono chunks) in demux order.

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
            for packet in packets:
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    self.decode_errors += 1
                    continue
                for frame in decoded:
                    if packet.stream.type == "video":
                        pts = frame.pts
                        if pts is None:  # no timestamp: continue from the previous frame
                            pts = (prev_pts + 1) if prev_pts is not None else 0
                        if prev_pts is not None and pts <= prev_pts:
                            pts = prev_pts + 1  # keep event time strictly increasing
                        prev_pts = pts
                        tb = Fraction(frame.time_base or packet.stream.time_base)
                        t_ns = pts_to_ns(pts, tb)
                        img = frame.to_ndarray(format="bgr24")
                        item = Frame(source_id=self.info.source_id, seq=self.video_seq, pts=pts,
                                     time_base=tb, t_ns=t_ns, capture_wall_ns=time.time_ns(),
                                     width=img.shape[1], height=img.shape[0], data=img)
                        self.video_seq += 1
                        self.last_video_t_ns = t_ns
                        yield item
                    elif resampler is not None:
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
