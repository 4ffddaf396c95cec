"""Image quality: sharpness, exposure and a gate, with OpenCV on a downscaled gray image."""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from ..ipc.payloads import QualityReading
from ..ipc.schema import Frame
from .base import FrameExtractor

#: Analysis width (px). Blur and exposure are measured on a 320-px-wide gray proxy: cost stays
#: constant across resolutions, and the variance of the Laplacian at a fixed scale is comparable
#: between sources.
ANALYSIS_WIDTH = 320
#: Gate thresholds. Sharpness: variance of the Laplacian on the 320-px gray proxy (the focus
#: measure of Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield microscopy"). The
#: threshold is our measurement on the sample videos (every 10th frame): sharp frames have a
#: median of 290-450 (min 303 on the two webcam clips); the same frames blurred by a 9x9 box
#: filter at source resolution give 15-42; flat frames (black, a cartoon title) 2-25.
#: Exposure: mean gray outside [0.08, 0.92] or more than half the pixels clipped is unusable.
MIN_BLUR = 50.0
MIN_BRIGHTNESS = 0.08
MAX_BRIGHTNESS = 0.92
MAX_CLIPPED = 0.5


class QualityExtractor(FrameExtractor):
    """Per-frame quality: ``blur`` (variance of the Laplacian), ``brightness``/``contrast`` (mean
    and std of gray in [0, 1]), ``clipped_dark``/``clipped_bright`` (fractions of pixels <= 2 and
    >= 253) and ``gate`` (all within the thresholds above)."""

    kind: ClassVar[str] = "quality"

    def __init__(self, min_blur: float = MIN_BLUR) -> None:
        self.min_blur = min_blur

    def observe(self, frame: Frame) -> QualityReading:
        img = frame.image()
        h, w = img.shape[:2]
        if w > ANALYSIS_WIDTH:
            img = cv2.resize(img, (ANALYSIS_WIDTH, max(1, round(h * ANALYSIS_WIDTH / w))),
                             interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        blur = float(cv2.Laplacian(gray, cv2.CV_64F).var())
        mean, std = cv2.meanStdDev(gray)
        hist = np.bincount(gray.reshape(-1), minlength=256)
        n = gray.size
        clipped_dark = float(hist[:3].sum() / n)
        clipped_bright = float(hist[253:].sum() / n)
        brightness = float(mean[0, 0] / 255.0)
        gate = (blur >= self.min_blur and MIN_BRIGHTNESS <= brightness <= MAX_BRIGHTNESS
                and clipped_dark + clipped_bright <= MAX_CLIPPED)
        return QualityReading(blur=blur, brightness=brightness,
                              contrast=min(1.0, float(std[0, 0] / 255.0)),
                              clipped_dark=clipped_dark, clipped_bright=clipped_bright,
                              gate=bool(gate))
