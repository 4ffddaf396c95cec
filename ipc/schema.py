"""Typed, versioned messages of the wire and their MessagePack encoding (msgspec Structs).

Every message is a ZeroMQ multipart ``[kind, header, *payload]``: ``kind`` is a short ASCII tag,
``header`` a MessagePack map whose first key is ``v`` (the schema version) followed by the
message's fields, and the payload parts raw buffers (pixels, samples) sent zero-copy.
:func:`encode` and :func:`decode` are the only way bytes become messages. Decoding validates the
version, every field's presence, type and declared range (``msgspec.Meta`` constraints, checked in
C), the number and size of payload parts, and raises a :class:`~momentbus.ipc.errors.DecodeError`
subclass on anything else, so a malformed message is counted and dropped by the receiver, never a
crash. ``bench/schema.py`` measures decoding against plain ``msgpack.unpackb``.

Times are ``t_ns`` (int ns, source clock); ``pts``/``time_base`` are the stream's own.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Final, Union

import msgspec
import numpy as np
from msgspec import Meta, Struct
from numpy.typing import NDArray

from .errors import DecodeError, OversizeError, SchemaVersionError, UnknownKindError
from .payloads import AnyPayload, NonNegInt, Payload, SpeechSegment, TimeNs
from .shm import attach_view
from .vocab import NAME_PATTERN, Encoding, GapReason, MediaKind, Policy, Stream

#: Version 2: payloads are typed Structs under ``payload`` (version 1 carried dicts).
SCHEMA_VERSION: Final = 2

#: Largest header accepted (bytes). Headers carry metadata only; 1 MiB holds a TRIG with
#: hundreds of evidence items or a speech segment of thousands of words.
MAX_HEADER_BYTES: Final = 1 << 20
#: Largest single payload part (bytes): an 8K BGR frame is 7680*4320*3 = 99.5 MB.
MAX_PAYLOAD_BYTES: Final = 128 << 20

Buffer = bytes | memoryview | bytearray

Name = Annotated[str, Meta(pattern=NAME_PATTERN, description="letters, digits, _ . -")]
Component = Annotated[str, Meta(min_length=1, max_length=128)]
Seq = Annotated[int, Meta(ge=0, le=1 << 62)]
#: Pixels per side: 16384 is FFmpeg's largest H.264/HEVC level-6.2 frame dimension.
Dimension = Annotated[int, Meta(ge=1, le=16384)]
WallNs = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]
#: Frames per second wanted by a group: one frame every 100 s up to 1000 fps; outside this the
#: sampling grid (period = 1e9 / fps ns) would be 0 or overflow.
Fps = Annotated[float, Meta(ge=0.01, le=1000.0, description="frames/s")]
ShortText = Annotated[str, Meta(max_length=64)]


class Message(Struct, frozen=True, kw_only=True, tag_field="v", tag=SCHEMA_VERSION,
              forbid_unknown_fields=True):
    """Base of every wire message. Subclasses set ``KIND`` and declare typed fields.

    The schema version is the Struct tag ``v``: msgspec writes it first in every header.
    """

    KIND: ClassVar[bytes] = b""
    #: Number of raw payload parts the message carries after its header.
    PAYLOAD_PARTS: ClassVar[int] = 0

    def payload_parts(self) -> list[Buffer]:
        return []


# ---------------------------------------------------------------------------- frame bus


class ClockStamps(Struct, array_like=True, frozen=True, gc=False):
    """NTP symmetric-mode stamps carried on Hello, Welcome and Heartbeat, so each end of a link
    estimates the other's wall-clock offset (:mod:`momentbus.ipc.clock`; RFC 5905 section 8):
    ``org`` the peer's last ``xmt`` we received, ``rec`` when it arrived, ``xmt`` when this
    message left (the sender's CLOCK_REALTIME, ns; 0 = none). On the wire ``[org, rec, xmt]``."""

    org: WallNs
    rec: WallNs
    xmt: WallNs


class Hello(Message, frozen=True, kw_only=True):
    """A frame-bus client announces itself (DEALER -> ROUTER), or a member joins fusion.

    A member is ``(group, instance, incarnation)``: ``instance`` numbers the processes of one
    group (``extractor:GROUP#INSTANCE``), ``incarnation`` one run of that process (its start
    time, ns: a restarted process is a newer incarnation of the same instance). To the frame bus
    a Hello also means "start my session afresh: I hold no item"; ``last_seq`` is the highest
    seq this process finished (-1: none), so a restarted daemon need not resend it.

    ``policy``: ``every`` (lossless, in order, backpressure on the source) or ``latest`` (newest
    frame on credit, skipped seqs reported as drops). ``fps``: the group's wanted sampling rate
    (``None``: every frame). ``encoding``: how the member wants pixels.
    """

    KIND: ClassVar[bytes] = b"hello"
    component: Component
    group: Name
    pid: NonNegInt
    instance: Annotated[int, Meta(ge=1, le=1024)] = 1
    incarnation: NonNegInt = 0
    last_seq: Annotated[int, Meta(ge=-1, le=1 << 62)] = -1
    policy: Policy = "every"
    fps: Fps | None = None
    encoding: Encoding = "raw"
    streams: Annotated[list[Stream], Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: ["video"])
    clock: ClockStamps | None = None


class Welcome(Message, frozen=True, kw_only=True):
    """The daemon's answer to :class:`Hello`: what the source is (``width``/``height`` 0 for an
    audio-only source; ``duration_ns`` ``None`` when unknown or live)."""

    KIND: ClassVar[bytes] = b"welcome"
    source_id: Name
    width: Annotated[int, Meta(ge=0, le=16384)]
    height: Annotated[int, Meta(ge=0, le=16384)]
    time_base: Fraction
    duration_ns: NonNegInt | None
    live: bool
    clock: ClockStamps | None = None


class Rejoin(Message, frozen=True, kw_only=True):
    """The daemon does not know the sender (it restarted, or dropped the member after a
    silence): send :class:`Hello` again."""

    KIND: ClassVar[bytes] = b"rejoin"
    reason: ShortText = ""


class Ack(Message, frozen=True, kw_only=True):
    """A reliable link's receiver has durably handled every message of the sender's current
    incarnation up to ``rseq``; ``incarnation`` is the *receiver's* (a new one tells the sender
    to resend everything not acknowledged). See :mod:`momentbus.ipc.reliable`."""

    KIND: ClassVar[bytes] = b"ack"
    rseq: NonNegInt
    incarnation: NonNegInt


class Credit(Message, frozen=True, kw_only=True):
    """A client grants the server ``n`` more items (ZeroMQ guide, credit-based flow control)."""

    KIND: ClassVar[bytes] = b"credit"
    n: Annotated[int, Meta(ge=0, le=1_000_000)]


class Heartbeat(Message, frozen=True, kw_only=True):
    """Liveness ping; ``wall_ns`` is the sender's CLOCK_REALTIME (for latency, never alignment)."""

    KIND: ClassVar[bytes] = b"hb"
    component: Component
    wall_ns: WallNs
    clock: ClockStamps | None = None


class Gap(Struct, array_like=True, frozen=True, gc=False):
    """Seqs ``first..last`` (inclusive) not sent to a recipient, and why; on the wire
    ``[first, last, reason]``."""

    first: Seq
    last: Seq
    reason: GapReason

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError("gap ends before it starts")


class ShmRef(Struct, array_like=True, frozen=True, gc=False):
    """Where a frame's pixels lie in the daemon's shared memory: ``[block name, byte offset]``."""

    name: Annotated[str, Meta(pattern=r"^momentbus-[A-Za-z0-9_-]{1,64}$")]
    offset: NonNegInt


def _fields_equal(a: Message, b: object) -> bool:
    """Equality of two messages over their header fields (raw payloads are not compared: an
    array and the bytes it was sent as are the same message)."""
    if type(a) is not type(b):
        return False
    return all(getattr(a, f) == getattr(b, f) for f in a.__struct_fields__ if f != "data")


#: A source id on frames and audio chunks: checked for length here, and for equality with the
#: source's :class:`Welcome` (whose id is a checked :data:`Name`) by the frame-bus client: a
#: string compare per frame instead of a pattern match (``bench/schema.py``).
StreamSourceId = Annotated[str, Meta(min_length=1, max_length=64)]


class Frame(Message, frozen=True, kw_only=True):
    """One decoded video frame.

    Payload: one part, ``height*width*3`` bytes of BGR24 (``encoding="raw"``), a JPEG file
    (``"jpeg"``), or empty with the pixels in shared memory at ``shm`` (``"shm"``). ``gaps``:
    the seqs the server decided *not* to send to this recipient since its previous frame.
    ``data`` holds the payload (an array, bytes or a zero-copy view); it is not a header field.
    """

    KIND: ClassVar[bytes] = b"frame"
    PAYLOAD_PARTS: ClassVar[int] = 1
    source_id: StreamSourceId
    seq: Seq
    pts: TimeNs
    time_base: Fraction
    t_ns: TimeNs
    capture_wall_ns: WallNs
    width: Dimension
    height: Dimension
    #: the live connection the frame came from (1, 2, ... after each reconnect; 0: a file)
    generation: NonNegInt = 0
    encoding: Encoding = "raw"
    gaps: Annotated[list[Gap], Meta(max_length=100_000)] = []
    shm: ShmRef | None = None
    data: Any = None

    def __eq__(self, other: object) -> bool:
        return _fields_equal(self, other)

    def payload_parts(self) -> list[Buffer]:
        if self.encoding == "shm" or self.data is None:
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
            assert self.shm is not None
            return attach_view(self.shm.name, self.shm.offset, self.height, self.width)
        if self.encoding == "jpeg":
            import cv2

            img = cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_COLOR)
            if img is None or img.shape[:2] != (self.height, self.width):
                raise DecodeError(f"frame {self.seq}: JPEG payload does not decode to the "
                                  "frame size")
            return np.asarray(img, dtype=np.uint8)
        expected = self.height * self.width * 3
        if self.data is None or len(self.data) != expected:
            raise DecodeError(f"frame {self.seq}: payload does not match {expected} B")
        return np.frombuffer(self.data, np.uint8).reshape(self.height, self.width, 3)


class AudioChunk(Message, frozen=True, kw_only=True):
    """A chunk of audio; ``t_ns`` is the time of its first sample.

    Payload: one part, ``n_samples*channels`` little-endian float32, interleaved.
    """

    KIND: ClassVar[bytes] = b"audio"
    PAYLOAD_PARTS: ClassVar[int] = 1
    source_id: StreamSourceId
    seq: Seq
    pts: TimeNs
    time_base: Fraction
    t_ns: TimeNs
    capture_wall_ns: WallNs
    sample_rate: Annotated[int, Meta(ge=1, le=384_000)]
    channels: Annotated[int, Meta(ge=1, le=32)]
    n_samples: Annotated[int, Meta(ge=0, le=10_000_000)]
    generation: NonNegInt = 0
    data: Any = None

    def __eq__(self, other: object) -> bool:
        return _fields_equal(self, other)

    def payload_parts(self) -> list[Buffer]:
        data = self.data
        if data is None:
            return [b""]
        if isinstance(data, np.ndarray):
            return [_as_memoryview(np.ascontiguousarray(data, dtype="<f4"))]
        return [data]

    def samples(self) -> NDArray[np.float32]:
        """``(n_samples, channels)`` float32 array.

        Raises:
            DecodeError: the payload size does not match ``n_samples*channels``.
        """
        data = b"" if self.data is None else self.data
        arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, "<f4")
        if arr.size != self.n_samples * self.channels:
            raise DecodeError(f"audio chunk {self.seq}: {arr.size} samples, header says "
                              f"{self.n_samples}x{self.channels}")
        return arr.reshape(self.n_samples, self.channels)


class StreamSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a muxer needs to write one encoded stream without its source container: the codec,
    time base, codec extradata (H.264 SPS/PPS, AAC config), and geometry or audio layout."""

    index: Annotated[int, Meta(ge=0, le=64)]
    kind: MediaKind
    codec: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}$")]
    time_base: Fraction
    extradata: Annotated[bytes, Meta(max_length=1 << 16)] = b""
    width: Annotated[int, Meta(ge=0, le=16384)] = 0
    height: Annotated[int, Meta(ge=0, le=16384)] = 0
    pix_fmt: Annotated[str, Meta(max_length=32)] | None = None
    frame_rate: Fraction | None = None
    sample_rate: Annotated[int, Meta(ge=0, le=384_000)] = 0
    layout: Annotated[str, Meta(max_length=32)] | None = None
    sample_format: Annotated[str, Meta(max_length=32)] | None = None


class StreamInfo(Message, frozen=True, kw_only=True):
    """A live connection (``generation``) began, or ended (``ended``): the streams its packets
    belong to. Sent on the ``packets`` stream before the generation's first packet (again to a
    member that joins later), and at its end; ``seq`` shares the packets' counter."""

    KIND: ClassVar[bytes] = b"streams"
    source_id: StreamSourceId
    seq: Seq
    t_ns: TimeNs
    generation: NonNegInt
    streams: Annotated[list[StreamSpec], Meta(min_length=1, max_length=16)]
    #: the generation ended (a disconnect): no packet of it follows; a clip waiting for its
    #: post-roll is cut short at the disconnect instead of waiting for an outage to end
    ended: bool = False


class Packet(Message, frozen=True, kw_only=True):
    """One encoded packet of a live source, at full quality, for the clip role's ring buffer.

    ``pts``/``dts``/``duration`` in ``time_base`` exactly as the source gave them (``None``:
    missing, as RTSP's first packets; ``duration`` 0: unknown); ``t_ns``: the live clock's time of
    its dts. Payload: one part, the packet's bytes.
    """

    KIND: ClassVar[bytes] = b"packet"
    PAYLOAD_PARTS: ClassVar[int] = 1
    source_id: StreamSourceId
    seq: Seq
    generation: NonNegInt
    stream_index: Annotated[int, Meta(ge=0, le=64)]
    kind: MediaKind
    pts: TimeNs | None
    dts: TimeNs | None
    duration: Annotated[int, Meta(ge=0, le=1 << 40)] = 0
    time_base: Fraction
    keyframe: bool = False
    t_ns: TimeNs
    data: Any = None

    def __eq__(self, other: object) -> bool:
        return _fields_equal(self, other)

    def payload_parts(self) -> list[Buffer]:
        return [b"" if self.data is None else self.data]


# ---------------------------------------------------------------------------- observations


class Watermark(Message, frozen=True, kw_only=True):
    """``component`` (a member of ``group``) promises nothing more at or before ``t_ns``."""

    KIND: ClassVar[bytes] = b"wm"
    source_id: Name
    group: Name
    component: Component
    t_ns: TimeNs


class Obs(Message, frozen=True, kw_only=True):
    """One observation: what a member of ``group`` saw at ``t_ns`` (a frame's time, or a speech
    segment's start), as a typed ``payload`` whose ``kind`` tag names the extractor kind. An
    empty payload list means *looked, found nothing*.

    ``watermark_ns`` is the sender's watermark after this observation: the observation and the
    watermark travel as one message. ``latency_ns``: capture to sending, on the sender's wall
    clock with the capture stamp (the daemon's) moved to it by the measured clock offset.
    """

    KIND: ClassVar[bytes] = b"obs"
    source_id: Name
    group: Name
    component: Component
    seq: Seq
    t_ns: TimeNs
    watermark_ns: TimeNs
    payload: AnyPayload
    latency_ns: Annotated[int, Meta(ge=-(1 << 62), le=1 << 62)] = 0
    #: the sender's CLOCK_REALTIME when it sent this (ns; 0: not given): with the link's clock
    #: offset, the receiver tells how long it travelled
    sent_wall_ns: WallNs = 0

    def __post_init__(self) -> None:
        if isinstance(self.payload, SpeechSegment) and self.payload.t_end_ns < self.t_ns:
            raise ValueError("speech segment ends before it starts (t_end_ns < t_ns)")

    @property
    def kind(self) -> str:
        """The payload's kind (``face``, ``pose``, ``gesture``, ``quality``, ``speech``)."""
        return self.payload.KIND


EvidenceScalar = Union[str, int, float, bool, None]
EvidenceValue = Union[EvidenceScalar, list[EvidenceScalar]]


class Evidence(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why a rule fired: one observation (kind, member, seq, t_ns) and the values it read."""

    kind: ShortText
    component: Annotated[str, Meta(max_length=128)] = ""
    seq: Annotated[int, Meta(ge=-1, le=1 << 62)]
    t_ns: TimeNs
    values: Annotated[dict[ShortText, EvidenceValue], Meta(max_length=64)] = {}


class Trig(Message, frozen=True, kw_only=True):
    """A fired trigger. Window ``[t_start_ns, t_end_ns]`` includes pre- and post-roll;
    ``t_event_ns`` is the onset of the condition; ``missing`` lists the groups that were absent
    when it fired."""

    KIND: ClassVar[bytes] = b"trig"
    rule: Name
    rule_kind: ShortText
    source_id: Name
    #: The trigger's ordinal in its run (1, 2, ...), assigned by fusion in event-time order of
    #: release; deterministic, so a clip named from it is the same clip after any restart.
    index: Annotated[int, Meta(ge=0, le=1 << 32)] = 0
    t_event_ns: TimeNs
    t_start_ns: TimeNs
    t_end_ns: TimeNs
    score: Annotated[float, Meta(ge=-1e9, le=1e9)]
    evidence: Annotated[list[Evidence], Meta(max_length=1000)] = []
    missing: Annotated[list[Name], Meta(max_length=64)] = []

    def __post_init__(self) -> None:
        if self.t_start_ns > self.t_end_ns:
            raise ValueError("t_start_ns after t_end_ns")


class Eof(Message, frozen=True, kw_only=True):
    """End of stream from ``component``: nothing more will follow for ``source_id``.

    ``last_seq``/``t_end_ns`` are the last frame read (``-1``/``0`` for an empty source);
    ``gaps`` as in :class:`Frame`, for seqs skipped after the recipient's last frame."""

    KIND: ClassVar[bytes] = b"eof"
    source_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{0,64}$")]
    component: Component
    last_seq: Annotated[int, Meta(ge=-1, le=1 << 62)]
    t_end_ns: TimeNs
    reason: ShortText = "end_of_stream"
    gaps: Annotated[list[Gap], Meta(max_length=100_000)] = []


class TraceRecord(Message, frozen=True, kw_only=True):
    """One trace record (see :mod:`momentbus.traces.records`): ``record`` type plus fields."""

    KIND: ClassVar[bytes] = b"trace"
    record: Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")]
    fields: dict[str, Any] = {}


class TraceBatch(Message, frozen=True, kw_only=True):
    """Trace records of one process in the order emitted: one message for many (the
    :class:`~momentbus.traces.tracer.Tracer` sends at most
    :data:`~momentbus.traces.tracer.TRACE_BATCH_MAX` every
    :data:`~momentbus.traces.tracer.TRACE_BATCH_S`)."""

    KIND: ClassVar[bytes] = b"traces"
    records: Annotated[list[TraceRecord], Meta(max_length=1024)]


# ---------------------------------------------------------------------------- codec

MESSAGE_TYPES: Final[dict[bytes, type[Message]]] = {
    cls.KIND: cls for cls in (Hello, Welcome, Rejoin, Credit, Heartbeat, Frame, AudioChunk,
                              StreamInfo, Packet, Watermark, Obs, Trig, Eof, TraceRecord, TraceBatch,
                              Ack)}


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Fraction):
        return [obj.numerator, obj.denominator]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


#: Largest time_base denominator accepted: 2^31, FFmpeg's AVRational range.
_MAX_DEN = 1 << 31
#: Time bases seen (a source has one or two): building a Fraction costs 0.4 us, a lookup 0.05.
_TIME_BASES: dict[tuple[int, int], Fraction] = {}


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Fraction:
        if (type(obj) is list and len(obj) == 2 and type(obj[0]) is int and type(obj[1]) is int
                and 0 < obj[0] <= _MAX_DEN and 0 < obj[1] <= _MAX_DEN):
            key = (obj[0], obj[1])
            tb = _TIME_BASES.get(key)
            if tb is None:
                tb = Fraction(*key)
                if len(_TIME_BASES) < 256:
                    _TIME_BASES[key] = tb
            return tb
        raise ValueError(f"expected a time base [num, den] with 0 < num, den <= 2^31, got {obj!r}")
    raise NotImplementedError(f"no decoder for {tp!r}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_DECODERS: dict[bytes, msgspec.msgpack.Decoder[Any]] = {
    kind: msgspec.msgpack.Decoder(cls, dec_hook=_dec_hook) for kind, cls in MESSAGE_TYPES.items()}
#: The bytes every current header starts with after the map length: key ``v``, then the version
#: as a positive fixint (msgspec writes the tag field first).
_VERSION_PREFIX: Final = b"\xa1v" + bytes([SCHEMA_VERSION])


def encode(msg: Message) -> list[Buffer]:
    """Multipart frames ``[kind, header, *payload]`` for ``msg``. Payload parts are not copied."""
    header = msgspec.structs.replace(msg, data=None) if msg.PAYLOAD_PARTS else msg
    return [msg.KIND, _ENCODER.encode(header), *msg.payload_parts()]


def decode(parts: list[Any]) -> Message:
    """Validate and decode a multipart message (``bytes``/``memoryview`` or ``zmq.Frame`` parts).

    Raises:
        UnknownKindError: the kind tag, or an observation's payload kind, is not known.
        SchemaVersionError: the header's ``v`` is missing or not :data:`SCHEMA_VERSION`.
        OversizeError: the header or a payload part is over its limit.
        DecodeError: anything else malformed (bad MessagePack, a missing, unknown, mistyped or
            out-of-range field, the wrong number of parts); the message names the field.
    """
    if len(parts) < 2:
        raise DecodeError(f"expected [kind, header, ...], got {len(parts)} part(s)")
    kind = parts[0] if type(parts[0]) is bytes else _as_bytes(parts[0])
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise UnknownKindError(f"unknown message kind {kind[:32]!r}")
    cls = MESSAGE_TYPES[kind]
    header = parts[1] if type(parts[1]) is bytes else _as_buffer(parts[1])
    if len(header) > MAX_HEADER_BYTES:
        raise OversizeError(f"header of {len(header)} B exceeds {MAX_HEADER_BYTES} B")
    # fast path: a fixmap whose first key is v = SCHEMA_VERSION (every header msgspec writes
    # with up to 15 fields); anything else gets the full check
    if not (len(header) > 3 and 0x80 <= header[0] <= 0x8F
            and header[1:4] == _VERSION_PREFIX):
        _check_version(header)
    payload = parts[2:]
    if len(payload) != cls.PAYLOAD_PARTS:
        raise DecodeError(f"{cls.__name__}: expected {cls.PAYLOAD_PARTS} payload part(s), "
                          f"got {len(payload)}")
    try:
        msg: Message = decoder.decode(header)
    except msgspec.ValidationError as e:
        raise _validation_error(cls, e) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # the latter: bad UTF-8 in a str
        raise DecodeError(f"{cls.__name__}: header is not valid MessagePack: {e}") from None
    if cls.PAYLOAD_PARTS:
        buf = _as_buffer(payload[0])
        if len(buf) > MAX_PAYLOAD_BYTES:
            raise OversizeError(f"payload of {len(buf)} B exceeds {MAX_PAYLOAD_BYTES} B")
        msgspec.structs.force_setattr(msg, "data", buf)
        _check_payload(msg, buf)
    return msg


def _check_version(header: Buffer) -> None:
    """The version check, before any field is read: a fast prefix test, else a full parse."""
    first = header[0] if len(header) else 0
    offset = 1 if 0x80 <= first <= 0x8F else 3 if first == 0xDE else 5 if first == 0xDF else -1
    if offset > 0 and bytes(header[offset:offset + 3]) == _VERSION_PREFIX:
        return
    try:
        doc = msgspec.msgpack.decode(header)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise DecodeError(f"header is not valid MessagePack: {e}") from None
    if not isinstance(doc, dict):
        raise DecodeError("header is not a map")
    version = doc.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise SchemaVersionError(f"schema version {version!r} not supported "
                                 f"(this build speaks {SCHEMA_VERSION})")


_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`")


def _validation_error(cls: type[Message], err: msgspec.ValidationError) -> DecodeError:
    """msgspec's message (``Expected `int`, got `str` - at `$.seq```) as a DecodeError naming
    the field as ``'seq'`` (nested: ``'payload.faces[0].box'``)."""
    text = str(err)
    m = _AT.search(text)
    path = m.group(1) if m else ""
    text = text[: m.start()] if m else text
    missing = _MISSING.match(text)
    unknown = _UNKNOWN.match(text)
    if missing:
        field = f"{path}.{missing.group(1)}" if path else missing.group(1)
        if field == "payload.kind":
            return UnknownKindError(f"{cls.__name__}: field 'payload.kind' missing: an "
                                    "observation must name its payload kind")
        return DecodeError(f"{cls.__name__}: missing field {field!r}")
    if unknown:
        field = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        return DecodeError(f"{cls.__name__}: unknown field {field!r}")
    if path == "payload.kind":
        return UnknownKindError(f"{cls.__name__}: field 'payload.kind': unknown observation "
                                f"kind ({text[:1].lower()}{text[1:]})")
    where = f"field {path!r}: " if path else ""
    return DecodeError(f"{cls.__name__}: {where}{text[:1].lower()}{text[1:]}")


def _check_payload(msg: Message, buf: Buffer) -> None:
    """Payload checks that need the raw part (the header alone cannot say)."""
    if isinstance(msg, Frame):
        if (msg.encoding == "shm") != (msg.shm is not None):
            raise DecodeError(f"frame {msg.seq}: encoding 'shm' goes with an shm reference, "
                              "and only it")
        if msg.encoding == "raw" and len(buf) != msg.width * msg.height * 3:
            raise DecodeError(f"frame {msg.seq}: raw payload {len(buf)} B does not match "
                              f"{msg.width}x{msg.height}x3")
        if msg.encoding == "shm" and len(buf):
            raise DecodeError(f"frame {msg.seq}: shm frame with a payload")
        if msg.encoding == "jpeg" and not len(buf):
            raise DecodeError(f"frame {msg.seq}: empty JPEG payload")
    elif isinstance(msg, AudioChunk):
        if len(buf) != msg.n_samples * msg.channels * 4:
            raise DecodeError(f"audio chunk {msg.seq}: payload does not match header")
    elif isinstance(msg, Packet):
        if not len(buf):
            raise DecodeError(f"packet {msg.seq}: empty payload")


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


def _json_hook(obj: Any) -> Any:
    if isinstance(obj, Fraction):
        return f"{obj.numerator}/{obj.denominator}"
    return _enc_hook(obj)


def to_json_dict(msg: Message) -> dict[str, Any]:
    """Header fields as JSON-ready builtins (Fractions as ``"num/den"``), no version, no payload
    bytes. An :class:`Obs` is flattened: ``kind`` first, then its fields and its payload's."""
    if msg.PAYLOAD_PARTS:
        msg = msgspec.structs.replace(msg, data=None)
    out: dict[str, Any] = msgspec.to_builtins(msg, enc_hook=_json_hook)
    out.pop("v", None)
    out.pop("data", None)
    if isinstance(msg, Obs):
        payload = out.pop("payload")
        return {"kind": payload.pop("kind"), **out, **payload}
    return out


def payload_fields(payload: Payload) -> dict[str, Any]:
    """A payload's fields as JSON-ready builtins, without its ``kind`` tag."""
    out: dict[str, Any] = msgspec.to_builtins(payload, enc_hook=_json_hook)
    out.pop("kind", None)
    return out
