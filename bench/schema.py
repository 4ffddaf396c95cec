"""Wire codec cost: encode and *validated* decode per message, against the floor.

The floor is plain ``msgpack.packb`` / ``msgpack.unpackb`` of the same header content as builtin
dicts and lists, with no validation at all: what any msgpack wire costs. momentbus decodes into
typed msgspec Structs and checks every field's type and range (see ``ipc/schema.py``).

Messages: a Frame header (640x360 BGR payload, zero-copy, so only its size check counts), an Obs
with 3 faces as the insightface backend sends them (5 landmarks, 106 dense landmarks, 7 emotion
scores each), and a speech segment of 20 words.

    uv run python bench/schema.py [--repeat 7] [--number 2000]

Prints a table: microseconds per message (median of the repeats) and the ratios to the floor,
all measured in this run. Goal (issue "A typed core"): validated decode within 1.5x the floor.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from fractions import Fraction

import msgpack
import numpy as np

from momentbus.ipc.payloads import Box, Expression, Face, Faces, Point2, SpeechSegment, Word
from momentbus.ipc.schema import Frame, Gap, Message, Obs, decode, encode


def messages() -> dict[str, Message]:
    rng = np.random.default_rng(0)
    frame = Frame(source_id="WolfgangLanger_Pexels", seq=1234, pts=51_451_400,
                  time_base=Fraction(1, 24000), t_ns=2_143_808_333,
                  capture_wall_ns=1_763_700_000_000_000_000,
                  width=640, height=360, encoding="raw", gaps=[Gap(1230, 1233, "sampled")],
                  data=np.zeros((360, 640, 3), np.uint8))

    def face(i: int) -> Face:
        pts = [Point2(round(float(x), 5), round(float(y), 5)) for x, y in rng.random((106, 2))]
        return Face(track_id=i, box=Box(0.1, 0.2, 0.4, 0.6), score=0.93, landmarks=pts[:5],
                    dense_landmarks=pts, yaw=-3.5, pitch=1.25, roll=0.5,
                    expression=Expression(angry=0.01, disgust=0.0, fear=0.02, happy=0.8,
                                          sad=0.05, surprise=0.02, neutral=0.1),
                    area_ratio=0.06)

    faces = Obs(source_id="WolfgangLanger_Pexels", group="face", component="extractor:face#1",
                seq=1234, t_ns=2_143_808_333, watermark_ns=2_143_808_333, latency_ns=35_000_000,
                payload=Faces(faces=[face(i) for i in range(3)]))
    words = [Word(word=w, t_ns=1_000_000_000 + i * 300_000_000,
                  t_end_ns=1_250_000_000 + i * 300_000_000, probability=0.91)
             for i, w in enumerate(("hello and welcome to the show where we talk about the "
                                    "things that matter most to people like you every week")
                                   .split())]
    speech = Obs(source_id="call", group="speech", component="extractor:speech#1", seq=40,
                 t_ns=1_000_000_000, watermark_ns=999_999_999,
                 payload=SpeechSegment(t_end_ns=words[-1].t_end_ns,
                                       text=" ".join(w.word for w in words), words=words,
                                       language="en", final=True))
    return {"Frame header": frame, "Obs, 3 faces": faces, "Obs, speech 20 words": speech}


def median_us(fn, number: int, repeat: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    for name, msg in messages().items():
        parts = [bytes(p) if i < 2 else memoryview(p) for i, p in enumerate(encode(msg))]
        plain = msgpack.unpackb(parts[1])  # the same header content, as builtins
        plain_bytes = msgpack.packb(plain)
        assert decode(parts) == msg
        n = args.number
        enc = median_us(lambda m=msg: encode(m), n, args.repeat)
        dec = median_us(lambda p=parts: decode(p), n, args.repeat)
        enc0 = median_us(lambda d=plain: msgpack.packb(d), n, args.repeat)
        dec0 = median_us(lambda b=plain_bytes: msgpack.unpackb(b), n, args.repeat)
        rows.append((name, len(parts[1]), enc, enc0, dec, dec0))
    print(f"{'message':24} {'header B':>9} {'encode us':>10} {'floor us':>9} {'x':>6} "
          f"{'decode us':>10} {'floor us':>9} {'x':>6}")
    for name, size, enc, enc0, dec, dec0 in rows:
        print(f"{name:24} {size:9d} {enc:10.2f} {enc0:9.2f} {enc / enc0:6.2f} "
              f"{dec:10.2f} {dec0:9.2f} {dec / dec0:6.2f}")
    worst = max(dec / dec0 for *_, dec, dec0 in rows)
    print(f"\nvalidated decode, worst ratio to plain msgpack.unpackb: {worst:.2f}x "
          f"(goal <= 1.5x)")


if __name__ == "__main__":
    main()
