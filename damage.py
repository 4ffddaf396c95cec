"""What a read of a media file could not get: decode errors, the time they cover, frames missing.

:class:`Damage` is what :class:`~momentbus.media.FileSource` reports as it reads (``src.damage``);
the daemon puts it in its ``summary`` trace record (field ``damage``), and ``momentbus run`` and
``momentbus trace summary`` turn it into one line and, when it is :attr:`~Damage.lossy`, the
``DATA_LOSS`` exit code. This module imports no media library, so readers of a trace can use it.

All times are ``t_ns``: integer nanoseconds on the **source clock** (``pts * time_base``), the
same axis as every Frame and trigger; float seconds only in :meth:`Damage.describe`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

__all__ = ["Damage", "merge_spans"]

NonNeg = Annotated[int, Meta(ge=0)]
#: ``(t0_ns, t1_ns)`` with ``t0_ns <= t1_ns``, source clock.
Span = tuple[int, int]


class Damage(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The damage one read of a file met (a snapshot; the reader keeps counting).

    Attributes:
        decode_errors: packets the decoder rejected, plus a demux that failed before the end of
            the file (count). One bad packet never ends the read: the next ones are decoded.
        corrupt_packets: packets the demuxer flagged corrupt (MPEG-TS continuity errors:
            bytes lost in transport) and the decoder decoded anyway, concealing (count).
        spans: the time ranges whose media could not be read, sorted, overlapping or touching
            ranges merged; each ``(t0_ns, t1_ns)`` runs from the last frame decoded before the
            damage to the first frame decoded after it (so the good frames at both edges are
            included), or to the announced end of the stream when nothing good came after
            (damage to the end, an unread tail). Empty for a clean read.
        frames_read: frames decoded from the main stream (video; audio frames for an audio-only
            file): for video, the ``seq`` of the next Frame.
        frames_expected: the frame count the container announces for that stream (mp4's sample
            table, ``stream.frames``), or ``None`` where it says none (Matroska, live).
        unread_tail_ns: how much of the announced duration the demuxer never delivered: the
            announced end of the main stream (``start_time + duration``) minus the end of its
            last packet (pts + duration), when that exceeds one frame; 0 otherwise (a file cut
            short whose index survived, a read that failed before the end).
        complete: the read ran to the end of the file (by itself or by a read error); ``False``
            when the reader stopped early (Ctrl-C), where a short count is no damage.
    """

    decode_errors: NonNeg = 0
    corrupt_packets: NonNeg = 0
    spans: tuple[Span, ...] = ()
    frames_read: NonNeg = 0
    frames_expected: NonNeg | None = None
    unread_tail_ns: NonNeg = 0
    complete: bool = True

    @property
    def missing_frames(self) -> int:
        """Announced frames not read (0 where the container announced no count, or the read
        stopped early)."""
        if self.frames_expected is None or not self.complete:
            return 0
        return max(0, self.frames_expected - self.frames_read)

    @property
    def lossy(self) -> bool:
        """Some of the file was not read: a decode error, a damaged span, an unread tail, or
        fewer frames than the container announced (a damaged index reads no error at all)."""
        return bool(self.decode_errors or self.corrupt_packets or self.spans
                    or self.unread_tail_ns or self.missing_frames)

    def describe(self) -> str:
        """One line for a person, e.g. ``226 of 472 frames read; damaged 9.38-19.69 s (243
        decode errors)``."""
        parts = [f"{self.frames_read} of {self.frames_expected} frames read"
                 if self.frames_expected is not None else f"{self.frames_read} frames read"]
        errors = ", ".join(
            f"{n} {what}{'s' if n != 1 else ''}"
            for n, what in ((self.decode_errors, "decode error"),
                            (self.corrupt_packets, "corrupt packet")) if n)
        if self.spans:
            ranges = ", ".join(f"{t0 / 1e9:.2f}-{t1 / 1e9:.2f} s" for t0, t1 in self.spans)
            parts.append(f"damaged {ranges}" + (f" ({errors})" if errors else ""))
        elif errors:
            parts.append(errors)
        if self.unread_tail_ns:
            parts.append(f"the last {self.unread_tail_ns / 1e9:.2f} s never arrived "
                         "(the file ends early)")
        return "; ".join(parts)

    def to_trace(self) -> dict[str, Any]:
        """The ``damage`` field of the daemon's ``summary`` record (plain JSON data, with
        ``lossy`` spelled out for jq)."""
        return {**msgspec.to_builtins(self), "spans": [list(s) for s in self.spans],
                "lossy": self.lossy}

    @classmethod
    def from_trace(cls, value: Any) -> Damage | None:
        """Read :meth:`to_trace`'s output back; ``None`` when it is absent or malformed (a
        trace from an older version, a hand-edited file)."""
        if not isinstance(value, Mapping):
            return None
        fields = {k: v for k, v in value.items() if k != "lossy"}
        try:
            return msgspec.convert(fields, cls)
        except msgspec.ValidationError:
            return None


def merge_spans(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Sort ``(t0_ns, t1_ns)`` ranges and merge those that overlap or touch."""
    out: list[Span] = []
    for t0, t1 in sorted(spans):
        if out and t0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], t1))
        else:
            out.append((t0, t1))
    return tuple(out)
