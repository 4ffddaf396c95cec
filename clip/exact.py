"""``exact`` mode: a clip re-encoded so that it starts and ends on the requested frames.

The source is decoded from the keyframe at or before ``start_ns`` (the first frame that decodes on
its own); frames before ``start_ns`` are decoded and dropped, so the clip's first frame is the
first frame whose pts is at or after ``start_ns`` and its last the last at or before ``end_ns``.
Audio is decoded along and trimmed to the sample at the first kept frame's time and at
``end_ns``. Timestamps keep the source's ``time_base`` (variable frame rates stay as they were),
shifted so the clip's clock starts at 0.

Encoder settings, and why:

* video **libx264, CRF 18, preset veryfast, yuv420p**. CRF 18 is where x264's constant-quality
  scale is "visually lossless or nearly so" (FFmpeg's H.264 encoding guide). ``veryfast``
  because the clip role shares the CPUs with the extractors. Measured here (2 shared cores,
  4 s windows, luma PSNR against the source's decoded frames): ``veryfast`` 0.42 s on the
  640x360 sample, 0.20-0.22 s on ``vtest.avi``, 43.0 / 43.6 dB; ``fast`` 0.72 s / 0.37 s,
  45.2 / 44.8 dB, files 0-8% larger; ``medium`` 0.82 s / 0.59-0.84 s, 45.6 / 45.0 dB;
  ``ultrafast`` 0.14 s / 0.09-0.11 s but files 2.5 to 4 times the size. All are above
  40 dB; the 1.5 dB that ``fast`` adds cost 1.7x the time. 8-bit 4:2:0 because that is what
  every player decodes; odd widths or heights are scaled to the even size below (4:2:0 needs
  both even). The source's frame types are cleared so x264 places its own keyframes.
* audio **AAC-LC (FFmpeg's native encoder), 96 kbit/s per channel**, at the source's sample
  rate: AAC is what mp4 players take. FFmpeg's AAC encoding guide gives 64 kbit/s per channel
  as the rule of thumb for audible transparency with libfdk_aac, the best AAC encoder FFmpeg
  has; the native one (the only one in PyAV's wheels) is weaker, hence the headroom.
"""

from __future__ import annotations

import contextlib
import math
import os
from fractions import Fraction
from pathlib import Path

import av
from av.audio.frame import AudioFrame
from av.audio.codeccontext import AudioCodecContext
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.video.frame import PictureType, VideoFrame
from av.video.stream import VideoStream

from ..ipc.timebase import NS_PER_S, ns_to_pts, pts_to_ns
from .errors import ClipError, ClipSourceError, EmptyWindowError
from .sidecar import atomic_target

VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"
X264_OPTIONS = {"crf": "18", "preset": "veryfast"}
AAC_BITS_PER_CHANNEL = 96_000


def cut_exact(source: str | os.PathLike[str], start_ns: int, end_ns: int,
              dest: str | os.PathLike[str], audio_only: bool = False, *,
              muxer: str = "mp4") -> tuple[int, int, int, int]:
    """Re-encode ``[start_ns, end_ns]`` (source clock, ns) of ``source`` into ``dest``.

    ``muxer``: FFmpeg's output format (``mp4`` or ``matroska``). ``audio_only``: cut the audio
    stream alone (``start_ns`` is then the first sample's time).

    Returns:
        ``(start_ns, end_ns, video_packets, audio_packets)``: the first kept frame's pts and the
        end of the last kept frame (pts + duration), on the source clock, and the packets
        written.

    Raises:
        ClipSourceError: the source cannot be opened or decoded.
        EmptyWindowError: no frame (no sample, for ``audio_only``) in the window.
    """
    dest = Path(dest)
    try:
        inp = av.open(str(source))
    except (av.error.FFmpegError, OSError) as e:
        raise ClipSourceError(f"{source}: cannot open ({e})") from e
    try:
        with_video = bool(inp.streams.video) and not audio_only
        video = inp.streams.video[0] if with_video else None
        audio = inp.streams.audio[0] if inp.streams.audio else None
        clock = video if video is not None else audio
        if clock is None:
            raise ClipSourceError(f"{source}: no stream to cut")
        if video is not None:
            video.thread_type = "AUTO"
        if clock.time_base is None:
            raise ClipSourceError(f"{source}: its {clock.type} stream has no time_base")
        inp.seek(ns_to_pts(start_ns, Fraction(clock.time_base)), stream=clock, backward=True,
                 any_frame=False)
        with atomic_target(dest) as tmp:
            out = av.open(str(tmp), "w", format=muxer)
            try:
                job = _Job(out, video, audio, start_ns, end_ns)
                streams = [s for s in (video, audio) if s is not None]
                # demux ends with an empty packet per stream: decoding it flushes the frames a
                # decoder held back for reordering
                for packet in inp.demux(streams):
                    if job.done(packet.stream):
                        if job.all_done():
                            break
                        continue
                    try:
                        frames = packet.decode()
                    except av.error.InvalidDataError:
                        continue  # a damaged packet: its frame is missing, the rest decodes
                    for frame in frames:
                        if isinstance(frame, (VideoFrame, AudioFrame)):
                            job.take(frame)
                result = job.finish()
            except BaseException:
                with contextlib.suppress(Exception):
                    out.close()
                raise
            out.close()
    except ClipError:
        raise
    except (av.error.FFmpegError, ValueError) as e:
        raise ClipError(f"{source}: exact cut to {dest.suffix or 'clip'} failed: {e}") from e
    finally:
        inp.close()
    return result


class _Job:
    """One exact cut's running state: output streams, kept edges, counts."""

    def __init__(self, out: OutputContainer, video: VideoStream | None,
                 audio: AudioStream | None, start_ns: int, end_ns: int) -> None:
        self.out, self.video, self.audio = out, video, audio
        self.start_ns, self.end_ns = start_ns, end_ns
        self.ovideo: VideoStream | None = None
        self.oaudio: AudioStream | None = None
        self.vtb = Fraction(1, 25)
        self.frame_ns = 40_000_000
        if video is not None:
            rate = Fraction(video.average_rate or video.guessed_rate or 25)
            ov = out.add_stream(VIDEO_CODEC, rate=rate, options=X264_OPTIONS)
            assert isinstance(ov, VideoStream)
            ov.width = video.codec_context.width // 2 * 2
            ov.height = video.codec_context.height // 2 * 2
            ov.pix_fmt = "yuv420p"
            self.vtb = Fraction(video.time_base or 1 / rate)
            ov.time_base = self.vtb
            ov.codec_context.time_base = self.vtb
            self.frame_ns = pts_to_ns(1, 1 / rate)
            self.ovideo = ov
        if audio is not None:
            acc = audio.codec_context
            oa = out.add_stream(AUDIO_CODEC, rate=acc.sample_rate, layout=_layout(acc))
            assert isinstance(oa, AudioStream)
            oa.bit_rate = AAC_BITS_PER_CHANNEL * acc.layout.nb_channels
            oa.time_base = Fraction(1, acc.sample_rate)
            self.oaudio = oa
        # the clip's origin on the source clock: the first kept frame (video) or start_ns (audio)
        self.origin_ns: int | None = start_ns if video is None else None
        self.origin_pts = 0
        self.last_end_ns = start_ns
        self.video_done = video is None
        self.audio_done = audio is None
        self.held_audio: list[AudioFrame] = []
        self.nv = self.na = self.frames = self.samples = 0

    def done(self, stream: object) -> bool:
        return self.video_done if stream is self.video else self.audio_done

    def all_done(self) -> bool:
        return self.video_done and self.audio_done

    def take(self, frame: VideoFrame | AudioFrame) -> None:
        if isinstance(frame, VideoFrame):
            self._video(frame)
        else:
            self._audio(frame)

    def _video(self, frame: VideoFrame) -> None:
        if self.video_done or frame.pts is None:
            return
        t = pts_to_ns(frame.pts, self.vtb)
        if t < self.start_ns:
            return
        if t > self.end_ns:  # decoded frames come in pts order: nothing later is in the window
            self.video_done = True
            return
        if self.origin_ns is None:
            self.origin_ns, self.origin_pts = t, frame.pts
            for held in self.held_audio:
                self._audio(held)
            self.held_audio.clear()
        duration = pts_to_ns(frame.duration, self.vtb) if frame.duration else self.frame_ns
        self.last_end_ns = max(self.last_end_ns, t + duration)
        assert self.ovideo is not None
        pts = frame.pts
        if (frame.width, frame.height, frame.format.name) != (
                self.ovideo.width, self.ovideo.height, "yuv420p"):
            frame = frame.reformat(width=self.ovideo.width, height=self.ovideo.height,
                                   format="yuv420p")
        frame.pts = pts - self.origin_pts
        frame.time_base = self.vtb
        frame.pict_type = PictureType.NONE
        self.frames += 1
        self._mux(self.ovideo.encode(frame), video=True)

    def _audio(self, frame: AudioFrame) -> None:
        if self.audio_done or frame.pts is None:
            return
        if self.origin_ns is None:  # video has not reached the window yet
            self.held_audio.append(frame)
            return
        rate = frame.sample_rate
        t0 = frame.pts * Fraction(frame.time_base or Fraction(1, rate))  # seconds, exact
        origin = Fraction(self.origin_ns, NS_PER_S)
        end = Fraction(self.end_ns, NS_PER_S)
        if t0 > end:
            self.audio_done = True
            return
        # samples k with origin <= t0 + k / rate <= end
        k0 = max(0, math.ceil((origin - t0) * rate))
        k1 = min(frame.samples, math.floor((end - t0) * rate) + 1)
        if k1 <= k0:
            return
        if (k0, k1) != (0, frame.samples):
            frame = _slice(frame, k0, k1)
        frame.pts = round((t0 + Fraction(k0, rate) - origin) * rate)
        frame.time_base = Fraction(1, rate)
        self.samples += k1 - k0
        assert self.oaudio is not None
        self._mux(self.oaudio.encode(frame), video=False)

    def _mux(self, packets: list[av.Packet], video: bool) -> None:
        for p in packets:
            self.out.mux(p)
            if video:
                self.nv += 1
            else:
                self.na += 1

    def finish(self) -> tuple[int, int, int, int]:
        if self.video is not None and self.frames == 0:
            raise EmptyWindowError(f"no video frame in [{self.start_ns / 1e9:.3f}, "
                                   f"{self.end_ns / 1e9:.3f}] s")
        if self.video is None and self.samples == 0:
            raise EmptyWindowError(f"no audio in [{self.start_ns / 1e9:.3f}, "
                                   f"{self.end_ns / 1e9:.3f}] s")
        for ostream, video in ((self.ovideo, True), (self.oaudio, False)):
            if ostream is not None:
                self._mux(ostream.encode(None), video=video)
        assert self.origin_ns is not None
        end = self.last_end_ns
        if self.video is None and self.audio is not None:
            end = self.origin_ns + pts_to_ns(self.samples, Fraction(1, self.audio.rate))
        return self.origin_ns, end, self.nv, self.na


def _slice(frame: AudioFrame, k0: int, k1: int) -> AudioFrame:
    """Samples ``[k0, k1)`` of ``frame`` as a new frame (planar or packed)."""
    data = frame.to_ndarray()
    if frame.format.is_planar:
        data = data[:, k0:k1]
    else:
        ch = frame.layout.nb_channels
        data = data[:, k0 * ch:k1 * ch]
    out = AudioFrame.from_ndarray(data.copy(), format=frame.format.name, layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    return out


#: FFmpeg's default layout per channel count (``av_channel_layout_default``), for a source
#: whose channels have no order (Matroska PCM: "2 channels"); AAC needs a known layout
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1",
                    8: "7.1"}


def _layout(cc: AudioCodecContext) -> str:
    name = cc.layout.name
    if name.endswith("channels"):  # unspecified order
        return _DEFAULT_LAYOUTS.get(cc.layout.nb_channels, "stereo")
    return name
