"""Face extractor on insightface SCRFD-500m, with head pose, FER expressions and track ids."""

from __future__ import annotations

import math
from typing import ClassVar

import cv2
import numpy as np

from ..ipc.payloads import Box, Expression, Face, Faces, Point2, clamp_coord, clamp_unit
from ..ipc.schema import Frame
from ..ipc.vocab import EMOTIONS
from ..tracking import IouTracker
from .base import FrameExtractor, ModelLoadError
from .models import FER_EMOTION, LANDMARK_2D106, SCRFD_500M, checked_file

#: Generic 3-D face for solvePnP, in mm, camera axes (x right, y down, z away from the camera),
#: nose tip at the origin: eye centres, nose tip, mouth corners in insightface keypoint order.
#: Adapted from the generic model of Mallick, "Head Pose Estimation using OpenCV and Dlib"
#: (LearnOpenCV, 2016), scaled by 1/10, eye corners moved to eye centres.
GENERIC_FACE_3D = np.array([
    [-16.5, -17.0, 13.5],   # left eye (image left)
    [16.5, -17.0, 13.5],    # right eye
    [0.0, 0.0, 0.0],        # nose tip
    [-15.0, 15.0, 12.5],    # left mouth corner
    [15.0, 15.0, 12.5],     # right mouth corner
], dtype=np.float64)

#: SCRFD detection threshold: insightface's default (0.5).
DET_THRESHOLD = 0.5
#: Detector input (px): SCRFD's training size, insightface's default ``det_size``.
DET_SIZE = (640, 640)
#: Expression crop: the box grown by 15 % a side, close to fer's own 10 px offsets at its
#: cascade's box sizes, square, as FER2013's 48x48 crops are.
EXPRESSION_MARGIN = 0.15


def head_pose(landmarks: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from 5 image landmarks (px), by solvePnP on
    :data:`GENERIC_FACE_3D` with a pinhole camera of focal length = image width.

    Signs: yaw > 0 when the face turns toward the image's right, pitch > 0 when it tilts up,
    roll > 0 when it tilts clockwise in the image. Accuracy is that of a generic face from
    5 points: about +-10 degrees, enough for head-turn triggers, not for gaze.
    """
    camera = np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float64)
    ok, rvec, _tvec = cv2.solvePnP(GENERIC_FACE_3D, landmarks.astype(np.float64), camera, None,
                                   flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        return 0.0, 0.0, 0.0
    rot, _ = cv2.Rodrigues(rvec)
    # Euler angles (x: pitch, y: yaw, z: roll), Tait-Bryan decomposition R = Rz Ry Rx
    sy = math.hypot(rot[0, 0], rot[1, 0])
    pitch = math.degrees(math.atan2(rot[2, 1], rot[2, 2]))
    yaw = math.degrees(math.atan2(-rot[2, 0], sy))
    roll = math.degrees(math.atan2(rot[1, 0], rot[0, 0]))
    pitch = (pitch + 180) % 360 - 180
    return -yaw, -pitch, roll


class ExpressionModel:
    """fer's FER2013 CNN (tflite) on LiteRT: 7 emotion probabilities for one face crop."""

    def __init__(self, threads: int = 1) -> None:
        path = checked_file(*FER_EMOTION)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ModelLoadError(f"ai-edge-litert is not installed: {e}") from None
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self.size = int(self._in["shape"][1])

    def __call__(self, gray_face: np.ndarray) -> Expression:
        x = cv2.resize(gray_face, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = ((x.astype(np.float32) / 255.0) - 0.5) * 2.0  # fer's preprocessing
        self.interpreter.set_tensor(self._in["index"], x.reshape(self._in["shape"]))
        self.interpreter.invoke()
        p = self.interpreter.get_tensor(self._out["index"]).reshape(-1).astype(np.float64)
        p = np.clip(p, 0.0, None)
        p = p / p.sum() if p.sum() > 0 else np.full(len(EMOTIONS), 1 / len(EMOTIONS))
        return Expression(**{name: clamp_unit(v, 4) for name, v in zip(EMOTIONS, p)})


class InsightFaceExtractor(FrameExtractor):
    """Faces per frame: SCRFD-500m boxes and 5 landmarks (insightface), 106 dense landmarks
    (insightface 2d106det), head pose from the 5 landmarks, the 7 FER expression scores, and IoU
    track ids.

    Measured here: ~20 ms a 640x360 frame on one core, +0.5 ms a face for the expression.

    Raises (constructor):
        ModelLoadError: a model file is missing or fails its hash check.
    """

    kind: ClassVar[str] = "face"

    def __init__(self, det_threshold: float = DET_THRESHOLD, threads: int = 1,
                 expressions: bool = True, dense_landmarks: bool = True) -> None:
        path = checked_file(*SCRFD_500M)
        try:
            import onnxruntime
            from insightface.model_zoo.scrfd import SCRFD
        except ImportError as e:  # pragma: no cover - declared dependencies
            raise ModelLoadError(f"insightface/onnxruntime not installed: {e}") from None
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # idle pool threads sleep instead of spinning: a spinning pool burns the cores the run's
        # other processes need (face alone with 2 threads: 86 ms of CPU a frame, measured)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                               providers=["CPUExecutionProvider"])
        self.detector = SCRFD(model_file=str(path), session=session)
        self.detector.prepare(ctx_id=-1, input_size=DET_SIZE, det_thresh=det_threshold)
        self.landmarker = None
        if dense_landmarks:
            from insightface.model_zoo.landmark import Landmark

            lpath = checked_file(*LANDMARK_2D106)
            lsession = onnxruntime.InferenceSession(str(lpath), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])
            self.landmarker = Landmark(model_file=str(lpath), session=lsession)
        self.expression = ExpressionModel(threads) if expressions else None
        self.tracker = IouTracker()

    def observe(self, frame: Frame) -> Faces:
        img = frame.image()
        h, w = img.shape[:2]
        boxes, kpss = self.detector.detect(img, input_size=DET_SIZE, max_num=0)
        if boxes is None or len(boxes) == 0:
            self.tracker.update(np.zeros((0, 4)), frame.t_ns, frame.generation)
            return Faces(faces=[], generation=frame.generation)
        ids = self.tracker.update(boxes[:, :4], frame.t_ns, frame.generation)
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if self.expression else None
        faces = []
        for box, kps, track_id in zip(boxes, kpss, ids):
            dense = None
            if self.landmarker is not None:
                from insightface.app.common import Face as InsightFace

                dense = self.landmarker.get(img, InsightFace(bbox=box[:4], kps=kps))[:, :2]
            faces.append(face_record(track_id, box[:4], float(box[4]), kps, w, h, gray,
                                     self.expression, dense))
        return Faces(faces=faces, generation=frame.generation)


def points(pixels: np.ndarray, w: int, h: int) -> list[Point2]:
    """``(n, 2)`` pixel coordinates as normalised, clamped points."""
    return [Point2(clamp_coord(x / w), clamp_coord(y / h)) for x, y in pixels[:, :2].tolist()]


def face_record(track_id: int, box: np.ndarray, score: float, kps: np.ndarray, w: int, h: int,
                gray: np.ndarray | None, expression: ExpressionModel | None,
                dense: np.ndarray | None = None) -> Face:
    """One :class:`~momentbus.ipc.payloads.Face` from a pixel box, its 5 pixel landmarks, the
    gray frame (for the expression) and optional dense pixel landmarks ``(n, 2)``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    yaw, pitch, roll = head_pose(kps, w, h)
    expr = None
    if gray is not None and expression is not None:
        crop = _square_crop(gray, x0, y0, x1, y1, EXPRESSION_MARGIN)
        expr = expression(crop) if crop.size else None
    return Face(
        track_id=int(track_id),
        box=Box(clamp_unit(x0 / w), clamp_unit(y0 / h),
                max(clamp_unit(x0 / w), clamp_unit(x1 / w)),
                max(clamp_unit(y0 / h), clamp_unit(y1 / h))),
        score=clamp_unit(score, 4),
        landmarks=points(np.asarray(kps, dtype=np.float64), w, h),
        dense_landmarks=points(np.asarray(dense, dtype=np.float64), w, h)
        if dense is not None else [],
        yaw=round(yaw, 2), pitch=round(pitch, 2), roll=round(roll, 2),
        expression=expr,
        area_ratio=clamp_unit(max(0.0, (x1 - x0) * (y1 - y0)) / (w * h)),
    )


def _square_crop(gray: np.ndarray, x0: float, y0: float, x1: float, y1: float,
                 margin: float) -> np.ndarray:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    h, w = gray.shape
    a0, b0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    a1, b1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    return gray[b0:b1, a0:a1]
