"""Which container a clip goes in: the one that can hold its codecs.

``clip_format`` is ``"auto"`` (default), ``"mp4"`` or ``"mkv"``:

* ``auto``: mp4 when FFmpeg's mp4 muxer accepts every stream being copied, else Matroska. The
  question is put to the muxer itself (:func:`mp4_refusal`): the streams are added from their
  templates to an mp4 muxer writing to memory and its header is written, the two places where
  FFmpeg refuses a codec (``avformat_query_codec`` against the mp4 codec-tag table, then
  ``avformat_write_header``). No list of codecs is kept here that could drift from FFmpeg's.
  PCM audio goes to Matroska even though FFmpeg >= 7 writes it to mp4 as ``ipcm`` (ISO/IEC
  23003-5, 2020): that mapping is recent and few players read it, while Matroska's PCM
  (``A_PCM/INT/LIT``) plays everywhere Matroska does.
* ``mp4``: mp4 or :class:`~momentbus.clip.errors.UnsupportedCodecError` naming the codec.
* ``mkv``: Matroska, which holds any codec FFmpeg decodes.

An audio-only clip (a window after the last video frame) is Matroska ``.mka`` under ``auto`` and
``mkv`` (as it always was), ``.m4a`` under ``mp4``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import av
from av.stream import Stream

from .errors import ClipOptionError, UnsupportedCodecError

#: the values ``clip_format`` takes
CLIP_FORMATS: Final = ("auto", "mp4", "mkv")
#: every suffix a clip file may have (for a cleaner that removes a previous run's clips)
CLIP_SUFFIXES: Final = (".mp4", ".mkv", ".mka", ".m4a")


@dataclass(frozen=True)
class Container:
    """A clip's container: FFmpeg's muxer name (``mp4``/``matroska``) and the file suffix."""

    muxer: str
    suffix: str


MP4 = Container("mp4", ".mp4")
M4A = Container("mp4", ".m4a")
MKV = Container("matroska", ".mkv")
MKA = Container("matroska", ".mka")


def check_clip_format(clip_format: str) -> None:
    """Raises :class:`ClipOptionError` unless ``clip_format`` is one of :data:`CLIP_FORMATS`."""
    if clip_format not in CLIP_FORMATS:
        raise ClipOptionError(f"clip format {clip_format!r}: use one of {', '.join(CLIP_FORMATS)}")


def mp4_refusal(streams: Sequence[Stream]) -> tuple[str, str] | None:
    """``None`` when the mp4 muxer takes every stream of ``streams`` (input streams, copied as
    they are), else ``(codec, FFmpeg's reason)`` for the first it refuses.

    Costs one in-memory mp4 header (well under a millisecond; nothing touches the disk).
    """
    out = av.open(io.BytesIO(), "w", format="mp4")
    try:
        for s in streams:
            codec = s.codec_context.name if s.codec_context is not None else s.type
            try:
                out.add_stream_from_template(s)
            except (ValueError, av.error.FFmpegError) as e:
                return codec, str(e)
        try:
            out.start_encoding()
        except (ValueError, av.error.FFmpegError) as e:
            names = "+".join(s.codec_context.name for s in streams if s.codec_context is not None)
            return names, str(e)
        return None
    finally:
        with contextlib.suppress(ValueError, av.error.FFmpegError):
            out.close()


def _pcm(streams: Sequence[Stream]) -> str | None:
    for s in streams:
        if s.codec_context is not None and s.codec_context.name.startswith("pcm_"):
            return s.codec_context.name
    return None


def choose_container(streams: Sequence[Stream], clip_format: str = "auto",
                     audio_only: bool = False) -> Container:
    """The container for a copy (remux) of ``streams`` (the input streams to be copied).

    Raises:
        ClipOptionError: ``clip_format`` is not one of :data:`CLIP_FORMATS`.
        UnsupportedCodecError: ``clip_format="mp4"`` and the mp4 muxer refuses a codec.
    """
    check_clip_format(clip_format)
    if clip_format == "mkv" or (clip_format == "auto" and audio_only):
        return MKA if audio_only else MKV
    refused = mp4_refusal(streams)
    if clip_format == "mp4":
        if refused is not None:
            codec, reason = refused
            raise UnsupportedCodecError(
                f"mp4 cannot hold {codec} ({reason}); use clip format 'auto' or 'mkv'", codec)
        return M4A if audio_only else MP4
    if refused is not None or _pcm(streams):
        return MKV
    return MP4
