"""Read and trim mp4 edit lists (ISO/IEC 14496-12 §8.6.5-8.6.6: ``edts``/``elst``).

FFmpeg's mp4 muxer writes the *start* of a track's edit list itself: packets muxed with negative
timestamps (the GOP lead-in before the first frame to show) become an edit whose ``media_time``
skips them. It sets the edit's *duration* to the end of the latest frame, so frames decoded only
as references for the last shown frames (B-frame reordering) would still be shown.
:func:`set_presentation_ends` rewrites that duration in place (same box sizes, fixed-width
fields), so players that honour edit lists (FFmpeg's mov demuxer marks samples outside
``[media_time, media_time + duration)`` as discard; GStreamer's qtdemux turns the edit into its
segment) stop at the requested frame.

Durations in ``elst``, ``tkhd`` and ``mvhd`` are in the movie timescale (``mvhd``; FFmpeg writes
1000). An end is rounded *down* to it: a shown frame lasts more than one tick of 1/1000 s, so the
last shown frame still starts before the rounded end and the next one does not.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from math import floor

_CONTAINERS = {b"moov", b"trak", b"edts", b"mdia"}


class Mp4EditError(ValueError):
    """The file is not an mp4 this module can read or patch (no moov, unexpected layout)."""


@dataclass(frozen=True, slots=True)
class EditEntry:
    """One ``elst`` entry: ``segment_duration`` in the movie timescale, ``media_time`` in the
    track's media timescale (-1: an empty edit, a presentation delay)."""

    segment_duration: int
    media_time: int
    rate: Fraction


@dataclass(frozen=True, slots=True)
class TrackEdits:
    track_id: int
    handler: str  # "vide", "soun", ...
    media_timescale: int
    tkhd_duration: int
    edits: tuple[EditEntry, ...]


@dataclass(frozen=True, slots=True)
class MovieEdits:
    movie_timescale: int
    mvhd_duration: int
    tracks: tuple[TrackEdits, ...]


@dataclass
class _Field:
    offset: int  # absolute file offset
    size: int  # 4 or 8 bytes


@dataclass
class _TrackInfo:
    track_id: int = 0
    handler: str = ""
    media_timescale: int = 0
    tkhd_duration: int = 0
    tkhd_field: _Field | None = None
    edits: list[EditEntry] = field(default_factory=list)
    elst_duration_fields: list[_Field] = field(default_factory=list)


@dataclass
class _Movie:
    timescale: int = 0
    duration: int = 0
    duration_field: _Field | None = None
    tracks: list[_TrackInfo] = field(default_factory=list)


def _boxes(buf: bytes, start: int, end: int, base: int) -> Iterator[tuple[bytes, int, int]]:
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[i:i + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", buf[i + 8:i + 16])[0]
            header = 16
        elif size == 0:
            size = end - i
        if size < header or i + size > end:
            raise Mp4EditError(f"box {kind!r} at {base + i} has a bad size")
        yield kind, i + header, i + size
        i += size


def _read_moov(path: str | os.PathLike[str]) -> tuple[int, bytes]:
    with open(path, "rb") as f:
        pos = 0
        total = os.fstat(f.fileno()).st_size
        while pos + 8 <= total:
            f.seek(pos)
            head = f.read(16)
            size, kind = struct.unpack(">I4s", head[:8])
            header = 8
            if size == 1:
                size = struct.unpack(">Q", head[8:16])[0]
                header = 16
            elif size == 0:
                size = total - pos
            if size < header:
                raise Mp4EditError(f"{path}: bad box size at {pos}")
            if kind == b"moov":
                f.seek(pos)
                return pos, f.read(size)
            pos += size
    raise Mp4EditError(f"{path}: no moov box")


def _parse(path: str | os.PathLike[str]) -> _Movie:
    base, moov = _read_moov(path)
    movie = _Movie()

    def walk(start: int, end: int, track: _TrackInfo | None) -> None:
        for kind, body, stop in _boxes(moov, start, end, base):
            version = moov[body] if stop > body else 0
            if kind == b"mvhd":
                off = body + (20 if version == 1 else 12)
                movie.timescale = struct.unpack(">I", moov[off:off + 4])[0]
                size = 8 if version == 1 else 4
                movie.duration = int.from_bytes(moov[off + 4:off + 4 + size], "big")
                movie.duration_field = _Field(base + off + 4, size)
            elif kind == b"trak":
                t = _TrackInfo()
                movie.tracks.append(t)
                walk(body, stop, t)
            elif kind in _CONTAINERS:
                walk(body, stop, track)
            elif track is None:
                continue
            elif kind == b"tkhd":
                off = body + (20 if version == 1 else 12)
                track.track_id = struct.unpack(">I", moov[off:off + 4])[0]
                size = 8 if version == 1 else 4
                d_off = off + 8
                track.tkhd_duration = int.from_bytes(moov[d_off:d_off + size], "big")
                track.tkhd_field = _Field(base + d_off, size)
            elif kind == b"mdhd":
                off = body + (20 if version == 1 else 12)
                track.media_timescale = struct.unpack(">I", moov[off:off + 4])[0]
            elif kind == b"hdlr":
                track.handler = moov[body + 8:body + 12].decode("latin-1")
            elif kind == b"elst":
                count = struct.unpack(">I", moov[body + 4:body + 8])[0]
                i = body + 8
                for _ in range(count):
                    if version == 1:
                        dur, media = struct.unpack(">Qq", moov[i:i + 16])
                        field = _Field(base + i, 8)
                        i += 16
                    else:
                        dur, media = struct.unpack(">Ii", moov[i:i + 8])
                        field = _Field(base + i, 4)
                        i += 8
                    whole, frac = struct.unpack(">hH", moov[i:i + 4])
                    i += 4
                    track.edits.append(EditEntry(dur, media, whole + Fraction(frac, 65536)))
                    track.elst_duration_fields.append(field)

    walk(8, len(moov), None)
    if not movie.timescale or movie.duration_field is None:
        raise Mp4EditError(f"{path}: no mvhd")
    return movie


def read_edit_lists(path: str | os.PathLike[str]) -> MovieEdits:
    """Every track's edit list and durations (an ffprobe-like check without ffprobe).

    Raises:
        Mp4EditError: no moov/mvhd, or a malformed box.
        OSError: the file cannot be read.
    """
    movie = _parse(path)
    return MovieEdits(movie.timescale, movie.duration, tuple(
        TrackEdits(t.track_id, t.handler, t.media_timescale, t.tkhd_duration,
                   tuple(t.edits)) for t in movie.tracks))


def set_presentation_ends(path: str | os.PathLike[str],
                          ends_s: Mapping[int, Fraction]) -> MovieEdits:
    """Make track ``track_id`` stop presenting at ``ends_s[track_id]`` seconds of the movie's
    presentation timeline (0 = the first shown frame), by rewriting its last edit's duration,
    its ``tkhd`` duration and the ``mvhd`` duration, in place. Returns the edits as written.

    Raises:
        Mp4EditError: a track is missing or has no non-empty edit, the end lies before the
            edit's start, or a value does not fit its field.
        OSError: the file cannot be written.
    """
    movie = _parse(path)
    tracks = {t.track_id: t for t in movie.tracks}
    patches: list[tuple[_Field, int]] = []
    durations = {}
    for track_id, end_s in ends_s.items():
        t = tracks.get(track_id)
        if t is None or not t.edits:
            raise Mp4EditError(f"{path}: track {track_id} has no edit list")
        last = max((i for i, e in enumerate(t.edits) if e.media_time != -1), default=None)
        if last is None:
            raise Mp4EditError(f"{path}: track {track_id} has only empty edits")
        end_ticks = floor(end_s * movie.timescale)
        before = sum(e.segment_duration for e in t.edits[:last])
        duration = end_ticks - before
        if duration <= 0:
            raise Mp4EditError(f"{path}: track {track_id} ends before its edit starts")
        patches.append((t.elst_duration_fields[last], duration))
        total = before + duration + sum(e.segment_duration for e in t.edits[last + 1:])
        if t.tkhd_field is not None:
            patches.append((t.tkhd_field, total))
        durations[track_id] = total
    movie_total = max([durations.get(t.track_id, t.tkhd_duration) for t in movie.tracks] or [0])
    assert movie.duration_field is not None
    patches.append((movie.duration_field, movie_total))
    with open(path, "r+b") as f:
        for field, value in patches:
            if value >= 1 << (8 * field.size):
                raise Mp4EditError(f"{path}: {value} does not fit {field.size} bytes")
            f.seek(field.offset)
            f.write(value.to_bytes(field.size, "big"))
    return read_edit_lists(path)
