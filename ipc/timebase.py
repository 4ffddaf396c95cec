"""The one helper that converts timestamps between bases.

A timestamp is ``(pts: int, time_base: Fraction)`` exactly as the container or device gave it
(PyAV semantics); ``t_ns`` (int nanoseconds on the source clock) is the derived event time used as
the single alignment key downstream. Float seconds exist only for display.
"""

from __future__ import annotations

from fractions import Fraction

NS_PER_S = 1_000_000_000


def pts_to_ns(pts: int, time_base: Fraction) -> int:
    """Exact ``pts * time_base`` in integer nanoseconds (rounded half away from zero).

    Rational arithmetic throughout: no float ever touches a timestamp, so a 24000/1001 fps file
    keeps its real frame times and repeated conversions never drift.
    """
    value = Fraction(pts) * time_base * NS_PER_S
    if value >= 0:
        return int(value + Fraction(1, 2))
    return -int(-value + Fraction(1, 2))


def ns_to_pts(t_ns: int, time_base: Fraction) -> int:
    """Nearest ``pts`` in ``time_base`` for event time ``t_ns`` (inverse of :func:`pts_to_ns`)."""
    value = Fraction(t_ns, NS_PER_S) / time_base
    return int(value + Fraction(1, 2)) if value >= 0 else -int(-value + Fraction(1, 2))


def ns_to_s(t_ns: int) -> float:
    """Float seconds, for display only."""
    return t_ns / NS_PER_S


def parse_duration_ns(text: str | int | float) -> int:
    """Parse a human duration (``"0.5s"``, ``"250ms"``, ``"2"`` = seconds) to nanoseconds.

    Raises:
        ValueError: text is not a non-negative duration.
    """
    if isinstance(text, (int, float)):
        value = Fraction(str(text))
    else:
        s = text.strip().lower()
        units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": NS_PER_S}
        for suffix in ("ns", "us", "ms", "s"):
            if s.endswith(suffix):
                number = s[: -len(suffix)].strip()
                try:
                    value = Fraction(number) * units[suffix] / NS_PER_S
                except (ValueError, ZeroDivisionError):
                    raise ValueError(f"not a duration: {text!r}") from None
                break
        else:
            try:
                value = Fraction(s)
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"not a duration: {text!r} (use e.g. '0.5s' or '250ms')") from None
    if value < 0:
        raise ValueError(f"duration must be >= 0: {text!r}")
    return int(value * NS_PER_S)
