"""The vocabularies every process agrees on: one definition each, imported by extractors, the
wire schema and the rules alike.

Nothing here does anything; each name says where its values come from.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final, Literal, get_args

# ---------------------------------------------------------------------------- expressions

#: The 7 basic emotions in FER2013 class order (Goodfellow et al. 2013, "Challenges in
#: Representation Learning"; fer's ``emotion_labels``), which is the order of the model's outputs.
Emotion = Literal["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
EMOTIONS: Final[tuple[Emotion, ...]] = get_args(Emotion)

# ---------------------------------------------------------------------------- gestures

#: Gesture labels of the gesture extractor's rules (``none``: a hand that shows none of them).
Gesture = Literal["open_palm", "v_sign", "thumbs_up", "ok", "pointing", "fist", "none"]
GESTURES: Final[tuple[Gesture, ...]] = get_args(Gesture)
Handedness = Literal["left", "right"]

#: Landmarks per hand in MediaPipe's hand topology (wrist, then 4 per finger, thumb first).
HAND_LANDMARKS: Final = 21
#: The wrist's index among the 21 hand landmarks.
HAND_WRIST: Final = 0

# ---------------------------------------------------------------------------- body pose

#: COCO-17 keypoint order (Lin et al. 2014, "Microsoft COCO"; the person-keypoints
#: annotation): left before right, the person's own sides.
COCO_KEYPOINTS: Final[tuple[str, ...]] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO: Final[dict[str, int]] = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
LEFT_SHOULDER: Final = COCO["left_shoulder"]
RIGHT_SHOULDER: Final = COCO["right_shoulder"]
LEFT_WRIST: Final = COCO["left_wrist"]
RIGHT_WRIST: Final = COCO["right_wrist"]
#: A keypoint counts as seen at visibility >= 0.5 (MediaPipe's own drawing threshold; YOLO-pose
#: keypoint confidences are read the same way).
VISIBLE: Final = 0.5

# ---------------------------------------------------------------------------- face

#: The 5 key face landmarks, in insightface's order (image-left eye first).
FACE_KEYPOINTS: Final[tuple[str, ...]] = ("left_eye", "right_eye", "nose", "mouth_left",
                                          "mouth_right")

# ---------------------------------------------------------------------------- audio

#: Sample rate of published audio: 16 kHz mono, the input of Whisper-family models (Radford et
#: al. 2022, "Robust Speech Recognition via Large-Scale Weak Supervision", sec. 2.2).
AUDIO_RATE: Final = 16_000
AUDIO_TIME_BASE: Final = Fraction(1, AUDIO_RATE)
#: 62 500 ns exactly: audio times are counted in samples, so they stay exact in ns.
NS_PER_SAMPLE: Final = 1_000_000_000 // AUDIO_RATE

# ---------------------------------------------------------------------------- streams and bus

#: What a frame-bus member reads: decoded video frames, audio chunks, or the source's encoded
#: packets (the clip role's live ring buffer).
Stream = Literal["video", "audio", "packets"]
STREAMS: Final[tuple[Stream, ...]] = get_args(Stream)
#: ``every``: lossless, in order, backpressure on the source; ``latest``: newest frame on credit;
#: ``auto``: ``latest`` for the video of a live source, ``every`` otherwise (the daemon decides).
Policy = Literal["every", "latest", "auto"]
#: The kind of an encoded stream.
MediaKind = Literal["video", "audio"]
#: ``raw`` BGR24 bytes, ``jpeg``, or ``shm`` (same host: pixels in the daemon's shared memory).
Encoding = Literal["raw", "jpeg", "shm"]
#: Why the frame bus did not send a recipient some seqs: its group's sampling, a newer frame
#: superseded it (``latest``), or the group had no member to take it.
GapReason = Literal["sampled", "latest", "no_member"]

#: The Eof reason the daemon sends fusion on behalf of a member it gave up waiting for (its rejoin
#: grace ran out; its items went to the rest of its group, or nobody).
MEMBER_LOST: Final = "member_lost"

# ---------------------------------------------------------------------------- names

#: Group and source names: letters, digits, ``_ . -`` (they appear in file names and metrics).
NAME_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)


def component_name(group: str, instance: int) -> str:
    """The trace/membership name of an extractor process: ``extractor:GROUP#INSTANCE``."""
    return f"extractor:{group}#{instance}"


def group_of_component(component: str) -> str | None:
    """``GROUP`` from ``extractor:GROUP#N``; ``None`` for any other name."""
    if not component.startswith("extractor:") or "#" not in component:
        return None
    group = component[len("extractor:"):].rsplit("#", 1)[0]
    return group if _NAME.match(group) else None
