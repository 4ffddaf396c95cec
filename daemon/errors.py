"""Typed errors of the sources. A user mistake (bad path, not media) is one of these, never a
traceback: the CLI prints ``momentbus: error: <message>`` and exits with code 2."""

from __future__ import annotations


class SourceError(Exception):
    """Base class: a source cannot be opened or read."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The file does not exist."""


class NotMediaError(SourceError, ValueError):
    """The file exists but is not a media container FFmpeg can read (or it is truncated)."""


class NoVideoStreamError(SourceError, ValueError):
    """The container has no video stream (and video was required)."""
