"""Trace record types and levels.

One JSON object per line: ``record`` (type), ``wall_ns`` (CLOCK_REALTIME at emission),
``component`` (e.g. ``extractor:face#1``), ``source_id`` and the type's fields. Times on the source
clock are ``t_ns``; durations in the record are milliseconds (``*_ms``).
"""

from __future__ import annotations

from enum import IntEnum


class Level(IntEnum):
    """How much a process traces. ``minimal``: errors, drops, membership, triggers, clips;
    ``normal``: plus one ``timing`` record per processed frame, ``sync_delay``, and fusion's
    ``watermark`` (each group's watermark and lag, once a second); ``verbose``:
    plus one ``dispatch`` record per item the frame bus sends a member (group, member, seq, the
    member's credit left)."""

    off = 0
    minimal = 1
    normal = 2
    verbose = 3

    @classmethod
    def parse(cls, text: str) -> "Level":
        try:
            return cls[text.lower()]
        except KeyError:
            raise ValueError(f"unknown trace level {text!r} "
                             "(off, minimal, normal, verbose)") from None


#: Minimum level at which each record type is written.
RECORD_LEVELS: dict[str, Level] = {
    "error": Level.minimal,
    "frame_drop": Level.minimal,
    "member": Level.minimal,
    "trigger": Level.minimal,
    "clip": Level.minimal,
    "late_obs": Level.minimal,
    "future_obs": Level.minimal,
    "bad_message": Level.minimal,
    "source": Level.minimal,
    "summary": Level.minimal,
    "timing": Level.normal,
    "sync_delay": Level.normal,
    "watermark": Level.normal,
    "dispatch": Level.verbose,
}

#: ``source`` events (daemon/live.py) after which the source delivers frames, and those after
#: which it does not; the others (retry, loop, reanchor, sender_clock, decode_error, resume)
#: leave the connection as it was. A file's ``source`` record has no event: it is open.
SOURCE_UP_EVENTS = frozenset({None, "open", "connect", "reconnect", "first_frame"})
SOURCE_DOWN_EVENTS = frozenset({"disconnect", "stall", "connect_failed"})
