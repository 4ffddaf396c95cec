"""Face tracks: greedy IoU association of boxes across observations, in event time.

Two users. Each face extractor process tracks what it sees (its own ids, per process). Fusion
tracks each face **group** again, over all its members' observations in event-time order,
before any rule sees them (:class:`GroupTracks`, called by the aligner). That is what makes
several processes of one kind (``face:2``: each sees every other frame) give the ids, and so
the triggers, of one process: per-process ids would differ between the processes (each
counts its own tracks) and break a track whenever one process went a second without frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from msgspec.structs import replace

from .ipc.payloads import Faces
from .ipc.schema import Obs

#: A detection joins the track whose last box overlaps it most, if IoU >= 0.3; a track unseen
#: for 1 s of event time ends (a face hidden longer gets a new id).
TRACK_IOU = 0.3
TRACK_MAX_AGE_NS = 1_000_000_000

BoxLike = Sequence[float]


@dataclass
class _Track:
    track_id: int
    box: Any
    last_t_ns: int


@dataclass
class IouTracker:
    """Greedy IoU association of boxes across frames (event time, not frame count).

    Boxes are ``[x0, y0, x1, y1]`` in any one unit (pixels or normalised: IoU does not change
    when both axes are scaled). A live source's reconnect (a new ``generation``) is a cut: what
    comes after is another moment, so every track ends there and the faces after it get new ids
    (ids never repeat), and the rules judge them afresh (an expression's baseline is per track).
    """

    min_iou: float = TRACK_IOU
    max_age_ns: int = TRACK_MAX_AGE_NS
    tracks: list[_Track] = field(default_factory=list)
    next_id: int = 1
    generation: int = 0

    def update(self, boxes: Sequence[BoxLike] | Any, t_ns: int, generation: int = 0) -> list[int]:
        """The track id of each box (``(n, 4)``) seen at ``t_ns``, in the boxes' order."""
        if generation != self.generation:
            self.tracks = []
            self.generation = generation
        self.tracks = [t for t in self.tracks if t_ns - t.last_t_ns <= self.max_age_ns]
        ids = [0] * len(boxes)
        pairs = sorted(((iou(b, t.box), i, j) for i, b in enumerate(boxes)
                        for j, t in enumerate(self.tracks)), reverse=True)
        used_d, used_t = set(), set()
        for overlap, i, j in pairs:
            if overlap < self.min_iou or i in used_d or j in used_t:
                continue
            used_d.add(i)
            used_t.add(j)
            self.tracks[j].box = boxes[i]
            self.tracks[j].last_t_ns = t_ns
            ids[i] = self.tracks[j].track_id
        for i, b in enumerate(boxes):
            if i not in used_d:
                self.tracks.append(_Track(self.next_id, b, t_ns))
                ids[i] = self.next_id
                self.next_id += 1
        return ids


def iou(a: BoxLike | Any, b: BoxLike | Any) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (0 when both are empty)."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class GroupTracks:
    """Fusion's face tracks: one :class:`IouTracker` per group, fed every face observation of
    the group in event-time order (the aligner calls :meth:`retrack` once the group's watermark
    has passed the observation), whichever member sent it."""

    def __init__(self) -> None:
        self.trackers: dict[str, IouTracker] = {}

    @staticmethod
    def wants(obs: Obs) -> bool:
        return isinstance(obs.payload, Faces)

    def retrack(self, obs: Obs) -> Obs:
        """``obs`` with the group's track ids (the same object when they are unchanged)."""
        payload = obs.payload
        if not isinstance(payload, Faces):
            return obs
        tracker = self.trackers.setdefault(obs.group, IouTracker())
        boxes = [(f.box.x0, f.box.y0, f.box.x1, f.box.y1) for f in payload.faces]
        ids = tracker.update(boxes, obs.t_ns, payload.generation)
        if all(f.track_id == i for f, i in zip(payload.faces, ids)):
            return obs
        faces = [replace(f, track_id=i) for f, i in zip(payload.faces, ids)]
        return replace(obs, payload=replace(payload, faces=faces))
