"""One extractor in-process on a file: what ``momentbus extract KIND SOURCE`` prints, and the
library's :func:`extract_file`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..ipc.sampling import FpsSampler
from ..ipc.schema import AudioChunk, Frame, Obs
from ..media import FileSource
from .base import Extractor, build, check_kind, stream_of
from .stamping import ObsStamper


def extract_file(kind: str, path: str | os.PathLike[str], backend: str | None = None,
                 fps: float | None = None, extractor: Extractor | None = None,
                 **options: Any) -> Iterator[Obs]:
    """Run one extractor on a file, in this process; yield its observations in event-time order.

    Each :class:`~momentbus.ipc.schema.Obs` is what the extractor process would send fusion
    (group ``kind``, component ``extract:KIND``, the same watermarks), so the output can be fed
    to an :class:`~momentbus.fusion.aligner.Aligner` directly. ``fps`` samples video on the same
    event-time grid as the frame bus (``None``: every frame).

    Raises:
        SourceError: the file is missing, not media, or lacks the stream the kind reads.
        ExtractorError: unknown kind/backend, or its model cannot be loaded.
    """
    check_kind(kind)
    stream = stream_of(kind)
    with FileSource(path, require_video=stream == "video") as src:
        ex = extractor or build(kind, backend, **options)
        sampler = FpsSampler(fps)
        stamper = ObsStamper(src.info.source_id, kind, f"extract:{kind}")
        try:
            for item in src.items(audio=stream == "audio"):
                if stream == "video":
                    if not isinstance(item, Frame) or not sampler(item.t_ns):
                        continue
                elif not isinstance(item, AudioChunk):
                    continue
                observations, _ = stamper.stamp(ex.process(item), ex.watermark_after(item))
                yield from observations
            observations, _ = stamper.stamp(ex.flush(), stamper.watermark_ns)
            yield from observations
        finally:
            if extractor is None:
                ex.close()
