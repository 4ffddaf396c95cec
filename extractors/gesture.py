"""Gesture extractor: MediaPipe Hands (21 landmarks + handedness) and geometric gesture rules.

No gesture-classifier model loads offline here (MediaPipe's gesture recognizer task downloads its
``.task`` file), so the label comes from rules on the landmarks: which fingers are extended,
whether the thumb tip touches the index tip, and which way the thumb points.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from ..ipc.payloads import Hand, Hands, Point3, clamp_coord, clamp_unit
from ..ipc.schema import Frame
from ..ipc.vocab import HAND_WRIST as WRIST
from ..ipc.vocab import Gesture
from .base import FrameExtractor, ModelLoadError

THUMB = (1, 2, 3, 4)  # CMC, MCP, IP, TIP (MediaPipe hand landmark topology)
FINGERS = {"index": (5, 6, 7, 8), "middle": (9, 10, 11, 12), "ring": (13, 14, 15, 16),
           "pinky": (17, 18, 19, 20)}  # MCP, PIP, DIP, TIP

#: A finger is extended when its tip is this much farther from the wrist than its PIP joint
#: (between the two clusters, with a margin to each), and
#: folded when it is nearer than ``FOLDED_RATIO`` times (in between: undecided). Measured on the
#: real hands of the sample video (tests/fixtures/hands_wolfganglanger.json): extended fingers
#: 1.17-1.45, curled ones 0.71-0.76.
EXTENDED_RATIO = 1.25
FOLDED_RATIO = 1.0
#: ``ok``: thumb tip within this fraction of the palm size (wrist to middle MCP) of the index tip.
OK_TOUCH = 0.35
#: Thumb extended: its tip farther than this many palm sizes from the index MCP.
THUMB_OUT = 0.6


def _metric(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Landmarks in a uniform metric (pixels; z scaled like x, as MediaPipe defines it)."""
    pts = np.asarray(landmarks, dtype=np.float64)[:, :3].copy()
    pts[:, 0] *= width
    pts[:, 1] *= height
    pts[:, 2] *= width
    return pts


def finger_ratios(pts: np.ndarray) -> dict[str, float]:
    """dist(wrist, tip) / dist(wrist, PIP) per finger (index..pinky)."""
    wrist = pts[WRIST]
    out = {}
    for name, (_mcp, pip, _dip, tip) in FINGERS.items():
        d_pip = np.linalg.norm(pts[pip] - wrist)
        out[name] = float(np.linalg.norm(pts[tip] - wrist) / d_pip) if d_pip > 0 else 0.0
    return out


def classify_gesture(landmarks: np.ndarray, width: int = 1,
                     height: int = 1) -> tuple[Gesture, float]:
    """(label, score) for one hand's 21 x [x, y, z] landmarks (normalised as MediaPipe gives them).

    ``score`` in [0, 1] is how decisively the fingers are extended or folded (the mean over the
    fingers the label depends on of ``|ratio - 1.125| / 0.3``, clipped): 0 for borderline hands.
    Rotation in the image plane does not change the label, except ``thumbs_up``, which needs the
    thumb to point up (image y decreasing).
    """
    pts = _metric(landmarks, width, height)
    palm = float(np.linalg.norm(pts[FINGERS["middle"][0]] - pts[WRIST])) or 1.0
    ratios = finger_ratios(pts)
    state = {n: ("ext" if r >= EXTENDED_RATIO else "fold" if r <= FOLDED_RATIO else "?")
             for n, r in ratios.items()}
    thumb_tip = pts[THUMB[3]]
    thumb_out = float(np.linalg.norm(thumb_tip - pts[FINGERS["index"][0]])) / palm >= THUMB_OUT
    thumb_up = bool(thumb_tip[1] < pts[THUMB[1]][1] - 0.3 * palm and thumb_out)
    touching = float(np.linalg.norm(thumb_tip - pts[FINGERS["index"][3]])) / palm <= OK_TOUCH
    ext = {n for n, s in state.items() if s == "ext"}
    fold = {n for n, s in state.items() if s == "fold"}
    four = set(FINGERS)

    def score(names: set[str]) -> float:
        margins = [min(1.0, abs(ratios[n] - 1.125) / 0.3) for n in names] or [0.0]
        return round(float(np.mean(margins)), 4)

    if touching and {"middle", "ring", "pinky"} <= ext:
        return "ok", score({"middle", "ring", "pinky"})
    if ext == four and thumb_out:
        return "open_palm", score(four)
    if ext == {"index", "middle"} and {"ring", "pinky"} <= fold:
        return "v_sign", score(four)
    if ext == {"index"} and {"middle", "ring", "pinky"} <= fold:
        return "pointing", score(four)
    if fold == four:
        return ("thumbs_up" if thumb_up else "fist"), score(four)
    return "none", 0.0


class MediaPipeGestureExtractor(FrameExtractor):
    """Hands per frame (up to ``max_hands``) with handedness, 21 landmarks and a gesture label.

    Handedness is the person's own hand: the legacy Hands solution labels hands as if the image
    were mirrored (a selfie), so its ``Left`` is the person's right hand in an ordinary camera
    image; we swap it. Measured here: ~19 ms a 640x360 frame.
    """

    kind: ClassVar[str] = "gesture"

    def __init__(self, max_hands: int = 2, min_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ModelLoadError(f"mediapipe is not installed: {e}") from None
        self.graph = mp.solutions.hands.Hands(static_image_mode=False, max_num_hands=max_hands,
                                              model_complexity=1,
                                              min_detection_confidence=min_confidence,
                                              min_tracking_confidence=min_confidence)

    def observe(self, frame: Frame) -> Hands:
        img = frame.image()
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        result = self.graph.process(rgb)
        hands = []
        h, w = img.shape[:2]
        for lms, handed in zip(result.multi_hand_landmarks or [], result.multi_handedness or []):
            pts = np.array([[p.x, p.y, p.z] for p in lms.landmark])
            label, score = classify_gesture(pts, w, h)
            mirrored = handed.classification[0].label.lower()
            hands.append(Hand(
                handedness="right" if mirrored == "left" else "left",
                handedness_score=clamp_unit(handed.classification[0].score, 4),
                landmarks=[Point3(clamp_coord(x), clamp_coord(y),
                                  round(max(-10.0, min(10.0, z)), 5)) for x, y, z in pts.tolist()],
                gesture=label, score=clamp_unit(score, 4)))
        return Hands(hands=hands)

    def close(self) -> None:
        self.graph.close()
