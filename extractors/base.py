"""The extractor contract: one method returning results, plus ``flush`` and a declared lateness.

A backend only computes. The runner process (:mod:`momentbus.extractors.runner`) and the
in-process :func:`~momentbus.extractors.offline.extract_file` own sockets, credits, heartbeats,
watermarks, timing records and error handling, and treat every extractor the same way:

1. ``results = extractor.process(item)``: zero or more :class:`Result` s, each a typed payload
   at an event time (a per-frame kind returns exactly one, for the item itself; speech returns
   the segments that a pause just closed);
2. ``extractor.watermark_after(item)``: nothing will ever come at or before this time;
3. at end of stream ``extractor.flush()`` returns what is still pending.

``max_lateness_ns`` is a true bound: a result is never earlier than the latest input's time minus
it, so the runner may promise ``t - max_lateness_ns - 1`` for frames it will never process.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from ..ipc.payloads import AnyPayload
from ..ipc.schema import AudioChunk, Frame
from ..ipc.vocab import Stream


class ExtractorError(Exception):
    """Base class of extractor errors."""


class ModelLoadError(ExtractorError, RuntimeError):
    """A model file is missing, fails its hash check, or cannot be loaded."""


class UnknownExtractorError(ExtractorError, KeyError):
    """No extractor of that kind/backend is registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class Result(NamedTuple):
    """One observation's worth of result: the input's ``seq`` it came from, its event time
    ``t_ns`` (a frame's time or a segment's start) and the typed payload."""

    seq: int
    t_ns: int
    payload: AnyPayload


Item = Frame | AudioChunk


class Extractor(ABC):
    """Turns frames (or audio chunks) into typed results.

    Subclasses set ``kind`` (the payload kind), ``stream`` (``"video"`` or ``"audio"``) and
    ``max_lateness_ns`` (how far behind its latest input it may still emit; 0 for per-frame
    kinds), and implement :meth:`process`.
    """

    kind: ClassVar[str]
    stream: ClassVar[Stream] = "video"
    max_lateness_ns: int = 0

    @abstractmethod
    def process(self, item: Item) -> list[Result]:
        """The results that ``item`` completed, in event-time order (possibly none).

        A per-frame kind returns one result for ``item``; an empty payload list in it means
        *looked, found nothing*, and is always returned.
        """

    def watermark_after(self, item: Item) -> int:
        """After :meth:`process` (``item``) returned, nothing more will come at or before this
        ``t_ns``. Default: ``item.t_ns - max_lateness_ns``."""
        return item.t_ns - self.max_lateness_ns

    def flush(self) -> list[Result]:
        """At end of stream: remaining results, in event-time order. Default: none."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release models and native resources."""

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameExtractor(Extractor):
    """A per-frame kind: implement :meth:`observe`, one payload per frame."""

    @abstractmethod
    def observe(self, frame: Frame) -> AnyPayload:
        """The payload for one frame."""

    def process(self, item: Item) -> list[Result]:
        if not isinstance(item, Frame):
            raise TypeError(f"the {self.kind} extractor reads video frames, got "
                            f"{type(item).__name__}")
        return [Result(item.seq, item.t_ns, self.observe(item))]


ExtractorFactory = Callable[..., Extractor]

#: kind -> backend -> (module, class). Explicit registration, no import-time discovery.
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
#: The input stream each kind reads.
STREAM_OF: dict[str, Stream] = {"quality": "video", "face": "video", "pose": "video",
                                "gesture": "video", "speech": "audio"}


def backends(kind: str) -> list[str]:
    return sorted(_REGISTRY.get(kind, {}))


def stream_of(kind: str) -> Stream:
    """The input stream a kind reads: ``"audio"`` for speech, else ``"video"``."""
    return STREAM_OF.get(kind, "video")


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def check_kind(kind: str) -> None:
    """Raises :class:`UnknownExtractorError` naming the known kinds if ``kind`` is not one."""
    if kind not in _REGISTRY:
        raise UnknownExtractorError(f"unknown extractor kind {kind!r} "
                                    f"(known: {', '.join(kinds())})")


def build(kind: str, backend: str | None = None, **options: Any) -> Extractor:
    """Build the extractor ``kind`` with ``backend`` (default per kind).

    Raises:
        UnknownExtractorError: unknown kind or backend.
        ExtractorError: an option the backend does not take.
        ModelLoadError: the backend's model cannot be loaded.
    """
    check_kind(kind)
    backend = backend or DEFAULT_BACKENDS[kind]
    if backend not in _REGISTRY[kind]:
        raise UnknownExtractorError(f"unknown {kind} backend {backend!r} "
                                    f"(known: {', '.join(sorted(_REGISTRY[kind]))})")
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
