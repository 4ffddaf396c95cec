"""A source's extent on its own clock, and a clip window clamped to it.

A TRIG's window may reach past either edge of the source (a pre-roll before its first frame, a
post-roll past its last, or a corrupt or hostile ``[-2**63, 2**63]``). It is clamped here, in
Python integers, before any number reaches FFmpeg's int64 fields: a window wider than the source
is the whole source, a window with nothing of the source in it is an
:class:`~momentbus.clip.errors.EmptyWindowError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from av.container import InputContainer
from av.stream import Stream

from ..ipc.timebase import NS_PER_S, pts_to_ns
from .errors import EmptyWindowError

_AV_TIME_BASE = Fraction(1, 1_000_000)  # a container's start_time/duration are in microseconds


@dataclass(frozen=True)
class Extent:
    """Where a source's streams lie on the source clock (ns, ``pts * time_base``).

    ``start_ns``: the earliest first timestamp of its video and audio (0 when the container does
    not say). ``end_ns``: the latest end of its video and audio, from the streams' own
    ``start_time + duration``, else the container's; ``None`` when nothing says (the cut then
    runs to the end of the file). ``video_end_ns``: the end of the video stream, when known.
    """

    start_ns: int
    end_ns: int | None
    video_end_ns: int | None
    has_video: bool
    has_audio: bool


def _span(stream: Stream) -> tuple[int | None, int | None]:
    """(start, end) of ``stream`` in ns, each ``None`` when the container does not say."""
    if stream.time_base is None:
        return None, None
    tb = Fraction(stream.time_base)
    start = pts_to_ns(stream.start_time, tb) if stream.start_time is not None else None
    end = None
    if stream.duration:
        end = pts_to_ns((stream.start_time or 0) + stream.duration, tb)
    return start, end


def extent_of(inp: InputContainer) -> Extent:
    """The :class:`Extent` of an open input (its first video and first audio stream)."""
    video = inp.streams.video[0] if inp.streams.video else None
    audio = inp.streams.audio[0] if inp.streams.audio else None
    starts: list[int] = []
    ends: list[int] = []
    video_end = None
    for s in (video, audio):
        if s is None:
            continue
        start, end = _span(s)
        if start is not None:
            starts.append(start)
        if end is not None:
            ends.append(end)
        if s is video:
            video_end = end
    c_start = pts_to_ns(inp.start_time, _AV_TIME_BASE) if inp.start_time is not None else None
    if not starts and c_start is not None:
        starts.append(c_start)
    if not ends and inp.duration:
        ends.append((c_start or 0) + pts_to_ns(inp.duration, _AV_TIME_BASE))
    return Extent(start_ns=min(starts) if starts else 0, end_ns=max(ends) if ends else None,
                  video_end_ns=video_end, has_video=video is not None,
                  has_audio=audio is not None)


def clamp_window(t_start_ns: int, t_end_ns: int, start_ns: int,
                 end_ns: int | None) -> tuple[int, int]:
    """``[t_start_ns, t_end_ns]`` clamped to the source ``[start_ns, end_ns]`` (``end_ns``
    ``None``: unknown, not clamped). Any Python ints (``-2**63`` and beyond are fine).

    Raises:
        EmptyWindowError: the window ends before the source starts, starts at or after its
            end, or is reversed.
    """
    lo = max(t_start_ns, start_ns)
    hi = t_end_ns if end_ns is None else min(t_end_ns, end_ns)
    if hi < lo or (end_ns is not None and lo >= end_ns):
        where = (f"[{start_ns / NS_PER_S:.3f}, "
                 f"{'?' if end_ns is None else f'{end_ns / NS_PER_S:.3f}'}] s")
        raise EmptyWindowError(f"window [{t_start_ns / NS_PER_S:.3f}, {t_end_ns / NS_PER_S:.3f}] s "
                               f"holds nothing of the source {where}")
    return lo, hi
