"""Pose extractor on MediaPipe Pose (BlazePose GHUM, 33 landmarks) mapped to the 17 COCO keypoints."""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from ..ipc.payloads import Box, Keypoint, Person, Persons, clamp_coord, clamp_unit
from ..ipc.schema import Frame
from ..ipc.vocab import (COCO_KEYPOINTS, LEFT_SHOULDER, LEFT_WRIST, RIGHT_SHOULDER, RIGHT_WRIST,
                         VISIBLE)
from .base import FrameExtractor, ModelLoadError

#: BlazePose landmark index of each COCO keypoint (MediaPipe Pose landmark model card: 0 nose,
#: 2/5 eye centres, 7/8 ears, 11-16 arms, 23-28 legs).
BLAZEPOSE_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
assert len(BLAZEPOSE_TO_COCO) == len(COCO_KEYPOINTS)


def hands_raised(keypoints: np.ndarray) -> tuple[bool, bool]:
    """(left, right) hand raised: the wrist visible and above its shoulder by at least a third of
    the shoulder width (image y grows downwards). ``keypoints``: 17 x [x, y, visibility]."""
    ls, rs = keypoints[LEFT_SHOULDER], keypoints[RIGHT_SHOULDER]
    lw, rw = keypoints[LEFT_WRIST], keypoints[RIGHT_WRIST]
    width = abs(ls[0] - rs[0]) or 0.1
    left = bool(lw[2] >= VISIBLE and ls[2] >= VISIBLE and lw[1] < ls[1] - width / 3)
    right = bool(rw[2] >= VISIBLE and rs[2] >= VISIBLE and rw[1] < rs[1] - width / 3)
    return left, right


def person_from_keypoints(kps: np.ndarray, box: np.ndarray | None = None,
                          score: float | None = None) -> Person:
    """One :class:`~momentbus.ipc.payloads.Person` from 17 x [x, y, visibility] (normalised);
    the box is the seen keypoints' extent and the score their mean visibility unless given."""
    kps = np.asarray(kps, dtype=np.float64)
    if box is None:
        seen = kps[kps[:, 2] >= VISIBLE]
        pts = seen if len(seen) else kps
        box = np.concatenate([pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)])
    x0, y0, x1, y1 = (clamp_unit(v) for v in box)
    left, right = hands_raised(kps)
    return Person(box=Box(x0, y0, max(x0, x1), max(y0, y1)),
                  score=clamp_unit(kps[:, 2].mean() if score is None else score, 4),
                  keypoints=[Keypoint(clamp_coord(x), clamp_coord(y), clamp_unit(v, 4))
                             for x, y, v in kps.tolist()],
                  left_hand_raised=left, right_hand_raised=right)


class MediaPipePoseExtractor(FrameExtractor):
    """One person per frame (BlazePose is single-person), 17 COCO keypoints with visibility.

    ``model_complexity=1`` is the only model in the mediapipe 0.10.21 wheel (0 and 2 are
    downloaded at run time, which fails offline). Measured here: ~20 ms a 640x360 frame
    (``bench/extractors.py``).
    """

    kind: ClassVar[str] = "pose"

    def __init__(self, min_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ModelLoadError(f"mediapipe is not installed: {e}") from None
        self.graph = mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                                            min_detection_confidence=min_confidence,
                                            min_tracking_confidence=min_confidence)

    def observe(self, frame: Frame) -> Persons:
        rgb = cv2.cvtColor(frame.image(), cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        result = self.graph.process(rgb)
        if result.pose_landmarks is None:
            return Persons(persons=[])
        lm = result.pose_landmarks.landmark
        kps = np.array([[lm[i].x, lm[i].y, lm[i].visibility] for i in BLAZEPOSE_TO_COCO])
        return Persons(persons=[person_from_keypoints(kps)])

    def close(self) -> None:
        self.graph.close()
