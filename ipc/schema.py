"""Typed, versioned messages of the wire and their MessagePack encoding.

Every message is a ZeroMQ multipart ``[kind, header, *payload]``: ``kind`` is a short ASCII tag,
``header`` a MessagePack map holding ``v`` (the schema version) and the message's fields, and the
payload parts raw buffers (pixels, samples) sent zero-copy. :func:`encode` and :func:`decode` are
the only way bytes become messages: decoding validates size, version, field presence and types and
raises a :class:`~momentbus.ipc.errors.DecodeError` subclass on anything else, so a malformed message
is counted and dropped by the receiver, never a crash.

Times are ``t_ns`` (int ns, source clock); ``pts``/``time_base`` are the stream's own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import msgpack
import numpy as np
from numpy.typing import NDArray

from .errors import DecodeError, OversizeError, SchemaVersionError, UnknownKindError

SCHEMA_VERSION = 1

#: Largest header accepted (bytes). Headers carry metadata only; 1 MiB holds a TRIG with
#: hundreds of evidence items.
MAX_HEADER_BYTES = 1 << 20
#: Largest single payload part (bytes): an 8K BGR frame is 7680*4320*3 = 99.5 MB.
MAX_PAYLOAD_BYTES = 128 << 20

Buffer = bytes | memoryview | bytearray


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every wire message. Subclasses set ``KIND`` and declare typed fields."""

    KIND: ClassVar[bytes] = b""
    #: Number of payload parts the message carries after its header.
    PAYLOAD_PARTS: ClassVar[int] = 0

    def payload(self) -> list[Buffer]:
        return []


# ---------------------------------------------------------------------------- frame bus


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """A frame-bus client announces itself (DEALER -> ROUTER) or a member joins fusion.

    ``policy`` is ``"every"`` (lossless, in order, backpressure on the source) or ``"latest"``
    (newest frame on credit, skipped seqs reported as drops). ``fps`` is the group's wanted
    sampling rate (``None``: every frame). ``encoding`` is ``"raw"`` or ``"jpeg"``.
    """

    KIND: ClassVar[bytes] = b"hello"
    component: str
    group: str
    pid: int
    policy: str = "every"
    fps: float | None = None
    encoding: str = "raw"
    streams: list[str] = field(default_factory=lambda: ["video"])


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """The daemon's answer to :class:`Hello`: what the source is."""

    KIND: ClassVar[bytes] = b"welcome"
    source_id: str
    width: int
    height: int
    time_base: Fraction
    duration_ns: int | None
    live: bool


@dataclass(frozen=True, slots=True)
class Credit(Message):
    """A client grants the server ``n`` more frames (ZeroMQ guide, credit-based flow control)."""

    KIND: ClassVar[bytes] = b"credit"
    n: int


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Liveness ping; ``wall_ns`` is the sender's CLOCK_REALTIME (for latency, never alignment)."""

    KIND: ClassVar[bytes] = b"hb"
    component: str
    wall_ns: int


@dataclass(frozen=True, slots=True)
class Frame(Message):
    """One decoded video frame.

    Payload: one part, ``height*width*3`` bytes of BGR24 (``encoding="raw"``) or a JPEG file.
    ``gaps`` lists the seqs the server decided *not* to send to this recipient since its previous
    frame, as ``[first_seq, last_seq, reason]`` with reason ``"sampled"`` (group fps) or
    ``"latest"`` (a newer frame superseded it: a drop).
    """

    KIND: ClassVar[bytes] = b"frame"
    PAYLOAD_PARTS: ClassVar[int] = 1
    source_id: str
    seq: int
    pts: int
    time_base: Fraction
    t_ns: int
    capture_wall_ns: int
    width: int
    height: int
    encoding: str = "raw"
    gaps: list[list[Any]] = field(default_factory=list)
    #: ``[block name, byte offset]`` of the pixels in the daemon's shared memory
    #: (``encoding="shm"``; the payload part is then empty).
    shm: list[Any] = field(default_factory=list)
    data: Any = field(default=b"", compare=False, repr=False)

    def payload(self) -> list[Buffer]:
        if self.encoding == "shm":
            return [b""]
        data = self.data
        if isinstance(data, np.ndarray):
            return [_as_memoryview(np.ascontiguousarray(data))]
        return [data]

    def image(self) -> NDArray[np.uint8]:
        """The frame as a ``(height, width, 3)`` uint8 BGR array (decodes JPEG payloads; for
        ``shm`` a view of shared memory, valid until the frame's credit is returned).

        Raises:
            DecodeError: the payload does not hold a frame of the announced size.
        """
        if isinstance(self.data, np.ndarray):
            return self.data
        if self.encoding == "shm":
            from .shm import attach_view

            return attach_view(self.shm[0], self.shm[1], self.height, self.width)
        if self.encoding == "jpeg":
            import cv2

            img = cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_COLOR)
            if img is None or img.shape[:2] != (self.height, self.width):
                raise DecodeError(f"frame {self.seq}: JPEG payload does not decode to the frame size")
            return np.asarray(img, dtype=np.uint8)
        expected = self.height * self.width * 3
        if len(self.data) != expected:
            raise DecodeError(f"frame {self.seq}: payload {len(self.data)} B, expected {expected} B")
        return np.frombuffer(self.data, np.uint8).reshape(self.height, self.width, 3)


@dataclass(frozen=True, slots=True)
class AudioChunk(Message):
    """A chunk of audio; ``t_ns`` is the time of its first sample.

    Payload: one part, ``n_samples*channels`` little-endian float32, interleaved.
    """

    KIND: ClassVar[bytes] = b"audio"
    PAYLOAD_PARTS: ClassVar[int] = 1
    source_id: str
    seq: int
    pts: int
    time_base: Fraction
    t_ns: int
    capture_wall_ns: int
    sample_rate: int
    channels: int
    n_samples: int
    data: Any = field(default=b"", compare=False, repr=False)

    def payload(self) -> list[Buffer]:
        data = self.data
        if isinstance(data, np.ndarray):
            return [_as_memoryview(np.ascontiguousarray(data, dtype="<f4"))]
        return [data]

    def samples(self) -> NDArray[np.float32]:
        """``(n_samples, channels)`` float32 array.

        Raises:
            DecodeError: the payload size does not match ``n_samples*channels``.
        """
        arr = np.frombuffer(self.data, "<f4") if not isinstance(self.data, np.ndarray) else self.data
        if arr.size != self.n_samples * self.channels:
            raise DecodeError(f"audio chunk {self.seq}: {arr.size} samples, header says "
                              f"{self.n_samples}x{self.channels}")
        return arr.reshape(self.n_samples, self.channels)


# ---------------------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True)
class Watermark(Message):
    """``component`` (a member of ``group``) promises nothing more at or before ``t_ns``."""

    KIND: ClassVar[bytes] = b"wm"
    source_id: str
    group: str
    component: str
    t_ns: int


@dataclass(frozen=True, slots=True)
class Obs(Message):
    """Base of the typed observations. An empty result list means *looked, found nothing*.

    ``watermark_ns`` is the sender's watermark after this observation (``t_ns`` for extractors
    with no lateness): the observation and the watermark travel as one message.
    """

    KIND: ClassVar[bytes] = b"obs"
    OBS_KIND: ClassVar[str] = ""
    source_id: str
    group: str
    component: str
    seq: int
    t_ns: int
    watermark_ns: int
    latency_ns: int = 0


@dataclass(frozen=True, slots=True)
class FaceObs(Obs):
    """Faces in one frame. Each face is a map with ``track_id`` (int), ``box`` ([x0, y0, x1, y1]
    normalised to [0, 1]), ``score`` ([0, 1]), ``landmarks`` (5 x [x, y] normalised: eyes, nose,
    mouth corners), ``yaw``/``pitch``/``roll`` (degrees), ``expression`` (7 emotion scores in
    [0, 1] summing to 1) and ``area_ratio`` (box area / frame area)."""

    OBS_KIND: ClassVar[str] = "face"
    faces: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QualityObs(Obs):
    """Image quality of one frame: ``blur`` (variance of the Laplacian of the gray image, higher
    is sharper), ``brightness`` and ``contrast`` (mean and std of gray, in [0, 1]),
    ``clipped_dark``/``clipped_bright`` (fraction of pixels at <= 2 / >= 253) and ``gate``
    (usable for analysis)."""

    OBS_KIND: ClassVar[str] = "quality"
    blur: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    clipped_dark: float = 0.0
    clipped_bright: float = 0.0
    gate: bool = True


@dataclass(frozen=True, slots=True)
class PoseObs(Obs):
    """People in one frame. Each person is a map with ``box`` ([x0, y0, x1, y1] normalised),
    ``score`` ([0, 1]), ``keypoints`` (17 x [x, y, visibility] in COCO order: nose, eyes, ears,
    shoulders, elbows, wrists, hips, knees, ankles, left before right) and
    ``left_hand_raised``/``right_hand_raised`` (the person's own left/right)."""

    OBS_KIND: ClassVar[str] = "pose"
    persons: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GestureObs(Obs):
    """Hands in one frame. Each hand is a map with ``handedness`` (``"left"``/``"right"``, the
    person's own hand), ``landmarks`` (21 x [x, y, z], MediaPipe hand topology, x/y normalised),
    ``gesture`` (open_palm, v_sign, thumbs_up, ok, pointing, fist, none) and ``score``."""

    OBS_KIND: ClassVar[str] = "gesture"
    hands: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SpeechObs(Obs):
    """One speech segment ``[t_ns, t_end_ns]`` on the source clock: ``text``, ``words`` (maps
    with ``word``, ``t_ns``, ``t_end_ns``, ``probability``), ``language`` and ``final``."""

    OBS_KIND: ClassVar[str] = "speech"
    t_end_ns: int = 0
    text: str = ""
    words: list[dict[str, Any]] = field(default_factory=list)
    language: str = ""
    final: bool = True


@dataclass(frozen=True, slots=True)
class Trig(Message):
    """A fired trigger. Window ``[t_start_ns, t_end_ns]`` includes pre- and post-roll;
    ``t_event_ns`` is the onset of the condition. ``evidence`` items are maps with at least
    ``kind``, ``seq``, ``t_ns`` and the values that made the rule fire; ``missing`` lists the
    groups that were absent when it fired."""

    KIND: ClassVar[bytes] = b"trig"
    rule: str
    rule_kind: str
    source_id: str
    t_event_ns: int
    t_start_ns: int
    t_end_ns: int
    score: float
    evidence: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Eof(Message):
    """End of stream from ``component``: nothing more will follow for ``source_id``.

    ``last_seq``/``t_end_ns`` are the last frame read (``-1``/``0`` for an empty source);
    ``gaps`` as in :class:`Frame`, for seqs skipped after the recipient's last frame."""

    KIND: ClassVar[bytes] = b"eof"
    source_id: str
    component: str
    last_seq: int
    t_end_ns: int
    reason: str = "end_of_stream"
    gaps: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TraceRecord(Message):
    """One trace record (see :mod:`momentbus.traces.records`): ``record`` type plus fields."""

    KIND: ClassVar[bytes] = b"trace"
    record: str
    fields: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- codec

MESSAGE_TYPES: dict[bytes, type[Message]] = {
    cls.KIND: cls
    for cls in (Hello, Welcome, Credit, Heartbeat, Frame, AudioChunk, Watermark, Trig, Eof,
                TraceRecord)
}
OBS_TYPES: dict[str, type[Obs]] = {
    cls.OBS_KIND: cls for cls in (FaceObs, QualityObs, PoseObs, GestureObs, SpeechObs)}


def register_obs(cls: type[Obs]) -> type[Obs]:
    """Register an :class:`Obs` subclass so it can be decoded (explicit, no import magic)."""
    if not cls.OBS_KIND:
        raise ValueError(f"{cls.__name__} has no OBS_KIND")
    OBS_TYPES[cls.OBS_KIND] = cls
    return cls


_FIELDS_CACHE: dict[type, list[tuple[str, Any, bool]]] = {}


def _fields(cls: type[Message]) -> list[tuple[str, Any, bool]]:
    """(name, type, required) for the header fields of ``cls`` (payload field ``data`` excluded)."""
    cached = _FIELDS_CACHE.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = []
        for f in dataclasses.fields(cls):
            if f.name == "data":
                continue
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            cached.append((f.name, hints[f.name], required))
        _FIELDS_CACHE[cls] = cached
    return cached


def _pack_value(value: Any) -> Any:
    if isinstance(value, Fraction):
        return [value.numerator, value.denominator]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Fraction):
        return [obj.numerator, obj.denominator]
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(msg: Message) -> list[Buffer]:
    """Multipart frames ``[kind, header, *payload]`` for ``msg``. Payload parts are not copied."""
    header: dict[str, Any] = {"v": SCHEMA_VERSION}
    if isinstance(msg, Obs):
        header["obs_kind"] = msg.OBS_KIND
    for name, _tp, _req in _fields(type(msg)):
        header[name] = _pack_value(getattr(msg, name))
    packed = msgpack.packb(header, use_bin_type=True, default=_msgpack_default)
    return [msg.KIND, packed, *msg.payload()]


def _check(name: str, tp: Any, value: Any) -> Any:
    """Validate (and convert) one header value against its declared type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(name, arg, value)
            except DecodeError as e:
                errors.append(str(e))
        raise DecodeError("; ".join(errors))
    if tp is Any:
        return value
    if tp is Fraction:
        if (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
                and value[1] > 0):
            return Fraction(value[0], value[1])
        raise DecodeError(f"field {name!r}: expected [num, den] with den > 0, got {value!r}")
    if tp is bool:
        if type(value) is bool:
            return value
        raise DecodeError(f"field {name!r}: expected bool, got {type(value).__name__}")
    if tp is int:
        if type(value) is int:
            return value
        raise DecodeError(f"field {name!r}: expected int, got {type(value).__name__}")
    if tp is float:
        if type(value) in (float, int):
            return float(value)
        raise DecodeError(f"field {name!r}: expected float, got {type(value).__name__}")
    if tp is str:
        if type(value) is str:
            return value
        raise DecodeError(f"field {name!r}: expected str, got {type(value).__name__}")
    if origin is list:
        if not isinstance(value, list):
            raise DecodeError(f"field {name!r}: expected list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_check(f"{name}[]", item_tp, v) for v in value]
    if origin is dict:
        if not isinstance(value, dict) or not all(type(k) is str for k in value):
            raise DecodeError(f"field {name!r}: expected a map with string keys")
        return value
    raise DecodeError(f"field {name!r}: unsupported declared type {tp!r}")  # pragma: no cover


def decode(parts: list[Any]) -> Message:
    """Validate and decode a multipart message (``bytes`` or ``zmq.Frame`` parts).

    Raises:
        UnknownKindError: the kind tag is not known.
        SchemaVersionError: the header's ``v`` is not :data:`SCHEMA_VERSION`.
        OversizeError: the header or a payload part is over its limit.
        DecodeError: anything else malformed (bad MessagePack, missing/mistyped field, wrong
            number of parts).
    """
    if len(parts) < 2:
        raise DecodeError(f"expected [kind, header, ...], got {len(parts)} part(s)")
    kind = _as_bytes(parts[0])
    cls = MESSAGE_TYPES.get(kind) if kind != b"obs" else Obs
    if cls is None:
        raise UnknownKindError(f"unknown message kind {kind[:32]!r}")
    header_bytes = _as_buffer(parts[1])
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise OversizeError(f"header of {len(header_bytes)} B exceeds {MAX_HEADER_BYTES} B")
    try:
        header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise DecodeError(f"header is not valid MessagePack: {e}") from None
    if not isinstance(header, dict):
        raise DecodeError("header is not a map")
    version = header.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise SchemaVersionError(f"schema version {version!r} not supported "
                                 f"(this build speaks {SCHEMA_VERSION})")
    if cls is Obs:
        obs_kind = header.get("obs_kind")
        if not isinstance(obs_kind, str) or obs_kind not in OBS_TYPES:
            raise UnknownKindError(f"unknown observation kind {obs_kind!r}")
        cls = OBS_TYPES[obs_kind]
    payload = parts[2:]
    if len(payload) != cls.PAYLOAD_PARTS:
        raise DecodeError(f"{cls.__name__}: expected {cls.PAYLOAD_PARTS} payload part(s), "
                          f"got {len(payload)}")
    kwargs: dict[str, Any] = {}
    for name, tp, required in _fields(cls):
        if name not in header:
            if required:
                raise DecodeError(f"{cls.__name__}: missing field {name!r}")
            continue
        kwargs[name] = _check(name, tp, header[name])
    if cls.PAYLOAD_PARTS:
        buf = _as_buffer(payload[0])
        if len(buf) > MAX_PAYLOAD_BYTES:
            raise OversizeError(f"payload of {len(buf)} B exceeds {MAX_PAYLOAD_BYTES} B")
        kwargs["data"] = buf
    try:
        msg = cls(**kwargs)
    except TypeError as e:  # pragma: no cover - fields are checked above
        raise DecodeError(str(e)) from None
    _validate_values(msg)
    return msg


def _validate_values(msg: Message) -> None:
    """Range checks that types alone do not express."""
    if isinstance(msg, Frame):
        if msg.width <= 0 or msg.height <= 0 or msg.seq < 0:
            raise DecodeError(f"frame: bad geometry or seq ({msg.width}x{msg.height}, {msg.seq})")
        if msg.encoding == "raw" and len(msg.data) != msg.width * msg.height * 3:
            raise DecodeError(f"frame {msg.seq}: raw payload {len(msg.data)} B does not match "
                              f"{msg.width}x{msg.height}x3")
        if msg.encoding == "shm" and not (len(msg.shm) == 2 and isinstance(msg.shm[0], str)
                                          and type(msg.shm[1]) is int and msg.shm[1] >= 0):
            raise DecodeError(f"frame {msg.seq}: shm needs [name, offset]")
        if msg.encoding not in ("raw", "jpeg", "shm"):
            raise DecodeError(f"frame {msg.seq}: unknown encoding {msg.encoding!r}")
    elif isinstance(msg, AudioChunk):
        if msg.sample_rate <= 0 or msg.channels <= 0 or msg.n_samples < 0:
            raise DecodeError("audio chunk: bad rate/channels/samples")
        if len(msg.data) != msg.n_samples * msg.channels * 4:
            raise DecodeError(f"audio chunk {msg.seq}: payload does not match header")
    elif isinstance(msg, Credit):
        if not 0 <= msg.n <= 1_000_000:
            raise DecodeError(f"credit out of range: {msg.n}")
    elif isinstance(msg, Hello):
        if msg.policy not in ("every", "latest"):
            raise DecodeError(f"hello: unknown policy {msg.policy!r}")
        if msg.encoding not in ("raw", "jpeg", "shm"):
            raise DecodeError(f"hello: unknown encoding {msg.encoding!r}")
        if msg.fps is not None and not msg.fps > 0:
            raise DecodeError(f"hello: fps must be > 0, got {msg.fps!r}")
    elif isinstance(msg, FaceObs):
        for face in msg.faces:
            if not isinstance(face, dict) or not isinstance(face.get("box"), list):
                raise DecodeError("face obs: every face needs a 'box'")
    elif isinstance(msg, PoseObs):
        for person in msg.persons:
            if not isinstance(person, dict) or not isinstance(person.get("keypoints"), list):
                raise DecodeError("pose obs: every person needs 'keypoints'")
    elif isinstance(msg, GestureObs):
        for hand in msg.hands:
            if not isinstance(hand, dict) or not isinstance(hand.get("landmarks"), list):
                raise DecodeError("gesture obs: every hand needs 'landmarks'")
    elif isinstance(msg, SpeechObs):
        if msg.t_end_ns < msg.t_ns:
            raise DecodeError("speech obs: t_end_ns before t_ns")
    elif isinstance(msg, Trig):
        if msg.t_start_ns > msg.t_end_ns:
            raise DecodeError("trig: t_start_ns after t_end_ns")


def _as_memoryview(arr: NDArray[Any]) -> memoryview:
    """A flat byte view of a C-contiguous array (no copy)."""
    return memoryview(arr.data).cast("B")


def _as_bytes(part: Any) -> bytes:
    if isinstance(part, bytes):
        return part
    if hasattr(part, "bytes"):
        return bytes(part.bytes)
    return bytes(part)


def _as_buffer(part: Any) -> Buffer:
    if isinstance(part, (bytes, bytearray, memoryview)):
        return part
    if hasattr(part, "buffer"):  # zmq.Frame: zero-copy view
        view: memoryview = part.buffer
        return view
    raise DecodeError(f"message part of type {type(part).__name__}")


def to_json_dict(msg: Message) -> dict[str, Any]:
    """Header fields as a JSON-friendly dict (Fractions as ``"num/den"``), no payload."""
    out: dict[str, Any] = {}
    if isinstance(msg, Obs):
        out["kind"] = msg.OBS_KIND
    for name, _tp, _req in _fields(type(msg)):
        value = getattr(msg, name)
        out[name] = str(value) if isinstance(value, Fraction) else _pack_value(value)
    return out
