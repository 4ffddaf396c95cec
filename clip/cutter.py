"""Cutting clips from files with PyAV, and their sidecar metadata.

``copy`` mode remuxes video and audio packets from the keyframe at or before ``t_start`` to the
first frame after ``t_end``: no re-encoding, so it is fast and lossless, and the clip may start up
to one GOP early. The sidecar records the requested and the actual edges. Writes are atomic
(temporary file + rename) and file names are built from sanitised parts only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av

from ..ipc.schema import Trig, to_json_dict
from ..ipc.timebase import ns_to_pts, pts_to_ns


class ClipError(RuntimeError):
    """A clip could not be cut (source unreadable, empty window)."""


@dataclass(frozen=True)
class ClipResult:
    path: Path
    sidecar: Path
    requested_start_ns: int
    requested_end_ns: int
    actual_start_ns: int
    actual_end_ns: int
    video_packets: int
    audio_packets: int


def safe_name(text: str, limit: int = 48) -> str:
    """``text`` reduced to ``[A-Za-z0-9_-]`` (never a path separator or dot-dot)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:limit] or "clip"


def clip_name(index: int, trig: Trig) -> str:
    """``NNN_RULE_SSSS_mmms``: the trigger's ordinal (``trig.index`` when fusion assigned one,
    else ``index``), its sanitised rule and its onset: derived from the TRIG alone, so cutting
    the same TRIG again names the same clip."""
    name = f"{trig.index or index:03d}_{safe_name(trig.rule)}_{trig.t_event_ns / 1e9:08.3f}s"
    return name.replace(".", "_", 1)


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
             dest: str | os.PathLike[str], audio_only: bool = False) -> Cut:
    """Remux ``[start_ns, end_ns]`` of ``source`` into ``dest`` (MP4) without re-encoding.

    Video packets are taken in decode order from the keyframe at or before ``start_ns`` while
    their dts is at or before ``end_ns``: every frame shown in the window is in the clip with
    every frame it references.

    Raises:
        ClipError: no video packet in the window, or the source cannot be read.
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        inp = av.open(str(source))
    except av.error.FFmpegError as e:
        raise ClipError(f"{source}: cannot open ({e})") from None
    try:
        # the clock stream: video, or audio for an audio-only source (every packet a keyframe)
        with_video = bool(inp.streams.video) and not audio_only
        if not with_video and not inp.streams.audio:
            raise ClipError(f"{source}: no stream to cut")
        video = inp.streams.video[0] if with_video else inp.streams.audio[0]
        audio = inp.streams.audio[0] if inp.streams.audio and with_video else None
        vtb = Fraction(video.time_base)
        inp.seek(ns_to_pts(start_ns, vtb), stream=video, backward=True, any_frame=False)
        out = av.open(str(tmp), "w", format="mp4" if with_video else "matroska")
        try:
            ovideo = out.add_stream_from_template(video)
            oaudio = out.add_stream_from_template(audio) if audio is not None else None
            origin_ns: int | None = None
            shown: list[tuple[int, int]] = []  # (pts, duration) ns of every video frame cut
            nv = na = 0
            video_done = False
            frame_ns = _frame_ns(video)
            streams = [video] + ([audio] if audio is not None else [])
            for packet in inp.demux(streams):
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
                raise ClipError(f"no video in [{start_ns / 1e9:.3f}, {end_ns / 1e9:.3f}] s")
        finally:
            out.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        inp.close()
    os.replace(tmp, dest)
    return Cut(origin_ns, actual_end, nv, na, trailing)


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


def _frame_ns(stream: av.stream.Stream) -> int:
    """One frame's duration (ns) from the stream's average rate, for packets that carry none
    (1/25 s if the container does not say; an audio stream's packets carry their own)."""
    rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)
    return pts_to_ns(1, 1 / Fraction(rate)) if rate else 40_000_000


def _rebase(packet: av.Packet, origin_ns: int, tb: Fraction) -> None:
    offset = ns_to_pts(origin_ns, tb)
    packet.pts -= offset
    packet.dts -= offset


def write_clip(source: str, trig: Trig, clips_dir: str | os.PathLike[str], index: int,
               duration_ns: int | None = None) -> ClipResult:
    """Cut the clip of ``trig`` and write its sidecar JSON next to it (both atomically).

    Raises:
        ClipError: as :func:`cut_copy`.
    """
    clips = Path(clips_dir)
    clips.mkdir(parents=True, exist_ok=True)
    name = clip_name(index, trig)
    has_video, video_end_ns, has_audio = probe_streams(source)
    end = trig.t_end_ns if duration_ns is None else min(trig.t_end_ns, duration_ns)
    # a window entirely after the last video frame (audio runs longer) is an audio clip
    audio_only = not has_video or (has_audio and video_end_ns is not None
                                   and trig.t_start_ns >= video_end_ns)
    dest = clips / f"{name}.{'mka' if audio_only else 'mp4'}"
    try:
        cut = cut_copy(source, trig.t_start_ns, end if audio_only else
                       min(end, video_end_ns or end), dest, audio_only=audio_only)
    except ClipError:
        if audio_only or not has_audio:
            raise
        # the container did not say where its video ends (Matroska): no video in the window
        audio_only = True
        dest = clips / f"{name}.mka"
        cut = cut_copy(source, trig.t_start_ns, end, dest, audio_only=True)
    sidecar = clips / f"{name}.json"
    meta: dict[str, Any] = {
        "clip": dest.name, "source": str(source), "mode": "copy", "audio_only": audio_only,
        "requested": {"t_start_ns": trig.t_start_ns, "t_end_ns": trig.t_end_ns},
        "actual": {"t_start_ns": cut.start_ns, "t_end_ns": cut.end_ns},
        "video_packets": cut.video_packets, "audio_packets": cut.audio_packets,
        "trailing_frames": cut.trailing_frames,
        "trig": to_json_dict(trig),
    }
    tmp = sidecar.with_name(f".{sidecar.name}.part")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(tmp, sidecar)
    return ClipResult(dest, sidecar, trig.t_start_ns, trig.t_end_ns, cut.start_ns, cut.end_ns,
                      cut.video_packets, cut.audio_packets)


def probe_streams(source: str | os.PathLike[str]) -> tuple[bool, int | None, bool]:
    """(has video, end of the video stream in ns if known, has audio)."""
    with av.open(str(source)) as c:
        if not c.streams.video:
            return False, None, bool(c.streams.audio)
        v = c.streams.video[0]
        end = None
        if v.duration is not None:
            end = pts_to_ns((v.start_time or 0) + v.duration, Fraction(v.time_base))
        return True, end, bool(c.streams.audio)
