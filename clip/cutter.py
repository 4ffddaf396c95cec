"""Cutting clips from files with PyAV, and their sidecar metadata.

Two modes:

* ``copy`` (default) remuxes video and audio packets from the keyframe at or before ``t_start``
  to the first frame after ``t_end``: no re-encoding, so it is fast and lossless, and the clip
  may start up to one GOP early (on the sample 3 s; on ``vtest.avi`` 25 s).
* ``exact`` re-encodes (:mod:`~momentbus.clip.exact`: H.264 + AAC) so that the clip's first
  frame is the first at or after ``t_start`` and its last the last at or before ``t_end``.

The container follows the codecs (:mod:`~momentbus.clip.containers`): mp4 when it can hold them,
else Matroska, or what ``clip_format`` demands. The window is first clamped to the source
(:mod:`~momentbus.clip.window`). Every clip has a sidecar JSON next to it, ``NAME.json``, also
when the cut failed (``"ok": false`` and the error). Writes are atomic (temporary file +
rename; :mod:`~momentbus.clip.sidecar`) and names are built from sanitised parts of the TRIG only
(:mod:`~momentbus.clip.names`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, NamedTuple

import av
from av.container import InputContainer
from av.stream import Stream

from ..ipc.schema import Trig, to_json_dict
from ..ipc.timebase import ns_to_pts, pts_to_ns
from .containers import (CLIP_FORMATS, CLIP_SUFFIXES, MKA, MKV, MP4, M4A, Container,
                         check_clip_format, choose_container)
from .errors import (ClipError, ClipOptionError, ClipSourceError, EmptyWindowError,
                     UnsupportedCodecError)
from .exact import AUDIO_CODEC, cut_exact
from .names import clip_name, safe_name
from .sidecar import atomic_target, read_json, write_json
from .window import Extent, clamp_window, extent_of

__all__ = [
    "CLIP_FORMATS", "CLIP_SUFFIXES", "MODES", "ClipError", "ClipOptionError", "ClipResult",
    "ClipSourceError", "Cut", "EmptyWindowError", "UnsupportedCodecError", "clip_name",
    "cut_copy", "cut_exact", "existing_clip", "probe_streams", "safe_name", "write_clip",
    "write_failure_sidecar",
]

#: the values ``mode`` takes
MODES: Final = ("copy", "exact")


@dataclass(frozen=True)
class ClipResult:
    """A written clip. Times are ns on the source clock (``pts * time_base``): ``requested_*``
    the TRIG's window as sent, ``actual_*`` the first shown frame's pts and the end of the last
    (pts + duration). ``*_packets``: packets written per stream. ``container``: FFmpeg's muxer
    (``mp4``/``matroska``). ``reused``: an earlier identical cut was returned
    (:func:`existing_clip`), nothing was written."""

    path: Path
    sidecar: Path
    requested_start_ns: int
    requested_end_ns: int
    actual_start_ns: int
    actual_end_ns: int
    video_packets: int
    audio_packets: int
    mode: str = "copy"
    container: str = "mp4"
    audio_only: bool = False
    trailing_frames: int = 0
    reused: bool = False


class Cut(NamedTuple):
    """What :func:`cut_copy` wrote, on the source clock: the keyframe the clip starts at, the
    end of its last shown frame, and the packets; ``trailing_frames`` are reference frames that
    B-frames in the window needed, shown after it following a gap of a frame or two."""

    start_ns: int
    end_ns: int
    video_packets: int
    audio_packets: int
    trailing_frames: int


def cut_copy(source: str | os.PathLike[str], start_ns: int, end_ns: int,
             dest: str | os.PathLike[str], audio_only: bool = False, *,
             muxer: str | None = None) -> Cut:
    """Remux ``[start_ns, end_ns]`` (ns, source clock) of ``source`` into ``dest`` without
    re-encoding. ``muxer``: FFmpeg's output format (``mp4``, ``matroska``); by default mp4 for a
    clip with video, Matroska for audio alone.

    Video packets are taken in decode order from the keyframe at or before ``start_ns`` while
    their dts is at or before ``end_ns``: every frame shown in the window is in the clip with
    every frame it references. Audio packets go along from the keyframe's time to ``end_ns``.
    A source whose demuxer leaves some dts unset (Matroska, for the first packets after a seek)
    gets them back-filled one frame apart before the first dts it gives (:func:`_with_dts`).

    Raises:
        ClipSourceError: the source cannot be opened or read, or has no stream to cut.
        UnsupportedCodecError: ``muxer`` cannot hold a stream's codec.
        EmptyWindowError: no video (no audio, for ``audio_only``) in the window.
        ClipError: the muxer failed while writing. ``dest`` is then untouched and no
            temporary file is left.
    """
    dest = Path(dest)
    try:
        inp = av.open(str(source))
    except (av.error.FFmpegError, OSError) as e:
        raise ClipSourceError(f"{source}: cannot open ({e})") from e
    try:
        # the clock stream: video, or audio for an audio-only source (every packet a keyframe)
        with_video = bool(inp.streams.video) and not audio_only
        if not with_video and not inp.streams.audio:
            raise ClipSourceError(f"{source}: no stream to cut")
        video = inp.streams.video[0] if with_video else inp.streams.audio[0]
        audio = inp.streams.audio[0] if inp.streams.audio and with_video else None
        vtb = Fraction(video.time_base)
        inp.seek(ns_to_pts(start_ns, vtb), stream=video, backward=True, any_frame=False)
        fmt = muxer or ("mp4" if with_video else "matroska")
        with atomic_target(dest) as tmp:
            out = av.open(str(tmp), "w", format=fmt)
            try:
                ovideo = _add_copy(out, video, fmt)
                oaudio = _add_copy(out, audio, fmt) if audio is not None else None
                origin_ns: int | None = None
                shown: list[tuple[int, int]] = []  # (pts, duration) ns of every video frame cut
                nv = na = 0
                video_done = False
                frame_ns = _frame_ns(video)
                streams = [video] + ([audio] if audio is not None else [])
                for packet in _with_dts(inp.demux(streams), video, frame_ns):
                    if packet.dts is None or packet.pts is None:
                        continue
                    tb = Fraction(packet.time_base)
                    t = pts_to_ns(packet.pts, tb)
                    if packet.stream is video:
                        if video_done:
                            continue
                        if origin_ns is None:
                            if not packet.is_keyframe:
                                continue
                            origin_ns = t
                        # decode order: every frame shown at or before end_ns has its dts at or
                        # before end_ns, and so has every frame it references (B-frames)
                        if pts_to_ns(packet.dts, tb) > end_ns:
                            video_done = True
                            if audio is None:
                                break
                            continue
                        shown.append((t, pts_to_ns(packet.duration, tb) if packet.duration
                                      else frame_ns))
                        _rebase(packet, origin_ns, tb)
                        packet.stream = ovideo
                        out.mux(packet)
                        nv += 1
                    else:
                        if origin_ns is None or t < origin_ns:
                            continue
                        if t > end_ns:
                            if video_done:
                                break
                            continue
                        _rebase(packet, origin_ns, tb)
                        packet.stream = oaudio
                        out.mux(packet)
                        na += 1
                actual_end, trailing = _covered_until(shown)
                if nv == 0 or origin_ns is None or actual_end <= start_ns:
                    what = "video" if with_video else "audio"
                    raise EmptyWindowError(f"no {what} in [{start_ns / 1e9:.3f}, "
                                           f"{end_ns / 1e9:.3f}] s")
            except BaseException:
                with contextlib.suppress(Exception):
                    out.close()
                raise
            out.close()
    except ClipError:
        raise
    except (av.error.FFmpegError, ValueError) as e:
        raise ClipError(f"{source}: remux to {dest.suffix or 'clip'} failed: {e}") from e
    finally:
        inp.close()
    return Cut(origin_ns, actual_end, nv, na, trailing)


def _add_copy(out: av.container.OutputContainer, stream: Stream, fmt: str) -> Stream:
    """An output stream copying ``stream``'s codec as it is.

    Raises:
        UnsupportedCodecError: the container ``fmt`` cannot hold the codec.
    """
    try:
        return out.add_stream_from_template(stream)
    except ValueError as e:
        codec = stream.codec_context.name if stream.codec_context is not None else stream.type
        raise UnsupportedCodecError(f"{fmt} cannot hold {codec} ({e})", codec) from e


def _with_dts(packets: Iterable[av.Packet], video: Stream, frame_ns: int,
              hold_limit: int = 256) -> Iterator[av.Packet]:
    """``packets`` in demux order, with the dts a demuxer left unset filled in.

    After a seek, FFmpeg's Matroska demuxer (which stores pts only) cannot say the dts of the
    first video packets of a stream with B-frames: it reports ``None`` until its reorder buffer
    fills (two packets on the sample). Those packets (keyframe first) are held, with any audio
    between them to keep the order, until a video packet with a dts arrives; they get that dts
    minus one frame duration per packet back (capped at their own pts: dts <= pts). An audio
    packet without dts gets its pts (audio is never reordered). A stream that gives no dts for
    ``hold_limit`` packets in a row is passed on as it is (memory stays bounded; the cut then
    skips its packets, as it skips video packets still without dts at the end of the file).
    """
    held: list[av.Packet] = []
    for p in packets:
        if p.dts is None and p.pts is not None and p.stream is not video:
            p.dts = p.pts
        if p.stream is video and p.dts is None and p.pts is not None and hold_limit:
            held.append(p)
            if len(held) > hold_limit:
                hold_limit = 0
                yield from held
                held.clear()
            continue
        if held and p.stream is video and p.dts is not None:
            step = p.duration or max(1, ns_to_pts(frame_ns, Fraction(p.time_base)))
            back = [q for q in held if q.stream is video]
            for k, q in enumerate(reversed(back), 1):
                q.dts = min(p.dts - k * step, q.pts)
            yield from held
            held.clear()
        elif held:
            held.append(p)
            continue
        yield p
    yield from (q for q in held if q.dts is not None)


def _covered_until(shown: list[tuple[int, int]]) -> tuple[int, int]:
    """(end of the last frame shown, frames shown after a gap).

    Cutting on dts keeps every frame a shown one references; with B-frames that can include a
    reference frame presented after the window, after a gap of frames that were not needed
    (the player holds the previous frame). Those trailing frames are counted.
    """
    frames = sorted(shown)
    if not frames:
        return 0, 0
    end = frames[0][0] + frames[0][1]
    trailing = 0
    for pts, dur in frames[1:]:
        if trailing or pts > end + dur // 2:  # after a gap of at least half a frame
            trailing += 1
        end = max(end, pts + dur)
    return end, trailing


def _frame_ns(stream: Stream) -> int:
    """One frame's duration (ns) from the stream's average rate, for packets that carry none
    (1/25 s if the container does not say; an audio stream's packets carry their own)."""
    rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)
    return pts_to_ns(1, 1 / Fraction(rate)) if rate else 40_000_000


def _rebase(packet: av.Packet, origin_ns: int, tb: Fraction) -> None:
    offset = ns_to_pts(origin_ns, tb)
    packet.pts -= offset
    packet.dts -= offset


# ---------------------------------------------------------------------------- clips + sidecars


def write_clip(source: str | os.PathLike[str], trig: Trig, clips_dir: str | os.PathLike[str],
               index: int, duration_ns: int | None = None, *, clip_format: str = "auto",
               mode: str = "copy", reuse: bool = True) -> ClipResult:
    """Cut the clip of ``trig`` into ``clips_dir`` and write its sidecar JSON next to it.

    Args:
        source: the media file the TRIG's times refer to (any file FFmpeg decodes).
        trig: its window ``[t_start_ns, t_end_ns]`` (ns, source clock) is clamped to the source
            (any ints: ``[-2**63, 2**63]`` is the whole source).
        clips_dir: created if missing.
        index: the clip's ordinal when ``trig.index`` is 0 (see :func:`clip_name`).
        duration_ns: the source's duration (ns) as the caller probed it; the window's end is
            clamped to it only when the container gives no end of its own.
        clip_format: ``"auto"`` (mp4 when it holds the codecs, else Matroska), ``"mp4"`` or
            ``"mkv"`` (:mod:`~momentbus.clip.containers`).
        mode: ``"copy"`` (remux from the keyframe at or before the start) or ``"exact"``
            (re-encode, first and last frames the requested ones, ±1 frame).
        reuse: when the clip of this TRIG was already written with the same source, mode and
            clip format (its sidecar says ``"ok": true`` and the clip file is there, of the
            size the sidecar records), return it (``reused=True``) instead of cutting again:
            a re-delivered TRIG costs a file read. ``False`` always cuts (and atomically
            replaces the old files).

    Files: ``NNN_RULE_SSSS_mmms.{mp4,mkv,mka,m4a}`` and ``NNN_RULE_SSSS_mmms.json``; clips of
    the same name with another suffix (an earlier cut in another format) are removed.

    Returns:
        the :class:`ClipResult`.

    Raises:
        ClipError: any failure (a subclass says which: :class:`ClipOptionError`,
            :class:`UnsupportedCodecError`, :class:`EmptyWindowError`,
            :class:`ClipSourceError`; anything else PyAV or the OS raised is wrapped, as the
            ``__cause__``). A failure sidecar (:func:`write_failure_sidecar`) has then been
            written, its path in the error's ``sidecar`` (``None`` if even that failed), no
            clip or temporary file is left under the name, and the role can go on.
    """
    clips = Path(clips_dir)
    name = clip_name(index, trig)
    try:
        if mode not in MODES:
            raise ClipOptionError(f"clip mode {mode!r}: use one of {', '.join(MODES)}")
        check_clip_format(clip_format)
        clips.mkdir(parents=True, exist_ok=True)
        if reuse:
            done = existing_clip(source, trig, clips, index, clip_format=clip_format, mode=mode)
            if done is not None:
                return done
        return _write(source, trig, clips, name, duration_ns, clip_format, mode)
    except Exception as e:
        err = e if isinstance(e, ClipError) else ClipError(f"{type(e).__name__}: {e}")
        with contextlib.suppress(OSError):  # the disk that refused the clip may refuse this too
            err.sidecar = write_failure_sidecar(source, trig, clips, index, err, mode=mode,
                                                clip_format=clip_format)
        if err is e:
            raise
        raise err from e


def _write(source: str | os.PathLike[str], trig: Trig, clips: Path, name: str,
           duration_ns: int | None, clip_format: str, mode: str) -> ClipResult:
    try:
        inp = av.open(str(source))
    except (av.error.FFmpegError, OSError) as e:
        raise ClipSourceError(f"{source}: cannot open ({e})") from e
    with inp:
        extent = extent_of(inp)
        if not extent.has_video and not extent.has_audio:
            raise ClipSourceError(f"{source}: no video or audio stream to cut")
        end_bound = extent.end_ns if extent.end_ns is not None else duration_ns
        start, end = clamp_window(trig.t_start_ns, trig.t_end_ns, extent.start_ns, end_bound)
        # a window entirely after the last video frame (audio runs longer) is an audio clip
        audio_only = not extent.has_video or (extent.has_audio and extent.video_end_ns is not None
                                              and start >= extent.video_end_ns)
        try:
            container = _container(inp, audio_only, clip_format, mode)
            cut = _cut(source, start, end, extent, clips / f"{name}{container.suffix}",
                       audio_only, container, mode)
        except EmptyWindowError:
            if audio_only or not extent.has_audio:
                raise
            # the container did not say where its video ends (Matroska): no video in the window
            audio_only = True
            container = _container(inp, True, clip_format, mode)
            cut = _cut(source, start, end, extent, clips / f"{name}{container.suffix}", True,
                       container, mode)
        codecs = _codecs(inp, audio_only, mode)
    dest = clips / f"{name}{container.suffix}"
    sidecar = clips / f"{name}.json"
    meta: dict[str, Any] = {
        "ok": True,
        "clip": dest.name, "source": str(source), "mode": mode, "audio_only": audio_only,
        "requested": {"t_start_ns": trig.t_start_ns, "t_end_ns": trig.t_end_ns},
        "clamped": {"t_start_ns": start, "t_end_ns": end},
        "actual": {"t_start_ns": cut.start_ns, "t_end_ns": cut.end_ns},
        "video_packets": cut.video_packets, "audio_packets": cut.audio_packets,
        "trailing_frames": cut.trailing_frames,
        "clip_format": clip_format, "container": container.muxer, "codecs": codecs,
        "bytes": dest.stat().st_size,
        "trig": to_json_dict(trig),
    }
    write_json(sidecar, meta)
    _remove_other_clips(clips, name, keep=dest.suffix)
    return ClipResult(dest, sidecar, trig.t_start_ns, trig.t_end_ns, cut.start_ns, cut.end_ns,
                      cut.video_packets, cut.audio_packets, mode=mode, container=container.muxer,
                      audio_only=audio_only, trailing_frames=cut.trailing_frames)


def _container(inp: InputContainer, audio_only: bool, clip_format: str, mode: str) -> Container:
    if mode == "exact":  # H.264 + AAC: mp4 holds them
        if clip_format == "mkv":
            return MKA if audio_only else MKV
        return M4A if audio_only else MP4
    streams: list[Stream] = [] if audio_only else [inp.streams.video[0]]
    if inp.streams.audio:
        streams.append(inp.streams.audio[0])
    return choose_container(streams, clip_format, audio_only=audio_only)


def _cut(source: str | os.PathLike[str], start: int, end: int, extent: Extent, dest: Path,
         audio_only: bool, container: Container, mode: str) -> Cut:
    if not audio_only and extent.video_end_ns is not None:
        end = min(end, extent.video_end_ns)
    if mode == "exact":
        s, e, nv, na = cut_exact(source, start, end, dest, audio_only, muxer=container.muxer)
        return Cut(s, e, nv, na, 0)
    return cut_copy(source, start, end, dest, audio_only, muxer=container.muxer)


def _codecs(inp: InputContainer, audio_only: bool, mode: str) -> dict[str, str]:
    """The clip's codecs by stream type (FFmpeg's names)."""
    out: dict[str, str] = {}
    if inp.streams.video and not audio_only:
        out["video"] = "h264" if mode == "exact" else inp.streams.video[0].codec_context.name
    if inp.streams.audio:
        out["audio"] = AUDIO_CODEC if mode == "exact" else inp.streams.audio[0].codec_context.name
    return out


def _remove_other_clips(clips: Path, name: str, keep: str | None = None) -> None:
    for suffix in CLIP_SUFFIXES:
        if suffix != keep:
            (clips / f"{name}{suffix}").unlink(missing_ok=True)


def write_failure_sidecar(source: str | os.PathLike[str], trig: Trig,
                          clips_dir: str | os.PathLike[str], index: int, error: BaseException | str,
                          *, mode: str = "copy", clip_format: str = "auto") -> Path:
    """Write the sidecar of a clip that could not be cut, atomically, under the name a
    successful cut would have (``NAME.json``, NAME from :func:`clip_name`), and remove any
    earlier clip of that name (the sidecar speaks for the name).

    It holds ``"ok": false``, ``"clip": null``, ``"actual": null``, the source, mode, clip
    format, the requested edges, the TRIG, ``"error"`` (the message) and ``"error_type"``.

    Returns:
        the sidecar's path.

    Raises:
        OSError: ``clips_dir`` cannot be written.
    """
    clips = Path(clips_dir)
    clips.mkdir(parents=True, exist_ok=True)
    name = clip_name(index, trig)
    meta: dict[str, Any] = {
        "ok": False,
        "clip": None, "source": str(source), "mode": mode, "audio_only": None,
        "requested": {"t_start_ns": trig.t_start_ns, "t_end_ns": trig.t_end_ns},
        "actual": None,
        "clip_format": clip_format,
        "error": str(error) or type(error).__name__,
        "error_type": type(error).__name__ if isinstance(error, BaseException) else "ClipError",
        "trig": to_json_dict(trig),
    }
    path = write_json(clips / f"{name}.json", meta)
    _remove_other_clips(clips, name)
    return path


def existing_clip(source: str | os.PathLike[str], trig: Trig, clips_dir: str | os.PathLike[str],
                  index: int, *, clip_format: str = "auto",
                  mode: str = "copy") -> ClipResult | None:
    """The clip of ``trig`` if it was already cut with these options, else ``None``.

    "Already cut" means: ``NAME.json`` (NAME from :func:`clip_name`) says ``"ok": true`` for
    the same TRIG (every field), the same ``source`` path, ``mode`` and ``clip_format``, and the
    clip file it names is there with the size it records. Reads only the sidecar and one
    ``stat``; never raises for a missing or damaged sidecar (that is ``None``).
    """
    clips = Path(clips_dir)
    name = clip_name(index, trig)
    meta = read_json(clips / f"{name}.json")
    if meta is None or meta.get("ok") is not True:
        return None
    clip = meta.get("clip")
    want = json.loads(json.dumps(to_json_dict(trig)))
    if (not isinstance(clip, str) or Path(clip).name != clip or not clip.startswith(name)
            or meta.get("trig") != want or meta.get("source") != str(source)
            or meta.get("mode") != mode or meta.get("clip_format") != clip_format):
        return None
    path = clips / clip
    try:
        if path.stat().st_size != meta.get("bytes"):
            return None
        actual = meta["actual"]
        return ClipResult(path, clips / f"{name}.json", trig.t_start_ns, trig.t_end_ns,
                          int(actual["t_start_ns"]), int(actual["t_end_ns"]),
                          int(meta["video_packets"]), int(meta["audio_packets"]), mode=mode,
                          container=str(meta.get("container", "mp4")),
                          audio_only=bool(meta.get("audio_only")),
                          trailing_frames=int(meta.get("trailing_frames", 0)), reused=True)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def probe_streams(source: str | os.PathLike[str]) -> tuple[bool, int | None, bool]:
    """(has video, end of the video stream in ns if known, has audio).

    Raises:
        ClipSourceError: the source cannot be opened.
    """
    try:
        inp = av.open(str(source))
    except (av.error.FFmpegError, OSError) as e:
        raise ClipSourceError(f"{source}: cannot open ({e})") from e
    with inp:
        extent = extent_of(inp)
    return extent.has_video, extent.video_end_ns, extent.has_audio
