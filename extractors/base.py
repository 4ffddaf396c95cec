"""The extractor contract: one method, plus optional ``flush`` and a declared lateness.

A backend only computes. The runner process (:mod:`momentbus.extractors.runner`) owns sockets,
credits, heartbeats, watermarks, timing records and error handling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from ..ipc.schema import AudioChunk, Frame


class ExtractorError(Exception):
    """Base class of extractor errors."""


class ModelLoadError(ExtractorError, RuntimeError):
    """A model file is missing, fails its hash check, or cannot be loaded."""


class UnknownExtractorError(ExtractorError, KeyError):
    """No extractor of that kind/backend is registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


#: One observation's worth of result: ``(seq, t_ns, payload)``.
Result = tuple[int, int, dict[str, Any]]


class Extractor(ABC):
    """Turns one frame (or audio chunk) into the payload of one observation.

    Subclasses set ``kind`` (the Obs kind), ``stream`` (``"video"`` or ``"audio"``) and
    ``max_lateness_ns`` (how far behind its input it may still emit; 0 for per-frame kinds).
    """

    kind: ClassVar[str]
    stream: ClassVar[str] = "video"
    max_lateness_ns: ClassVar[int] = 0

    @abstractmethod
    def process(self, item: Frame | AudioChunk) -> dict[str, Any]:
        """The Obs payload fields for ``item`` (e.g. ``{"faces": [...]}``).

        An empty result (``{"faces": []}``) means *looked, found nothing* and is always emitted.
        """

    def flush(self) -> list[Result]:
        """At end of stream: remaining ``(seq, t_ns, payload)`` results. Default: none."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release models and native resources."""


class StreamingExtractor(Extractor):
    """An extractor whose results lag its input (speech segments end after a pause).

    :meth:`process` returns zero or more finished results; :attr:`watermark_ns` is the time up
    to which every result has been returned (nothing will ever come at or before it).
    """

    watermark_ns: int = -1

    @abstractmethod
    def process(self, item: Frame | AudioChunk) -> list[Result]:  # type: ignore[override]
        """Finished results so far (possibly none)."""


ExtractorFactory = Callable[..., Extractor]

#: kind -> backend -> factory(**options). Explicit registration, no import-time discovery.
_REGISTRY: dict[str, dict[str, tuple[str, str]]] = {
    "quality": {"opencv": ("momentbus.extractors.quality", "QualityExtractor")},
    "face": {"insightface": ("momentbus.extractors.face", "InsightFaceExtractor"),
             "mediapipe": ("momentbus.extractors.face_mediapipe", "MediaPipeFaceExtractor")},
    "pose": {"mediapipe": ("momentbus.extractors.pose", "MediaPipePoseExtractor"),
             "ultralytics": ("momentbus.extractors.pose_yolo", "YoloPoseExtractor")},
    "gesture": {"mediapipe": ("momentbus.extractors.gesture", "MediaPipeGestureExtractor")},
    "speech": {"faster-whisper": ("momentbus.extractors.speech", "FasterWhisperExtractor"),
               "whispercpp": ("momentbus.extractors.speech", "WhisperCppExtractor")},
}
DEFAULT_BACKENDS: dict[str, str] = {"quality": "opencv", "face": "insightface",
                                    "pose": "mediapipe", "gesture": "mediapipe",
                                    "speech": "faster-whisper"}


def backends(kind: str) -> list[str]:
    return sorted(_REGISTRY.get(kind, {}))


def stream_of(kind: str) -> str:
    """The input stream a kind reads: ``"audio"`` for speech, else ``"video"``."""
    return "audio" if kind == "speech" else "video"


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def build(kind: str, backend: str | None = None, **options: Any) -> Extractor:
    """Build the extractor ``kind`` with ``backend`` (default per kind).

    Raises:
        UnknownExtractorError: unknown kind or backend.
        ModelLoadError: the backend's model cannot be loaded.
    """
    if kind not in _REGISTRY:
        raise UnknownExtractorError(f"unknown extractor kind {kind!r} (known: {', '.join(kinds())})")
    backend = backend or DEFAULT_BACKENDS[kind]
    if backend not in _REGISTRY[kind]:
        raise UnknownExtractorError(f"unknown {kind} backend {backend!r} "
                                    f"(known: {', '.join(sorted(_REGISTRY[kind]))})")
    import importlib

    import inspect

    module_name, class_name = _REGISTRY[kind][backend]
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ExtractorError(f"the {kind} backend {backend!r} takes no option "
                                 f"{', '.join(unknown)}")
    extractor: Extractor = cls(**options)
    return extractor
