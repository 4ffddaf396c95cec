"""Typed observations for tests on synthetic timelines (the payloads extractors would send)."""

from __future__ import annotations

from momentbus.ipc.payloads import (Box, Expression, Face, Faces, Hand, Hands, Keypoint, Person,
                                    Persons, Point2, Point3, QualityReading, SpeechSegment, Word)
from momentbus.ipc.schema import Obs

FIVE_POINTS = [Point2(0.4, 0.4), Point2(0.5, 0.4), Point2(0.45, 0.5), Point2(0.42, 0.6),
               Point2(0.48, 0.6)]


def a_face(track_id: int = 1, *, happy: float | None = 0.05, yaw: float = 0.0,
           area: float = 0.1, box: Box | None = None, score: float = 0.9) -> Face:
    """One face; ``happy`` sets the expression (the rest of the mass on neutral), ``None``
    leaves the expression out."""
    expression = None
    if happy is not None:
        expression = Expression(happy=happy, neutral=round(max(0.0, 1 - happy), 4))
    return Face(track_id=track_id, box=box or Box(0.3, 0.2, 0.6, 0.7), score=score,
                landmarks=FIVE_POINTS, yaw=yaw, expression=expression, area_ratio=area)


def obs(group: str, seq: int, t: int, payload, *, component: str | None = None,
        wm: int | None = None, source_id: str = "s", latency_ns: int = 0) -> Obs:
    return Obs(source_id=source_id, group=group, component=component or f"extractor:{group}#1",
               seq=seq, t_ns=t, watermark_ns=t if wm is None else wm, payload=payload,
               latency_ns=latency_ns)


def face_obs(seq: int, t: int, faces: list[Face], **kw) -> Obs:
    return obs(kw.pop("group", "face"), seq, t, Faces(faces=faces), **kw)


def quality_obs(seq: int, t: int, *, gate: bool = True, blur: float | None = None,
                brightness: float = 0.5, **kw) -> Obs:
    reading = QualityReading(blur=(300.0 if gate else 5.0) if blur is None else blur,
                             brightness=brightness, contrast=0.2, gate=gate)
    return obs(kw.pop("group", "quality"), seq, t, reading, **kw)


def keypoints(**overrides: tuple[float, float, float]) -> list[Keypoint]:
    """17 COCO keypoints at the centre, visible; ``right_wrist=(x, y, v)`` overrides one."""
    from momentbus.ipc.vocab import COCO

    kps = [Keypoint(0.5, 0.5, 0.9)] * 17
    for name, (x, y, v) in overrides.items():
        kps[COCO[name]] = Keypoint(x, y, v)
    return kps


def pose_obs(seq: int, t: int, kps: list[Keypoint], **kw) -> Obs:
    person = Person(box=Box(0, 0, 1, 1), score=0.9, keypoints=kps, right_hand_raised=True)
    return obs(kw.pop("group", "pose"), seq, t, Persons(persons=[person]), **kw)


def a_hand(gesture: str = "none", *, handedness: str = "right", wrist_x: float = 0.5,
           score: float = 0.9) -> Hand:
    landmarks = [Point3(wrist_x, 0.5, 0.0)] + [Point3(0.5, 0.5, 0.0)] * 20
    return Hand(handedness=handedness, landmarks=landmarks, gesture=gesture, score=score)


def gesture_obs(seq: int, t: int, hands: list[Hand], **kw) -> Obs:
    return obs(kw.pop("group", "gesture"), seq, t, Hands(hands=hands), **kw)


def speech_obs(seq: int, words: list[tuple[str, int]], word_ns: int = 300_000_000,
               **kw) -> Obs:
    """A final segment of ``(word, t_ns)``, each word ``word_ns`` long."""
    ws = [Word(word=w, t_ns=t, t_end_ns=t + word_ns, probability=0.9) for w, t in words]
    segment = SpeechSegment(t_end_ns=ws[-1].t_end_ns, text=" ".join(w for w, _ in words),
                            words=ws, language="en", final=True)
    return obs(kw.pop("group", "speech"), seq, ws[0].t_ns, segment,
               wm=kw.pop("wm", ws[0].t_ns - 1), **kw)
