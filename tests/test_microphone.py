"""The microphone path: the real PortAudio binding imports; capture is driven by a fake stream."""

from __future__ import annotations

import threading

import numpy as np

from momentbus.daemon.microphone import BLOCK, NS_PER_SAMPLE, MicrophoneSource


def test_sounddevice_and_portaudio_import():
    import sounddevice

    assert sounddevice.get_portaudio_version()[0] >= 1246720  # PortAudio V19


class FakeInputStream:
    """Calls the callback with blocks of a sine wave from a thread, like PortAudio does."""

    def __init__(self, *, samplerate, channels, dtype, blocksize, device, callback, blocks=12,
                 overflow_at=None):
        assert (samplerate, channels, dtype, blocksize) == (16000, 1, "float32", BLOCK)
        self.callback = callback
        self.blocks = blocks
        self.overflow_at = overflow_at
        self.done = threading.Event()
        self.started = False

    def start(self):
        self.started = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        t = np.arange(self.blocks * BLOCK) / 16000
        wave = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

        class Status:
            input_overflow = False

        for i in range(self.blocks):
            status = Status()
            status.input_overflow = i == self.overflow_at
            self.callback(wave[i * BLOCK:(i + 1) * BLOCK, None], BLOCK, None, status)
        self.done.set()

    def stop(self):
        pass

    def close(self):
        pass


def capture(n_blocks, overflow_at=None):
    # the callback's clock runs 150 ms a 100 ms block (a late, jittery audio thread): chunk
    # times must still follow the sample count, not the callback clock
    clock = iter(range(10**9, 10**12, 15 * 10**7))
    streams = []

    def factory(**kw):
        streams.append(FakeInputStream(**kw, blocks=n_blocks, overflow_at=overflow_at))
        return streams[0]

    src = MicrophoneSource(stream_factory=factory, monotonic_ns=lambda: next(clock))
    chunks = []
    for chunk in src.items(should_stop=lambda: len(chunks) >= n_blocks):
        chunks.append(chunk)
    src.close()
    return chunks


def test_chunks_are_sample_accurate_on_the_live_clock():
    chunks = capture(12)
    assert [c.seq for c in chunks] == list(range(12))
    assert chunks[0].t_ns == 10**9 - BLOCK * NS_PER_SAMPLE  # callback time minus the block
    for a, b in zip(chunks, chunks[1:]):
        assert b.t_ns == a.t_ns + a.n_samples * NS_PER_SAMPLE
        assert b.pts == a.pts + a.n_samples
    assert all(c.samples().shape == (BLOCK, 1) for c in chunks)


def test_an_overflow_restarts_the_timeline_from_the_clock():
    chunks = capture(6, overflow_at=3)
    # block 3 is stamped from its own callback time, not continued from block 2
    assert chunks[3].t_ns == 10**9 + 3 * 15 * 10**7 - BLOCK * NS_PER_SAMPLE
    assert chunks[2].t_ns == chunks[0].t_ns + 2 * BLOCK * NS_PER_SAMPLE
