"""One extractor in-process on a file: what ``momentbus extract KIND SOURCE`` prints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..daemon.source import FileSource
from ..ipc.sampling import FpsSampler
from ..ipc.schema import AudioChunk, Frame
from .base import Extractor, StreamingExtractor, build, stream_of


def extract_file(kind: str, path: str, backend: str | None = None, fps: float | None = None,
                 extractor: Extractor | None = None, **options: Any) -> Iterator[dict[str, Any]]:
    """Yield one Obs dict (``kind``, ``source_id``, ``seq``, ``t_ns`` + the kind's payload) per
    processed frame, or per speech segment, in order.

    Raises:
        SourceError: the file is missing, not media, or lacks the stream the kind reads.
        ExtractorError: unknown kind/backend, or its model cannot be loaded.
    """
    stream = stream_of(kind)
    src = FileSource(path, require_video=stream == "video")
    ex = extractor or build(kind, backend, **options)
    sampler = FpsSampler(fps)
    head = {"kind": kind, "source_id": src.info.source_id}
    try:
        for item in src.items(audio=stream == "audio"):
            if stream == "video":
                if not isinstance(item, Frame) or not sampler(item.t_ns):
                    continue
            elif not isinstance(item, AudioChunk):
                continue
            out = ex.process(item)
            if isinstance(ex, StreamingExtractor):
                for seq, t_ns, payload in out:
                    yield {**head, "seq": seq, "t_ns": t_ns, **payload}
            else:
                yield {**head, "seq": item.seq, "t_ns": item.t_ns, **out}
        for seq, t_ns, payload in ex.flush():
            yield {**head, "seq": seq, "t_ns": t_ns, **payload}
    finally:
        src.close()
        if extractor is None:
            ex.close()
