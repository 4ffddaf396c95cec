"""Optional pose backend on ultralytics YOLO-pose (install the ``yolo`` extra and give weights).

Never in the default install: ultralytics pulls torchvision, which on PyPI brings a multi-GB CUDA
stack and does not import on a CPU-only torch. Its keypoints are already COCO-17.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from ..ipc.payloads import Person, Persons
from ..ipc.schema import Frame
from .base import FrameExtractor, ModelLoadError
from .pose import person_from_keypoints


def load_yolo(weights: str | None) -> Any:
    """An ultralytics model from a weights file (``.pt``) or a model yaml (random weights).

    Raises:
        ModelLoadError: ultralytics is not installed, or no/invalid weights path.
    """
    try:
        from ultralytics import YOLO
    except ImportError:
        raise ModelLoadError("the ultralytics pose backend needs the 'yolo' extra "
                             "(pip install 'momentbus[yolo]') and a weights file") from None
    weights = weights or os.environ.get("MOMENTBUS_YOLO_POSE_WEIGHTS")
    if not weights:
        raise ModelLoadError("no YOLO-pose weights given: pass --model PATH or set "
                             "MOMENTBUS_YOLO_POSE_WEIGHTS (no weights are downloaded)")
    if not weights.endswith((".yaml", ".yml")) and not os.path.isfile(weights):
        raise ModelLoadError(f"YOLO-pose weights not found: {weights}")
    return YOLO(weights, task="pose")


def persons_from_result(result: Any) -> list[Person]:
    """People from one ultralytics ``Results`` (keypoints ``xyn`` + ``conf``, boxes ``conf``)."""
    if result.keypoints is None or result.keypoints.xyn is None:
        return []
    xyn = np.asarray(result.keypoints.xyn.cpu())
    conf = result.keypoints.conf
    conf = np.asarray(conf.cpu()) if conf is not None else np.ones(xyn.shape[:2])
    persons = []
    for k in range(xyn.shape[0]):
        kps = np.concatenate([xyn[k], conf[k][:, None]], axis=1)
        if result.boxes is not None and len(result.boxes) > k:
            persons.append(person_from_keypoints(
                kps, box=np.asarray(result.boxes.xyxyn[k].cpu(), dtype=np.float64),
                score=float(result.boxes.conf[k])))
        else:
            persons.append(person_from_keypoints(kps))
    return persons


class YoloPoseExtractor(FrameExtractor):
    """Many people per frame with YOLO-pose. ``model``: a ``.pt`` weights file the user provides
    (or a model yaml: random weights, for tests)."""

    kind: ClassVar[str] = "pose"

    def __init__(self, model: str | None = None, device: str | None = None,
                 min_confidence: float = 0.25) -> None:
        self.model = load_yolo(model)
        self.device = device
        self.min_confidence = min_confidence

    def observe(self, frame: Frame) -> Persons:
        results = self.model.predict(frame.image(), verbose=False, conf=self.min_confidence,
                                     device=self.device)
        return Persons(persons=persons_from_result(results[0]) if results else [])
