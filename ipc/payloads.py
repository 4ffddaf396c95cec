"""Typed observation payloads: what each extractor kind saw, as msgspec Structs.

An :class:`~momentbus.ipc.schema.Obs` carries exactly one payload; the payload's ``kind`` tag
(``face``, ``pose``, ``gesture``, ``quality``, ``speech``) says which. Every field is declared with
its type, unit and range, and decoding checks them all (in C, see ``bench/schema.py``), so a rule
never sees a mistyped or out-of-range value.

Units: coordinates are normalised to the frame (x / width, y / height; landmarks of a face or hand
cut by the frame edge may lie slightly outside [0, 1]); angles in degrees; scores in [0, 1]; times
are ``t_ns`` (int ns, source clock).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Union

import msgspec
from msgspec import Meta, Struct

from .vocab import EMOTIONS, HAND_LANDMARKS, Gesture, Handedness

#: A score, probability or fraction in [0, 1].
Unit = Annotated[float, Meta(ge=0.0, le=1.0, description="in [0, 1]")]
#: A normalised coordinate: [0, 1] inside the frame; landmarks may lie a little outside it (a
#: face cut by the edge), never more than a frame away.
Coord = Annotated[float, Meta(ge=-1.0, le=2.0, description="normalised, frame = [0, 1]")]
#: MediaPipe's landmark depth, relative to the wrist, in the units of x (model card).
Depth = Annotated[float, Meta(ge=-10.0, le=10.0)]
Degrees = Annotated[float, Meta(ge=-180.0, le=180.0, description="degrees")]
#: Event time in ns on the source clock. +-2^62 ns is +-146 years: room for any clock while every
#: sum of two times still fits an int64 (numpy, FFmpeg).
TimeNs = Annotated[int, Meta(ge=-(1 << 62), le=1 << 62, description="ns, source clock")]
NonNegInt = Annotated[int, Meta(ge=0, le=(1 << 62))]

#: Coordinates are clamped to this range before they are sent (see :data:`Coord`).
COORD_MIN: Final = -1.0
COORD_MAX: Final = 2.0


class Point2(Struct, array_like=True, frozen=True, gc=False):
    """A normalised image point; on the wire ``[x, y]``."""

    x: Coord
    y: Coord


class Point3(Struct, array_like=True, frozen=True, gc=False):
    """A normalised image point with MediaPipe's relative depth; on the wire ``[x, y, z]``."""

    x: Coord
    y: Coord
    z: Depth


class Keypoint(Struct, array_like=True, frozen=True, gc=False):
    """A body keypoint: normalised position and visibility in [0, 1]; ``[x, y, visibility]``."""

    x: Coord
    y: Coord
    visibility: Unit


class Box(Struct, array_like=True, frozen=True, gc=False):
    """A box clipped to the frame, normalised: ``[x0, y0, x1, y1]`` with ``x0 <= x1``."""

    x0: Unit
    y0: Unit
    x1: Unit
    y1: Unit

    def __post_init__(self) -> None:
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise ValueError("box corners out of order (x1 < x0 or y1 < y0)")


class Expression(Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """Probabilities of the 7 basic emotions (FER2013 classes), each in [0, 1], summing to 1."""

    angry: Unit = 0.0
    disgust: Unit = 0.0
    fear: Unit = 0.0
    happy: Unit = 0.0
    sad: Unit = 0.0
    surprise: Unit = 0.0
    neutral: Unit = 0.0

    def score(self, emotion: str) -> float:
        """The probability of ``emotion`` (one of :data:`~momentbus.ipc.vocab.EMOTIONS`)."""
        value: float = getattr(self, emotion)
        return value


assert Expression.__struct_fields__ == EMOTIONS, "Expression fields follow vocab.EMOTIONS"


class Face(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One face.

    ``landmarks``: the 5 key points (:data:`~momentbus.ipc.vocab.FACE_KEYPOINTS` order);
    ``dense_landmarks``: the backend's dense set (106 for insightface 2d106det, 478 for
    MediaPipe Face Mesh, none if disabled); ``yaw``/``pitch``/``roll``: head pose, degrees
    (yaw > 0 turning toward the image's right); ``expression``: ``None`` when the expression
    model is off; ``area_ratio``: box area / frame area.
    """

    track_id: NonNegInt
    box: Box
    score: Unit
    landmarks: Annotated[list[Point2], Meta(min_length=5, max_length=5)]
    dense_landmarks: Annotated[list[Point2], Meta(max_length=1024)] = []
    yaw: Degrees = 0.0
    pitch: Degrees = 0.0
    roll: Degrees = 0.0
    expression: Expression | None = None
    area_ratio: Unit = 0.0


class Person(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One person: 17 COCO keypoints (:data:`~momentbus.ipc.vocab.COCO_KEYPOINTS` order) and
    whether each hand is raised (wrist above its shoulder, the person's own sides)."""

    box: Box
    score: Unit
    keypoints: Annotated[list[Keypoint], Meta(min_length=17, max_length=17)]
    left_hand_raised: bool = False
    right_hand_raised: bool = False


class Hand(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One hand: the person's own ``handedness``, 21 landmarks (MediaPipe hand topology) and the
    gesture label with its score."""

    handedness: Handedness
    handedness_score: Unit = 1.0
    landmarks: Annotated[list[Point3], Meta(min_length=HAND_LANDMARKS,
                                            max_length=HAND_LANDMARKS)]
    gesture: Gesture = "none"
    score: Unit = 0.0


class Word(Struct, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=True):
    """One recognised word, ``[t_ns, t_end_ns]`` on the source clock."""

    word: Annotated[str, Meta(max_length=256)]
    t_ns: TimeNs
    t_end_ns: TimeNs
    probability: Unit = 1.0

    def __post_init__(self) -> None:
        if self.t_end_ns < self.t_ns:
            raise ValueError("word ends before it starts")


# ---------------------------------------------------------------------------- payloads


class Payload(Struct, frozen=True, kw_only=True, tag_field="kind",
              forbid_unknown_fields=True):
    """Base of the per-kind payloads; ``KIND`` is the wire tag (the extractor kind)."""

    KIND: ClassVar[str] = ""


class Faces(Payload, frozen=True, kw_only=True, tag="face"):
    """The faces seen in one frame (an empty list: looked, found none). ``generation``: the
    frame's (a live source's connection; 0 for a file): tracks end at a new one."""

    KIND: ClassVar[str] = "face"

    faces: Annotated[list[Face], Meta(max_length=256)] = []
    generation: NonNegInt = 0


class Persons(Payload, frozen=True, kw_only=True, tag="pose"):
    """The people seen in one frame."""

    KIND: ClassVar[str] = "pose"

    persons: Annotated[list[Person], Meta(max_length=256)] = []


class Hands(Payload, frozen=True, kw_only=True, tag="gesture"):
    """The hands seen in one frame, with their gestures."""

    KIND: ClassVar[str] = "gesture"

    hands: Annotated[list[Hand], Meta(max_length=16)] = []


class QualityReading(Payload, frozen=True, kw_only=True, tag="quality"):
    """Image quality of one frame: ``blur`` (variance of the Laplacian of the gray image, higher
    is sharper, >= 0), ``brightness`` and ``contrast`` (mean and std of gray, [0, 1]),
    ``clipped_dark``/``clipped_bright`` (fractions of pixels <= 2 / >= 253) and ``gate`` (usable
    for analysis by the extractor's own thresholds)."""

    KIND: ClassVar[str] = "quality"

    blur: Annotated[float, Meta(ge=0.0, le=1e9)] = 0.0
    brightness: Unit = 0.0
    contrast: Unit = 0.0
    clipped_dark: Unit = 0.0
    clipped_bright: Unit = 0.0
    gate: bool = True


class SpeechSegment(Payload, frozen=True, kw_only=True, tag="speech"):
    """One speech segment: it starts at the Obs's ``t_ns`` and ends at ``t_end_ns``; ``words``
    carry their own times; ``final``: the text will not be revised."""

    KIND: ClassVar[str] = "speech"

    t_end_ns: TimeNs = 0
    text: Annotated[str, Meta(max_length=100_000)] = ""
    words: Annotated[list[Word], Meta(max_length=20_000)] = []
    language: Annotated[str, Meta(max_length=16)] = ""
    final: bool = True


#: Every payload kind, keyed by its tag.
PAYLOAD_TYPES: Final[dict[str, type[Payload]]] = {
    cls.KIND: cls for cls in (Faces, Persons, Hands, QualityReading, SpeechSegment)}
assert all(cls.__struct_config__.tag == kind for kind, cls in PAYLOAD_TYPES.items())
#: The tagged union an Obs carries.
AnyPayload = Union[Faces, Persons, Hands, QualityReading, SpeechSegment]


def clamp_coord(v: float) -> float:
    """``v`` clamped to the :data:`Coord` range and rounded to 5 decimals (1e-5 of a 4K frame
    is 0.04 px): extractors call this so that what they send always decodes."""
    return round(min(COORD_MAX, max(COORD_MIN, float(v))), 5)


def clamp_unit(v: float, digits: int = 5) -> float:
    """``v`` clamped to [0, 1] and rounded."""
    return round(min(1.0, max(0.0, float(v))), digits)


def to_builtins(payload: Payload) -> dict[str, object]:
    """The payload as JSON-ready builtins, ``kind`` first."""
    out: dict[str, object] = msgspec.to_builtins(payload)
    return out
