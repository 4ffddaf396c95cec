"""Typed errors of the wire. Each also inherits the builtin it resembles (PyAV/aiortc style)."""

from __future__ import annotations


class IpcError(Exception):
    """Base class of every error raised by :mod:`momentbus.ipc`."""


class DecodeError(IpcError, ValueError):
    """A message could not be decoded: bad MessagePack, wrong type, missing field, bad value."""


class SchemaVersionError(DecodeError):
    """A message carries a schema version this build does not speak."""


class OversizeError(DecodeError):
    """A message part is larger than the limit for its kind."""


class UnknownKindError(DecodeError):
    """The first multipart frame names no known message kind."""


class PeerTimeoutError(IpcError, TimeoutError):
    """A peer did not answer a handshake in time."""
