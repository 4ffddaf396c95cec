"""Seeded malformed wire messages for fuzzing a role's socket (tests/test_chaos.py).

Every message made here is invalid: random bytes, unknown kinds, random or mistyped headers,
oversize headers, wrong payload sizes, out-of-range values (fps, credits, timestamps, windows),
broken reliable envelopes. None is a valid message a role would act on.
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

import msgpack
import msgspec

from momentbus.ipc.payloads import Faces
from momentbus.ipc.reliable import ENVELOPE, Envelope
from momentbus.ipc.schema import (MAX_HEADER_BYTES, Credit, Eof, Frame, Hello, Obs, Trig,
                                  Watermark, encode)

TEMPLATES = [
    Hello(component="extractor:fuzz#1", group="fuzz", pid=1),
    Credit(n=1),
    Watermark(source_id="s", group="face", component="extractor:face#1", t_ns=5),
    Obs(source_id="s", group="face", component="extractor:face#1", seq=1, t_ns=5,
        watermark_ns=5, payload=Faces()),
    Trig(rule="r", rule_kind="k", source_id="s", t_event_ns=5, t_start_ns=0, t_end_ns=9,
         score=1.0),
    Eof(source_id="s", component="daemon", last_seq=1, t_end_ns=5),
]
#: (template index, field, a value outside its declared type or range)
EXTREMES = [
    (0, "fps", 1e10), (0, "fps", float("inf")), (0, "fps", 1e-300), (0, "fps", -1.0),
    (0, "policy", "sometimes"), (0, "instance", 0), (0, "streams", []),
    (1, "n", -5), (1, "n", 2_000_000_000), (1, "n", 2**64 - 1),
    (2, "t_ns", 2**63), (2, "t_ns", -(2**63)), (2, "group", "../etc"),
    (3, "t_ns", 2**64 - 1), (3, "seq", -1),
    (3, "payload", {"kind": "face", "faces": [{"x": 1}]}),
    (3, "payload", {"kind": "gaze"}),
    (4, "t_start_ns", -(2**63)), (4, "t_end_ns", 2**63), (4, "score", float("nan")),
    (4, "evidence", [{"kind": "k", "seq": 1, "t_ns": 1, "values": {"b": b"bytes"}}]),
    (5, "last_seq", -2),
]


def _header(i: int) -> dict[str, Any]:
    out: dict[str, Any] = msgpack.unpackb(encode(TEMPLATES[i])[1])
    return out


def _junk(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(rng.randint(0, n))


def malformed(rng: random.Random, reliable: bool) -> list[bytes]:
    """One invalid multipart message (with a broken or valid-but-pointless envelope when
    ``reliable``, for a reliable receiver)."""
    choice = rng.random()
    if choice < 0.15:
        parts = [_junk(rng, 64) for _ in range(rng.randint(1, 4))]
    elif choice < 0.25:
        parts = [rng.choice([b"nope", b"", b"obs\x00", b"frame!"]), msgpack.packb({"v": 2})]
    elif choice < 0.45:
        i = rng.randrange(len(TEMPLATES))
        header = {"v": 2, **{rng.choice(["seq", "t_ns", "x", "component", "n"]):
                             rng.choice([None, "str", 1.5, [1, 2], {"a": 1}, b"b"])
                             for _ in range(rng.randint(0, 4))}}
        parts = [TEMPLATES[i].KIND, msgpack.packb(header, use_bin_type=True)]
    elif choice < 0.75:
        i, field, value = rng.choice(EXTREMES)
        header = _header(i)
        header[field] = value
        parts = [TEMPLATES[i].KIND, msgpack.packb(header, use_bin_type=True)]
    elif choice < 0.80:
        version = rng.choice([1, 3, True, "2", None])
        i = rng.randrange(len(TEMPLATES))
        header = {"v": version, **{k: v for k, v in _header(i).items() if k != "v"}}
        parts = [TEMPLATES[i].KIND, msgpack.packb(header, use_bin_type=True)]
    elif choice < 0.90:
        frame = Frame(source_id="s", seq=1, pts=1, time_base=Fraction(1, 30), t_ns=1,
                      capture_wall_ns=1, width=8, height=6)
        parts = [frame.KIND, bytes(encode(frame)[1]), _junk(rng, 500)]
    elif choice < 0.902:
        parts = [b"obs", b"\x80" + bytes(MAX_HEADER_BYTES + rng.randint(1, 4096))]
    else:
        parts = [b"trace", _junk(rng, 32)]
    if reliable:
        env = rng.choice([
            _junk(rng, 16),
            msgspec.msgpack.encode([1, 2, 3]),
            msgspec.msgpack.encode(Envelope("fuzz", rng.randint(0, 9), rng.randint(1, 99), 0)),
        ])
        parts = [ENVELOPE, env, *parts] if rng.random() < 0.5 else parts
    return parts
