"""Wire schema: every message round-trips, and malformed bytes only ever raise DecodeError."""

from __future__ import annotations

import types
import typing
from fractions import Fraction
from typing import Any

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from momentbus.ipc import schema

from momentbus.ipc.errors import (
    DecodeError,
    IpcError,
    OversizeError,
    SchemaVersionError,
    UnknownKindError,
)
from momentbus.ipc.payloads import (
    PAYLOAD_TYPES,
    Box,
    Expression,
    Face,
    Faces,
    Hand,
    Hands,
    Keypoint,
    Person,
    Persons,
    Point2,
    Point3,
    QualityReading,
    SpeechSegment,
    Word,
)
from momentbus.ipc.schema import (
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    AudioChunk,
    Credit,
    Eof,
    Evidence,
    Frame,
    Gap,
    Heartbeat,
    Hello,
    Message,
    Obs,
    TraceBatch,
    TraceRecord,
    Trig,
    Watermark,
    Welcome,
    decode,
    encode,
)
from momentbus.ipc.vocab import EMOTIONS, GESTURES, NAME_PATTERN

INT62 = st.integers(min_value=-(2**62), max_value=2**62)
KNOWN_KINDS = sorted(MESSAGE_TYPES)


# ---------------------------------------------------------------------------- helpers


def wire(msg: Message) -> list[bytes]:
    """What a receiver gets: every part as plain bytes."""
    return [bytes(p) for p in encode(msg)]


def roundtrip(msg: Message) -> Message:
    return decode(wire(msg))


def header_of(msg: Message) -> dict[str, Any]:
    return msgpack.unpackb(encode(msg)[1], raw=False)


def with_header(msg: Message, header: dict[str, Any]) -> list[bytes]:
    """``msg``'s parts with its header replaced by ``header``."""
    parts = wire(msg)
    return [parts[0], msgpack.packb(header, use_bin_type=True), *parts[2:]]


def bgr_frame(width: int = 8, height: int = 6, seq: int = 7) -> tuple[Frame, np.ndarray]:
    rng = np.random.default_rng(seq)
    img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    frame = Frame(source_id="cam0", seq=seq, pts=seq * 1001, time_base=Fraction(1, 30000),
                  t_ns=seq * 33_366_667, capture_wall_ns=1_700_000_000_000_000_000,
                  width=width, height=height, gaps=[Gap(3, 5, "sampled"), Gap(6, 6, "latest")],
                  data=img)
    return frame, img


def audio_chunk(n: int = 480, channels: int = 2) -> tuple[AudioChunk, np.ndarray]:
    rng = np.random.default_rng(n)
    pcm = rng.uniform(-1, 1, size=(n, channels)).astype(np.float32)
    chunk = AudioChunk(source_id="cam0", seq=3, pts=1440, time_base=Fraction(1, 48000),
                       t_ns=30_000_000, capture_wall_ns=1_700_000_000_000_000_000,
                       sample_rate=48000, channels=channels, n_samples=n, data=pcm)
    return chunk, pcm


def a_face() -> Face:
    return Face(track_id=4, box=Box(0.1, 0.2, 0.4, 0.6), score=0.93,
                landmarks=[Point2(0.2, 0.3), Point2(0.3, 0.3), Point2(0.25, 0.4),
                           Point2(0.2, 0.5), Point2(0.3, 0.5)],
                dense_landmarks=[Point2(0.21, 0.31)] * 106,
                yaw=-3.5, pitch=1.25, roll=0.0,
                expression=Expression(happy=0.8, sad=0.05, neutral=0.15), area_ratio=0.06)


def face_obs() -> Obs:
    return Obs(source_id="cam0", group="face", component="extractor:face#1", seq=12,
               t_ns=400_400_000, watermark_ns=400_400_000, latency_ns=12_345_678,
               payload=Faces(faces=[a_face()]))


def quality_obs() -> Obs:
    return Obs(source_id="cam0", group="quality", component="extractor:quality#1",
               seq=12, t_ns=400_400_000, watermark_ns=400_000_000,
               payload=QualityReading(blur=152.5, brightness=0.45, contrast=0.2,
                                      clipped_dark=0.01, clipped_bright=0.0, gate=False))


def header_messages() -> list[Message]:
    """One valid instance of every message class (payload-carrying ones included)."""
    return [
        Hello(component="extractor:face#1", group="face", pid=4242, policy="latest", fps=7.5,
              encoding="jpeg", streams=["video", "audio"], instance=2,
              incarnation=1_763_700_000_123_456_789, last_seq=1041),
        Welcome(source_id="cam0", width=1920, height=1080, time_base=Fraction(1001, 30000),
                duration_ns=None, live=True),
        Welcome(source_id="file0", width=640, height=360, time_base=Fraction(1, 90000),
                duration_ns=12_000_000_000, live=False),
        Credit(n=16),
        schema.Rejoin(reason="unknown member"),
        schema.Ack(rseq=41, incarnation=1_763_700_000_000_000_000),
        Heartbeat(component="fusion", wall_ns=1_700_000_000_123_456_789),
        bgr_frame()[0],
        audio_chunk()[0],
        schema.StreamInfo(source_id="cam0", seq=0, t_ns=123, generation=2, streams=[
            schema.StreamSpec(index=0, kind="video", codec="h264", time_base=Fraction(1, 90000),
                              extradata=b"\x00\x00\x00\x01gd", width=640, height=360,
                              pix_fmt="yuv420p", frame_rate=Fraction(24000, 1001)),
            schema.StreamSpec(index=1, kind="audio", codec="aac", time_base=Fraction(1, 48000),
                              sample_rate=48000, layout="stereo", sample_format="fltp")]),
        schema.Packet(source_id="cam0", seq=5, generation=2, stream_index=0, kind="video",
                      pts=None, dts=None, time_base=Fraction(1, 90000), keyframe=True,
                      t_ns=1_000_000, data=b"\x00\x00\x00\x01\x09\xf0"),
        Watermark(source_id="cam0", group="face", component="extractor:face#1",
                  t_ns=-5_000_000),
        face_obs(),
        quality_obs(),
        Obs(source_id="cam0", group="pose", component="extractor:pose#1", seq=3,
            t_ns=100_000_000, watermark_ns=100_000_000,
            payload=Persons(persons=[Person(box=Box(0.1, 0.1, 0.6, 0.9), score=0.8,
                                            keypoints=[Keypoint(0.3, 0.2, 0.99)] * 17,
                                            left_hand_raised=True, right_hand_raised=False)])),
        Obs(source_id="cam0", group="gesture", component="extractor:gesture#1",
            seq=3, t_ns=100_000_000, watermark_ns=100_000_000,
            payload=Hands(hands=[Hand(handedness="right", landmarks=[Point3(0.5, 0.5, -0.01)] * 21,
                                      gesture="v_sign", score=0.9)])),
        Obs(source_id="cam0", group="speech", component="extractor:speech#1",
            seq=40, t_ns=1_000_000_000, watermark_ns=999_999_999,
            payload=SpeechSegment(t_end_ns=2_500_000_000, text="Hello world.",
                                  words=[Word(word="Hello", t_ns=1_000_000_000,
                                              t_end_ns=1_400_000_000, probability=0.97)],
                                  language="en", final=True)),
        Trig(rule="smile", rule_kind="expression_spike", source_id="cam0",
             t_event_ns=6_100_000_000, t_start_ns=4_100_000_000, t_end_ns=9_600_000_000,
             score=0.4521, evidence=[Evidence(kind="face", seq=183, t_ns=6_100_000_000,
                                              values={"score": 0.9})],
             missing=["quality"]),
        Eof(source_id="cam0", component="daemon", last_seq=299, t_end_ns=9_966_666_667,
            reason="end_of_stream", gaps=[Gap(297, 299, "sampled")]),
        TraceRecord(record="timing", fields={"component": "extractor:face#1", "ms": 4.5,
                                             "nested": {"a": [1, 2, 3]}, "none": None}),
        TraceBatch(records=[TraceRecord(record="timing", fields={"seq": i}) for i in range(3)]),
    ]


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg", header_messages(), ids=lambda m: type(m).__name__)
def test_every_message_roundtrips_equal(msg: Message) -> None:
    decoded = roundtrip(msg)
    assert type(decoded) is type(msg)
    assert decoded == msg
    # ``data`` is not compared: the payload bytes must survive too.
    assert [bytes(p) for p in decoded.payload_parts()] == [bytes(p) for p in msg.payload_parts()]


def test_every_message_class_is_covered_by_the_roundtrip() -> None:
    covered = {type(m) for m in header_messages()}
    assert set(MESSAGE_TYPES.values()) <= covered
    payloads = {type(m.payload) for m in header_messages() if isinstance(m, Obs)}
    assert set(PAYLOAD_TYPES.values()) <= payloads


def test_frame_bgr_payload_roundtrips_to_the_same_image() -> None:
    frame, img = bgr_frame(width=13, height=5)
    decoded = roundtrip(frame)
    assert isinstance(decoded, Frame)
    assert decoded == frame
    assert bytes(decoded.data) == img.tobytes()
    out = decoded.image()
    assert out.shape == (5, 13, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)


def test_frame_non_contiguous_array_payload_is_sent_in_image_order() -> None:
    big = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
    view = big[:, ::2]  # a non-contiguous (6, 5, 3) view
    frame = replace(bgr_frame()[0], width=5, height=6, data=view)
    decoded = roundtrip(frame)
    np.testing.assert_array_equal(decoded.image(), view)


def test_frame_jpeg_payload_roundtrips_and_decodes() -> None:
    cv2 = pytest.importorskip("cv2")
    img = np.zeros((16, 24, 3), np.uint8)
    img[:, :12] = (255, 0, 0)
    ok, jpg = cv2.imencode(".jpg", img)
    assert ok
    frame = replace(bgr_frame()[0], width=24, height=16, encoding="jpeg", data=jpg.tobytes())
    decoded = roundtrip(frame)
    assert decoded == frame
    assert bytes(decoded.data) == jpg.tobytes()
    out = decoded.image()
    assert out.shape == (16, 24, 3)
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 10


def test_audio_float32_payload_roundtrips_to_the_same_samples() -> None:
    chunk, pcm = audio_chunk(n=333, channels=2)
    decoded = roundtrip(chunk)
    assert isinstance(decoded, AudioChunk)
    assert decoded == chunk
    assert bytes(decoded.data) == pcm.astype("<f4").tobytes()
    out = decoded.samples()
    assert out.shape == (333, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out, pcm)


def test_decode_accepts_unconverted_encode_output() -> None:
    """encode() returns memoryviews for payloads; decode() takes them as they are."""
    frame, img = bgr_frame()
    decoded = decode(encode(frame))
    np.testing.assert_array_equal(decoded.image(), img)


def test_decode_accepts_zmq_frames() -> None:
    zmq = pytest.importorskip("zmq")
    frame, img = bgr_frame()
    decoded = decode([zmq.Frame(bytes(p)) for p in encode(frame)])
    assert decoded == frame
    np.testing.assert_array_equal(decoded.image(), img)


def test_obs_header_names_its_obs_kind() -> None:
    assert header_of(face_obs())["payload"]["kind"] == "face"
    assert header_of(quality_obs())["payload"]["kind"] == "quality"
    assert all(header_of(m)["v"] == SCHEMA_VERSION for m in header_messages())
    assert all(next(iter(header_of(m))) == "v" for m in header_messages()), "v comes first"


# ---------------------------------------------------------------------------- arbitrary bytes


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KNOWN_KINDS), header=st.binary(max_size=256),
       payload=st.lists(st.binary(max_size=64), max_size=3))
def test_arbitrary_header_bytes_raise_only_decode_error(kind: bytes, header: bytes,
                                                        payload: list[bytes]) -> None:
    try:
        msg = decode([kind, header, *payload])
    except DecodeError:
        return
    assert isinstance(msg, Message)


@settings(max_examples=300, deadline=None)
@given(kind=st.binary(max_size=16), parts=st.lists(st.binary(max_size=32), max_size=4))
def test_arbitrary_parts_raise_only_decode_error(kind: bytes, parts: list[bytes]) -> None:
    try:
        decode([kind, *parts])
    except DecodeError:
        pass


# A header-like map with random values: structured fuzzing beyond invalid MessagePack.
msgpack_scalars = st.one_of(st.none(), st.booleans(), INT62, st.floats(allow_nan=False),
                            st.text(max_size=8), st.binary(max_size=8))
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_header_maps_raise_only_decode_error(data: st.DataObject) -> None:
    template = data.draw(st.sampled_from(header_messages()), label="template")
    header = header_of(template)
    names = sorted(header)
    for name in data.draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        if data.draw(st.booleans(), label=f"drop {name}"):
            del header[name]
        else:
            header[name] = data.draw(msgpack_values, label=name)
    parts = with_header(template, header)
    try:
        msg = decode(parts)
    except DecodeError:
        return
    assert isinstance(msg, type(template))


@settings(max_examples=200, deadline=None)
@given(kind=st.binary(max_size=24))
def test_arbitrary_kind_bytes_are_unknown_or_decode(kind: bytes) -> None:
    wm = Watermark(source_id="s", group="g", component="c", t_ns=5)
    parts = wire(wm)
    try:
        msg = decode([kind, *parts[1:]])
    except UnknownKindError:
        # an unknown tag, or "obs" whose header names no known payload kind
        assert kind not in MESSAGE_TYPES or kind == Obs.KIND
        return
    except DecodeError:
        assert kind in MESSAGE_TYPES
        return
    assert kind == Watermark.KIND and msg == wm


@settings(max_examples=100, deadline=None)
@given(kind=st.binary(max_size=24).filter(lambda k: k not in MESSAGE_TYPES))
def test_unknown_kind_is_rejected(kind: bytes) -> None:
    with pytest.raises(UnknownKindError):
        decode([kind, wire(Credit(n=1))[1]])


def test_unknown_obs_kind_is_rejected() -> None:
    header = header_of(face_obs())
    for bad in ("gaze", "", 3, None):
        header["payload"]["kind"] = bad
        with pytest.raises(UnknownKindError):
            decode(with_header(face_obs(), header))
    del header["payload"]["kind"]
    with pytest.raises(UnknownKindError):
        decode(with_header(face_obs(), header))


def test_typed_errors_resemble_builtins() -> None:
    for err in (DecodeError, SchemaVersionError, OversizeError, UnknownKindError):
        assert issubclass(err, IpcError) and issubclass(err, ValueError)
        assert issubclass(err, DecodeError)


# ---------------------------------------------------------------------------- version


@settings(max_examples=200, deadline=None)
@given(msg=st.sampled_from(header_messages()),
       version=st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1),
                         st.none(), st.text(max_size=4)).filter(lambda v: v != SCHEMA_VERSION))
def test_wrong_version_is_rejected(msg: Message, version: Any) -> None:
    header = header_of(msg)
    header["v"] = version
    with pytest.raises(SchemaVersionError):
        decode(with_header(msg, header))


def test_missing_version_is_rejected() -> None:
    msg = Credit(n=3)
    header = header_of(msg)
    del header["v"]
    with pytest.raises(SchemaVersionError):
        decode(with_header(msg, header))


@pytest.mark.parametrize("version", [True, 1.0], ids=["true", "float-1.0"])
def test_version_must_be_the_integer_schema_version(version: Any) -> None:
    """The version is an int like every other int field (which reject bools and floats)."""
    msg = Credit(n=3)
    header = header_of(msg)
    header["v"] = version
    try:
        decode(with_header(msg, header))
    except SchemaVersionError:
        return
    pytest.fail(f"BUG ipc/schema.py decode(): header v={version!r} is accepted as schema "
                f"version {SCHEMA_VERSION} because the check is `version != SCHEMA_VERSION` "
                f"(True == 1 == 1.0 in Python); other int fields are checked with "
                f"`type(value) is int`")


# ---------------------------------------------------------------------------- fields


def _fields(cls: type[Message]) -> list[tuple[str, Any, bool]]:
    """(name, declared type, required) of a message's header fields (the payload ``data`` and
    the version tag are not header fields)."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.required) for f in msgspec.structs.fields(cls)
            if f.name != "data"]


def _required_fields() -> list[tuple[Message, str]]:
    out = []
    for msg in header_messages():
        for name, _tp, required in _fields(type(msg)):
            if required:
                out.append((msg, name))
    return out


@pytest.mark.parametrize("msg,name", _required_fields(),
                         ids=lambda x: x if isinstance(x, str) else type(x).__name__)
def test_missing_required_field_is_rejected_naming_it(msg: Message, name: str) -> None:
    header = header_of(msg)
    del header[name]
    with pytest.raises(DecodeError, match=f"'{name}'") as exc:
        decode(with_header(msg, header))
    assert type(exc.value) is DecodeError


def test_missing_optional_field_takes_its_default() -> None:
    msg = Hello(component="c", group="g", pid=1)
    header = header_of(msg)
    for name in ("policy", "fps", "encoding", "streams"):
        del header[name]
    assert decode(with_header(msg, header)) == msg


def _wrong_values(tp: Any) -> list[Any]:
    """Values that are not of the declared type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if all(isinstance(a, type) and issubclass(a, msgspec.Struct) for a in inner):
            return ["abc", 5, [1, 2]] + ([] if type(None) in args else [None])
        assert len(inner) == 1
        return [v for v in _wrong_values(inner[0]) if v is not None]
    if origin is typing.Literal:
        return [5, None, True, "".join(map(str, args)) + "x"]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return ["abc", 5, None, True]
    if tp is int:
        return ["5", 5.0, True, None, [5], {"n": 5}]
    if tp is float:
        return ["0.5", True, None, [0.5]]
    if tp is str:
        return [5, b"text", None, ["a"], True]
    if tp is bool:
        return [1, 0, "true", None]
    if tp is Fraction:
        return ["1/30", 30, [1], [1, 0], [1, -30], [1.5, 30], [1, 30, 1], None]
    if origin is list:
        return ["abc", 5, {"a": 1}, None]
    if origin is dict:
        return ["abc", 5, [1, 2], None]
    raise AssertionError(f"no wrong values for {tp!r}")


def _wrong_typed_cases() -> list[tuple[Message, str, Any]]:
    out = []
    for msg in header_messages():
        for name, tp, _required in _fields(type(msg)):
            if tp is Any:
                continue
            for value in _wrong_values(tp):
                out.append((msg, name, value))
    return out


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(_wrong_typed_cases()))
def test_wrong_field_type_is_rejected_naming_the_field(case: tuple[Message, str, Any]) -> None:
    msg, name, value = case
    header = header_of(msg)
    header[name] = value
    with pytest.raises(DecodeError, match=f"'{name}") as exc:
        decode(with_header(msg, header))
    assert type(exc.value) is DecodeError


def test_seq_as_string_is_rejected() -> None:
    frame, _ = bgr_frame()
    header = header_of(frame)
    header["seq"] = "7"
    with pytest.raises(DecodeError, match="'seq'"):
        decode(with_header(frame, header))


def test_nested_list_items_are_type_checked() -> None:
    hello = Hello(component="c", group="g", pid=1, streams=["video"])
    header = header_of(hello)
    header["streams"] = ["video", 3]
    with pytest.raises(DecodeError, match="streams"):
        decode(with_header(hello, header))
    trig = next(m for m in header_messages() if isinstance(m, Trig))
    assert isinstance(trig, Trig)
    header = header_of(trig)
    header["evidence"] = ["not a map"]
    with pytest.raises(DecodeError, match="evidence"):
        decode(with_header(trig, header))


def test_int_is_accepted_where_float_is_declared() -> None:
    q = quality_obs()
    header = header_of(q)
    header["payload"]["blur"] = 150
    decoded = decode(with_header(q, header))
    assert decoded.payload.blur == 150.0 and type(decoded.payload.blur) is float


@pytest.mark.parametrize("header", [[1, 2], "v", 1, None], ids=repr)
def test_header_that_is_not_a_map_is_rejected(header: Any) -> None:
    with pytest.raises(DecodeError):
        decode([Credit.KIND, msgpack.packb(header)])


def _with_fields(msg: Message, **changes: Any) -> list[bytes]:
    """``msg`` on the wire with header fields changed (values the constructor would refuse)."""
    header = header_of(msg)
    header.update(changes)
    return with_header(msg, header)


TRIG = Trig(rule="r", rule_kind="k", source_id="s", t_event_ns=5, t_start_ns=0, t_end_ns=9,
            score=1.0)
FACES = Obs(source_id="s", group="face", component="c", seq=0, t_ns=0, watermark_ns=0,
            payload=Faces())


@pytest.mark.parametrize("bad", [
    _with_fields(Hello(component="c", group="g", pid=1), policy="sometimes"),
    _with_fields(Hello(component="c", group="g", pid=1), encoding="png"),
    _with_fields(Hello(component="c", group="g", pid=1), fps=0.0),
    _with_fields(Hello(component="c", group="g", pid=1), fps=-5.0),
    _with_fields(Hello(component="c", group="g", pid=1), fps=float("inf")),
    _with_fields(Hello(component="c", group="g", pid=1), fps=1e10),
    _with_fields(Hello(component="c", group="g", pid=1), fps=1e-300),
    _with_fields(Credit(n=1), n=-1),
    _with_fields(Credit(n=1), n=1_000_001),
    _with_fields(TRIG, t_start_ns=10, t_end_ns=9),
    _with_fields(TRIG, t_end_ns=2**63 - 1),
    _with_fields(TRIG, score=float("nan")),
    _with_fields(FACES, payload={"kind": "face", "faces": [{"track_id": 1}]}),
    _with_fields(FACES, payload={"kind": "face", "faces": [
        {**msgspec.to_builtins(a_face()), "expression": 5}]}),
    _with_fields(FACES, payload={"kind": "face", "faces": [
        {**msgspec.to_builtins(a_face()), "area_ratio": "x"}]}),
    _with_fields(FACES, payload={"kind": "face", "faces": [
        {**msgspec.to_builtins(a_face()), "box": [0.5, 0.5, 0.1, 0.1]}]}),
    _with_fields(TRIG, evidence=[{"kind": "face", "seq": 1, "t_ns": 1,
                                  "values": {"x": b"bytes"}}]),
], ids=["policy", "encoding", "fps-0", "fps-negative", "fps-inf", "fps-1e10", "fps-1e-300",
        "credit-negative", "credit-huge", "trig-window", "trig-end-beyond-2^62", "score-nan",
        "face-without-box", "face-expression-number", "face-area-string", "face-box-reversed",
        "evidence-bytes"])
def test_out_of_range_values_are_rejected(bad: list[bytes]) -> None:
    with pytest.raises(DecodeError):
        decode(bad)


def test_bad_frame_geometry_and_encoding_are_rejected() -> None:
    frame, _ = bgr_frame()
    for changes in ({"width": 0, "data": b""}, {"height": -1, "data": b""}, {"seq": -1},
                    {"encoding": "png"}):
        with pytest.raises(DecodeError):
            roundtrip(replace(frame, **changes))


# ---------------------------------------------------------------------------- sizes and parts


def _trace_with_header_size(size: int) -> list[bytes]:
    """A TraceRecord whose packed header is exactly ``size`` bytes."""
    pad = size - 100
    for _ in range(8):
        parts = wire(TraceRecord(record="pad", fields={"pad": "a" * pad}))
        pad += size - len(parts[1])
        if len(parts[1]) == size:
            return parts
    raise AssertionError("could not hit the size")


def test_header_at_the_limit_is_accepted() -> None:
    parts = _trace_with_header_size(MAX_HEADER_BYTES)
    assert len(parts[1]) == MAX_HEADER_BYTES
    assert isinstance(decode(parts), TraceRecord)


def test_oversize_header_is_rejected() -> None:
    parts = _trace_with_header_size(MAX_HEADER_BYTES + 1)
    with pytest.raises(OversizeError):
        decode(parts)


@settings(max_examples=10, deadline=None)
@given(extra=st.integers(min_value=1, max_value=4096), kind=st.sampled_from(KNOWN_KINDS))
def test_oversize_header_is_rejected_for_every_kind(extra: int, kind: bytes) -> None:
    """The size is checked before parsing: even garbage of the wrong size is OversizeError."""
    with pytest.raises(OversizeError):
        decode([kind, b"\xc1" * (MAX_HEADER_BYTES + extra)])


def test_oversize_payload_is_rejected() -> None:
    frame, _ = bgr_frame()
    parts = wire(frame)
    big = bytearray(MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(OversizeError):
        decode([parts[0], parts[1], memoryview(big)])


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 16), height=st.integers(1, 16), length=st.integers(0, 1024))
def test_raw_frame_payload_must_match_geometry(width: int, height: int, length: int) -> None:
    frame = replace(bgr_frame()[0], width=width, height=height, data=b"")
    parts = wire(frame)
    if length == width * height * 3:
        decoded = decode([parts[0], parts[1], bytes(length)])
        assert decoded.image().shape == (height, width, 3)
    else:
        with pytest.raises(DecodeError, match="does not match"):
            decode([parts[0], parts[1], bytes(length)])


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 64), channels=st.integers(1, 4), length=st.integers(0, 1024))
def test_audio_payload_must_match_header(n: int, channels: int, length: int) -> None:
    chunk = replace(audio_chunk()[0], n_samples=n, channels=channels, data=b"")
    parts = wire(chunk)
    if length == n * channels * 4:
        assert decode([parts[0], parts[1], bytes(length)]).samples().shape == (n, channels)
    else:
        with pytest.raises(DecodeError):
            decode([parts[0], parts[1], bytes(length)])


@settings(max_examples=200, deadline=None)
@given(msg=st.sampled_from(header_messages()), count=st.integers(0, 4))
def test_wrong_number_of_payload_parts_is_rejected(msg: Message, count: int) -> None:
    assume(count != type(msg).PAYLOAD_PARTS)
    parts = wire(msg)
    payload = (parts[2:] * 4)[:count] if parts[2:] else [b"x"] * count
    with pytest.raises(DecodeError, match="payload part"):
        decode([parts[0], parts[1], *payload])


@pytest.mark.parametrize("parts", [[], [b"wm"]], ids=["empty", "kind-only"])
def test_fewer_than_two_parts_is_rejected(parts: list[bytes]) -> None:
    with pytest.raises(DecodeError):
        decode(parts)


# ---------------------------------------------------------------------------- generated values

names = st.from_regex(NAME_PATTERN, fullmatch=True)
components = st.text(min_size=1, max_size=20)
small_values = st.one_of(st.none(), st.booleans(), INT62, st.floats(allow_nan=False),
                         st.text(max_size=10))


@settings(max_examples=200, deadline=None)
@given(source_id=names, group=names, component=components, t_ns=INT62)
def test_generated_watermarks_roundtrip_exactly(source_id: str, group: str, component: str,
                                                t_ns: int) -> None:
    wm = Watermark(source_id=source_id, group=group, component=component, t_ns=t_ns)
    assert roundtrip(wm) == wm


@settings(max_examples=200, deadline=None)
@given(source_id=names, component=components,
       last_seq=st.integers(min_value=-1, max_value=2**62), t_end_ns=INT62,
       reason=st.text(max_size=20),
       gaps=st.lists(st.tuples(st.integers(0, 2**61), st.integers(0, 2**40),
                               st.sampled_from(["sampled", "latest", "no_member"]))
                     .map(lambda g: Gap(g[0], g[0] + g[1], g[2])), max_size=4))
def test_generated_eofs_roundtrip_exactly(source_id: str, component: str, last_seq: int,
                                          t_end_ns: int, reason: str, gaps: list[Gap]) -> None:
    eof = Eof(source_id=source_id, component=component, last_seq=last_seq, t_end_ns=t_end_ns,
              reason=reason, gaps=gaps)
    assert roundtrip(eof) == eof


@settings(max_examples=200, deadline=None)
@given(rule=names, rule_kind=st.text(max_size=20), source_id=names, t_event_ns=INT62,
       window=st.lists(INT62, min_size=2, max_size=2).map(sorted),
       score=st.floats(min_value=-1e9, max_value=1e9),
       evidence=st.lists(st.builds(
           Evidence, kind=st.text(max_size=8), component=st.text(max_size=8),
           seq=st.integers(-1, 2**62), t_ns=INT62,
           values=st.dictionaries(st.text(max_size=8), small_values, max_size=4)),
           max_size=4),
       missing=st.lists(names, max_size=3))
def test_generated_trigs_roundtrip_exactly(rule: str, rule_kind: str, source_id: str,
                                           t_event_ns: int, window: list[int], score: float,
                                           evidence: list[Evidence],
                                           missing: list[str]) -> None:
    trig = Trig(rule=rule, rule_kind=rule_kind, source_id=source_id, t_event_ns=t_event_ns,
                t_start_ns=window[0], t_end_ns=window[1], score=score, evidence=evidence,
                missing=missing)
    assert roundtrip(trig) == trig


# ---------------------------------------------------------------------------- payloads

unit = st.floats(min_value=0.0, max_value=1.0)
coord = st.floats(min_value=-1.0, max_value=2.0)
degrees = st.floats(min_value=-180.0, max_value=180.0)
boxes = st.tuples(unit, unit, unit, unit).map(
    lambda b: Box(min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))
points2 = st.builds(Point2, coord, coord)
expressions = st.builds(Expression, **{e: unit for e in EMOTIONS})
faces = st.builds(Face, track_id=st.integers(0, 2**62), box=boxes, score=unit,
                  landmarks=st.lists(points2, min_size=5, max_size=5),
                  dense_landmarks=st.lists(points2, max_size=8), yaw=degrees, pitch=degrees,
                  roll=degrees, expression=st.none() | expressions, area_ratio=unit)
persons = st.builds(Person, box=boxes, score=unit,
                    keypoints=st.lists(st.builds(Keypoint, coord, coord, unit), min_size=17,
                                       max_size=17),
                    left_hand_raised=st.booleans(), right_hand_raised=st.booleans())
hands = st.builds(Hand, handedness=st.sampled_from(["left", "right"]), handedness_score=unit,
                  landmarks=st.lists(st.builds(Point3, coord, coord,
                                               st.floats(min_value=-10, max_value=10)),
                                     min_size=21, max_size=21),
                  gesture=st.sampled_from(GESTURES), score=unit)
words = st.tuples(st.text(max_size=12), st.integers(-(2**61), 2**61), st.integers(0, 2**40),
                  unit).map(lambda w: Word(word=w[0], t_ns=w[1], t_end_ns=w[1] + w[2],
                                           probability=w[3]))
payloads = st.one_of(
    st.builds(Faces, faces=st.lists(faces, max_size=3)),
    st.builds(Persons, persons=st.lists(persons, max_size=2)),
    st.builds(Hands, hands=st.lists(hands, max_size=2)),
    st.builds(QualityReading, blur=st.floats(min_value=0, max_value=1e9), brightness=unit,
              contrast=unit, clipped_dark=unit, clipped_bright=unit, gate=st.booleans()),
    st.builds(SpeechSegment, t_end_ns=st.integers(0, 2**61), text=st.text(max_size=40),
              words=st.lists(words, max_size=4), language=st.text(max_size=4),
              final=st.booleans()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, seq=st.integers(0, 2**62), back=st.integers(0, 2**40))
def test_every_payload_struct_roundtrips(payload: Any, seq: int, back: int) -> None:
    t = payload.t_end_ns - back if isinstance(payload, SpeechSegment) else seq
    msg = Obs(source_id="cam0", group=payload.KIND, component=f"extractor:{payload.KIND}#1",
              seq=seq, t_ns=t, watermark_ns=t, payload=payload)
    decoded = roundtrip(msg)
    assert decoded == msg and type(decoded.payload) is type(payload)


def _face_header(**face_changes: Any) -> list[bytes]:
    face = {**msgspec.to_builtins(a_face()), **face_changes}
    return _with_fields(FACES, payload={"kind": "face", "faces": [face]})


@pytest.mark.parametrize("parts,field", [
    (_with_fields(FACES, payload={"kind": "face",
                                  "faces": [msgspec.to_builtins(a_face())] * 257}),
     "payload.faces"),
    (_face_header(dense_landmarks=[[0.5, 0.5]] * 1025), "dense_landmarks"),
    (_face_header(landmarks=[[0.5, 0.5]] * 6), "landmarks"),
    (_with_fields(FACES, payload={"kind": "speech", "t_end_ns": 5, "text": "a" * 100_001}),
     "payload.text"),
    (_with_fields(FACES, payload={"kind": "speech", "t_end_ns": 5, "words": [
        {"word": "w" * 257, "t_ns": 0, "t_end_ns": 1}]}), "word"),
    (_with_fields(TRIG, evidence=[{"kind": "k", "seq": 1, "t_ns": 1}] * 1001), "evidence"),
    (_with_fields(TRIG, rule="../../etc/passwd"), "rule"),
    (_with_fields(Hello(component="c", group="g", pid=1), group="a" * 65), "group"),
    (_with_fields(Hello(component="c", group="g", pid=1), streams=["video", "audio", "video"]),
     "streams"),
], ids=["faces", "dense", "landmarks", "text", "word", "evidence", "rule-name", "group",
        "streams"])
def test_oversize_fields_are_rejected_naming_the_field(parts: list[bytes], field: str) -> None:
    with pytest.raises(DecodeError, match=field) as exc:
        decode(parts)
    assert type(exc.value) is DecodeError


@pytest.mark.parametrize("msg", header_messages(), ids=lambda m: type(m).__name__)
def test_unknown_field_is_rejected_naming_it(msg: Message) -> None:
    header = header_of(msg)
    header["surprise"] = 1
    with pytest.raises(DecodeError, match="'surprise'"):
        decode(with_header(msg, header))


def test_unknown_payload_tag_and_field_are_typed_errors() -> None:
    with pytest.raises(UnknownKindError, match="payload.kind"):
        decode(_with_fields(FACES, payload={"kind": "telepathy"}))
    with pytest.raises(DecodeError, match="payload.mood"):
        decode(_with_fields(FACES, payload={"kind": "face", "mood": 1}))
