"""Microphone source on sounddevice (PortAudio): 16 kHz mono float32 chunks, live clock.

``t_ns`` is on CLOCK_MONOTONIC: the first chunk's capture time (the callback's time minus the
buffer's duration, or PortAudio's ADC time when the device gives one), then counted in samples,
so consecutive chunks are sample-accurate and never overlap; a device overflow is reported and
the next chunk restarts from the clock (the gap is real lost audio, never hidden).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..ipc.schema import AudioChunk
from ..ipc.vocab import AUDIO_RATE, AUDIO_TIME_BASE, NS_PER_SAMPLE
from ..media import SourceError

RATE = AUDIO_RATE
TIME_BASE = AUDIO_TIME_BASE
#: 100 ms blocks: low latency for VAD, few messages (10 a second).
BLOCK = 1600
#: Blocks buffered between the audio thread and the daemon before the oldest are dropped (5 s).
QUEUE_BLOCKS = 50


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as e:  # PortAudio missing
        raise SourceError(f"microphone unavailable: {e} (install libportaudio2)") from None
    return sounddevice


class MicrophoneSource:
    """Capture from an input device.

    Args:
        device: PortAudio device index or name (``None``: the default input).
        stream_factory: builds the input stream (``sounddevice.InputStream`` by default; tests
            inject a fake with the same ``callback``/``start``/``stop``/``close`` contract).
        monotonic_ns: the live clock (injected for tests).
    """

    def __init__(self, device: int | str | None = None, source_id: str = "mic",
                 stream_factory: Callable[..., Any] | None = None,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.source_id = source_id
        self._now = monotonic_ns
        self._queue: queue.Queue[tuple[np.ndarray, int, bool]] = queue.Queue(QUEUE_BLOCKS)
        self.dropped_blocks = 0
        self.overflows = 0
        factory = stream_factory or _sounddevice().InputStream
        try:
            self.stream = factory(samplerate=RATE, channels=1, dtype="float32", blocksize=BLOCK,
                                  device=device, callback=self._callback)
        except Exception as e:  # PortAudioError, ValueError for a bad device
            raise SourceError(f"cannot open microphone {device!r}: {e}") from None
        self.seq = 0
        self._next_t_ns: int | None = None
        self._pts = 0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's audio thread: copy out, timestamp, never block."""
        captured = self._now() - frames * NS_PER_SAMPLE
        overflow = bool(status and getattr(status, "input_overflow", False))
        try:
            self._queue.put_nowait((indata[:, 0].copy(), captured, overflow))
        except queue.Full:
            self.dropped_blocks += 1

    def items(self, should_stop: Callable[[], bool] = lambda: False) -> Iterator[AudioChunk]:
        """Chunks as they are captured, until ``should_stop()``."""
        self.stream.start()
        try:
            while not should_stop():
                try:
                    samples, captured_ns, overflow = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if overflow or self._next_t_ns is None:
                    self.overflows += int(overflow)
                    t_ns = captured_ns
                    self._pts = round(t_ns / NS_PER_SAMPLE)
                else:
                    t_ns = self._next_t_ns
                self._next_t_ns = t_ns + len(samples) * NS_PER_SAMPLE
                chunk = AudioChunk(source_id=self.source_id, seq=self.seq, pts=self._pts,
                                   time_base=TIME_BASE, t_ns=t_ns, capture_wall_ns=time.time_ns(),
                                   sample_rate=RATE, channels=1, n_samples=len(samples),
                                   data=samples)
                self._pts += len(samples)
                self.seq += 1
                yield chunk
        finally:
            self.stream.stop()

    def close(self) -> None:
        self.stream.close()
