"""Fusion's write-ahead log: what it accepted, in order, so a restarted fusion ends up identical.

Each entry is one message fusion handled (its wire parts, the reliable envelope's sender,
incarnation and rseq, and the wall-clock ns it was handled at) or one liveness tick that changed
the aligner's state. Replaying the entries through a fresh :class:`~momentbus.fusion.aligner.Aligner`
with the same rules rebuilds the exact rule state and the exact triggers, because the aligner is
deterministic in its inputs (messages and injected clock) and nothing else.

File format: a sequence of records, each a 4-byte little-endian length and a MessagePack
``[now_ns, sender, incarnation, rseq, kind, header]`` (``kind`` ``b"tick"`` for a tick). A record
torn by a crash mid-write is cut off when the log is reopened.

Durability: every record is written to the kernel before fusion acknowledges the message (a
crashed fusion process loses nothing that was acknowledged); the file is ``fsync``-ed at most
every :data:`FSYNC_INTERVAL_S` and at close (a power cut loses at most that much, which the
senders still hold unacknowledged... unless they were acknowledged in that window: an accepted
trade-off for not fsyncing per message). Size: about the observations' wire size (~2.5 KB a
frame for a face with 106 landmarks: 90 MB an hour at 10 fps); a live run of days needs
rotation, which is not done yet.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

#: fsync at most this often: a power cut loses at most this long of acknowledged messages.
FSYNC_INTERVAL_S = 1.0
TICK = b"tick"
_LEN = struct.Struct("<I")
#: Largest record accepted when reading back (a header is at most 1 MiB: ipc/schema.py).
_MAX_RECORD = 2 << 20


class WalError(OSError):
    """The log cannot be opened, read or written."""


@dataclass(frozen=True)
class Entry:
    """One logged input: a message's parts with its envelope, or a tick (``kind == TICK``)."""

    now_ns: int
    sender: str | None
    incarnation: int
    rseq: int
    kind: bytes
    header: bytes


class WriteAheadLog:
    """Append-only log at ``path`` (created; truncated unless ``resume``)."""

    def __init__(self, path: str | os.PathLike[str], *, resume: bool) -> None:
        self.path = Path(path)
        self.entries_read = 0
        self.torn_bytes = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.path.exists():
                self._cut_torn_tail()
                self._file = open(self.path, "ab")
            else:
                self._file = open(self.path, "wb")
        except OSError as e:
            raise WalError(e.errno, f"fusion log {self.path}: {e.strerror}") from None
        self._encoder = msgspec.msgpack.Encoder()
        self._last_sync = time.monotonic()

    def _cut_torn_tail(self) -> None:
        good = 0
        for _entry, end in _records(self.path):
            good = end
            self.entries_read += 1
        size = self.path.stat().st_size
        if size > good:
            self.torn_bytes = size - good
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def replay(self) -> Iterator[Entry]:
        """The entries already in the log (call before appending)."""
        for entry, _end in _records(self.path):
            yield entry

    def append(self, now_ns: int, kind: bytes, header: bytes, sender: str | None = None,
               incarnation: int = 0, rseq: int = 0) -> None:
        """Log one input, written through to the kernel before returning.

        Raises:
            WalError: the write failed (disk full, I/O error).
        """
        body = self._encoder.encode([now_ns, sender, incarnation, rseq, kind, header])
        try:
            self._file.write(_LEN.pack(len(body)) + body)
            self._file.flush()
            if time.monotonic() - self._last_sync >= FSYNC_INTERVAL_S:
                os.fsync(self._file.fileno())
                self._last_sync = time.monotonic()
        except OSError as e:
            raise WalError(e.errno, f"fusion log {self.path}: {e.strerror}") from None

    def append_tick(self, now_ns: int) -> None:
        self.append(now_ns, TICK, b"")

    def close(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:
            pass
        self._file.close()

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _records(path: Path) -> Iterator[tuple[Entry, int]]:
    """(entry, byte offset after it) for every whole record of the file."""
    decoder = msgspec.msgpack.Decoder()
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 4 <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if n > _MAX_RECORD or pos + 4 + n > len(data):
            return
        try:
            fields: Any = decoder.decode(data[pos + 4:pos + 4 + n])
            now_ns, sender, incarnation, rseq, kind, header = fields
            entry = Entry(int(now_ns), sender, int(incarnation), int(rseq), bytes(kind),
                          bytes(header))
        except (msgspec.DecodeError, ValueError, TypeError):
            return  # a corrupt record ends what can be trusted
        pos += 4 + n
        yield entry, pos
