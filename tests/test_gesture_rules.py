"""Gesture rules on hand landmarks from real frames of the sample video.

The fixtures are MediaPipe Hands landmarks of her right hand at her face (3-9 s), every 24th
frame. Where a test needs a gesture the video does not show, it re-poses the real hand: the
palm (wrist and knuckles) stays as measured and the fingers are straightened along, or folded
into, the real palm.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from momentbus.extractors.gesture import FINGERS, THUMB, WRIST, classify_gesture

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "hands_wolfganglanger.json").read_text())
W, H = 640, 360


def real(seq: int) -> np.ndarray:
    return np.array(next(f["landmarks"] for f in FIXTURES if f["seq"] == seq))


def pixels(lm: np.ndarray) -> np.ndarray:
    p = lm.copy()
    p[:, 0] *= W
    p[:, 1] *= H
    p[:, 2] *= W
    return p


def normalised(p: np.ndarray) -> np.ndarray:
    lm = p.copy()
    lm[:, 0] /= W
    lm[:, 1] /= H
    lm[:, 2] /= W
    return lm


def pose_hand(seq: int, extended: set[str], thumb: str) -> np.ndarray:
    """The real hand of frame ``seq`` with the named fingers straight, the others folded;
    ``thumb``: "out" (sideways from the palm), "up" (out, with the whole hand turned so the
    thumb points to the top of the image, as in a real thumbs-up), "in" (folded), or "touch"
    (tip on the index tip)."""
    p = pixels(real(seq))
    wrist = p[WRIST]
    palm = np.linalg.norm(p[FINGERS["middle"][0]] - wrist)
    for name, (mcp, pip, dip, tip) in FINGERS.items():
        u = (p[mcp] - wrist) / np.linalg.norm(p[mcp] - wrist)
        if name in extended:
            for j, k in zip((pip, dip, tip), (0.45, 0.75, 1.0)):
                p[j] = p[mcp] + u * palm * k
        else:  # curled into the palm: joints back toward the wrist
            for j, k in zip((pip, dip, tip), (0.25, 0.4, 0.5)):
                p[j] = p[mcp] + (wrist - p[mcp]) * k
    cmc = p[THUMB[0]]
    side = p[FINGERS["index"][0]] - p[FINGERS["pinky"][0]]
    side /= np.linalg.norm(side)
    if thumb in ("out", "up"):
        d = side
    else:
        d = (p[FINGERS["middle"][0]] - cmc) / np.linalg.norm(p[FINGERS["middle"][0]] - cmc)
    for j, k in zip(THUMB[1:], (0.3, 0.55, 0.8)):
        p[j] = cmc + d * palm * (k if thumb != "in" else k * 0.5)
    if thumb == "touch":
        p[THUMB[3]] = p[FINGERS["index"][3]] + np.array([2.0, 2.0, 0.0])
    lm = normalised(p)
    if thumb == "up":  # turn the hand so the thumb's direction points up (-y)
        lm = rotate(lm, np.degrees(np.arctan2(-1.0, 0.0) - np.arctan2(side[1], side[0])))
    return lm


def rotate(lm: np.ndarray, degrees: float) -> np.ndarray:
    p = pixels(lm)
    c = p[WRIST, :2].copy()
    a = np.radians(degrees)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    p[:, :2] = (p[:, :2] - c) @ r.T + c
    return normalised(p)


def test_real_hand_with_four_fingers_extended_is_never_a_fist_or_pointing():
    for seq in (96, 120, 144, 168, 192, 216):
        label, _ = classify_gesture(real(seq), W, H)
        assert label in ("open_palm", "none"), (seq, label)


def test_real_half_curled_hand_at_the_mouth_is_not_an_open_palm():
    label, score = classify_gesture(real(72), W, H)
    assert label not in ("open_palm", "v_sign"), label


@pytest.mark.parametrize("extended,thumb,expected", [
    ({"index", "middle", "ring", "pinky"}, "out", "open_palm"),
    (set(), "in", "fist"),
    (set(), "up", "thumbs_up"),
    ({"index"}, "in", "pointing"),
    ({"index", "middle"}, "in", "v_sign"),
    ({"middle", "ring", "pinky"}, "touch", "ok"),
])
@pytest.mark.parametrize("seq", [96, 144, 216])
def test_reposed_real_hands_get_their_gesture(seq, extended, thumb, expected):
    label, score = classify_gesture(pose_hand(seq, extended, thumb), W, H)
    assert label == expected
    assert score > 0.5


@pytest.mark.parametrize("degrees", [-60, -25, 30, 90, 180])
@pytest.mark.parametrize("gesture", [({"index", "middle"}, "in", "v_sign"),
                                     ({"index"}, "in", "pointing"),
                                     (set(), "in", "fist")])
def test_labels_do_not_depend_on_in_plane_rotation(gesture, degrees):
    extended, thumb, expected = gesture
    label, _ = classify_gesture(rotate(pose_hand(144, extended, thumb), degrees), W, H)
    assert label == expected


def test_thumbs_up_needs_the_thumb_pointing_up():
    upside_down = rotate(pose_hand(144, set(), "up"), 180)
    assert classify_gesture(upside_down, W, H)[0] == "fist"
