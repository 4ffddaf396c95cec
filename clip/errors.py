"""The clip package's typed errors: one base, each also the builtin it resembles.

Every failure of :func:`~momentbus.clip.cutter.write_clip` reaches its caller as a
:class:`ClipError` (whatever PyAV raised is its ``__cause__``), so the clip role catches one type,
traces an ``error`` record and goes on with the next TRIG.
"""

from __future__ import annotations

from pathlib import Path


class ClipError(RuntimeError):
    """A clip could not be cut. ``sidecar`` is the failure sidecar written for it (``None`` when
    none was written, e.g. when :func:`~momentbus.clip.cutter.cut_copy` is called directly)."""

    sidecar: Path | None = None


class ClipOptionError(ClipError, ValueError):
    """An option is not one the cutter knows (``mode``, ``clip_format``)."""


class UnsupportedCodecError(ClipError, ValueError):
    """The requested container cannot hold a stream's codec (e.g. MS-MPEG4 video in mp4).
    ``codec`` is FFmpeg's name of the codec refused."""

    def __init__(self, message: str, codec: str) -> None:
        super().__init__(message)
        self.codec = codec


class EmptyWindowError(ClipError, ValueError):
    """Nothing of the source lies in the window (after clamping it to the source)."""


class ClipSourceError(ClipError):
    """The source cannot be opened or read."""
