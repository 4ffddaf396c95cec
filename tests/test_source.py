"""The file source on real media: exact timestamps from pts/time_base, gap-free seqs, audio."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from momentbus.media import AUDIO_RATE, FileSource
from momentbus.ipc.schema import AudioChunk, Frame
from momentbus.ipc.timebase import pts_to_ns


def test_t_ns_is_exact_pts_times_time_base(sample):
    src = FileSource(sample("WolfgangLanger_Pexels.mp4"))
    frames = [f for f in src.items() if isinstance(f, Frame)]
    src.close()
    assert [f.seq for f in frames] == list(range(len(frames))) and len(frames) == 472
    assert frames[0].time_base == Fraction(1, 24000)
    for f in frames:
        assert f.t_ns == pts_to_ns(f.pts, f.time_base)
    # 23.976 fps: frame n at n * 1001/24000 s exactly, no float drift after 471 frames
    assert frames[471].pts == 471 * 1001
    assert frames[471].t_ns == round(471 * 1001 * 10**9 / 24000)


def test_lazy_frames_convert_to_the_same_pixels_on_demand(sample):
    eager = FileSource(sample("WolfgangLanger_Pexels.mp4"))
    lazy = FileSource(sample("WolfgangLanger_Pexels.mp4"))
    pairs = zip((f for f in eager.items() if isinstance(f, Frame)),
                (f for f in lazy.items(lazy=True) if isinstance(f, Frame)))
    for i, (a, b) in enumerate(pairs):
        assert callable(b.data)
        assert (b.seq, b.pts, b.t_ns, b.width, b.height) == (a.seq, a.pts, a.t_ns, a.width,
                                                              a.height)
        if i % 5 == 0:  # converted or not, frame by frame: the next read does not wait on it
            assert np.array_equal(b.data(), a.data)
        if i == 60:
            break
    eager.close()
    lazy.close()


def test_vfr_file_keeps_its_real_timestamps(sample):
    src = FileSource(sample("face_noface.mov"))
    frames = [f for f in src.items() if isinstance(f, Frame)]
    src.close()
    deltas = {b.pts - a.pts for a, b in zip(frames, frames[1:])}
    assert len(deltas) > 1, "variable frame durations are preserved, not resampled"
    assert all(b.t_ns > a.t_ns for a, b in zip(frames, frames[1:]))


def test_audio_chunks_are_sample_accurate_and_contiguous(sample):
    src = FileSource(sample("WolfgangLanger_Pexels.mp4"))
    chunks = [c for c in src.items(audio=True) if isinstance(c, AudioChunk)]
    src.close()
    assert chunks and all(c.sample_rate == AUDIO_RATE and c.channels == 1 for c in chunks)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    for a, b in zip(chunks, chunks[1:]):
        assert b.pts == a.pts + a.n_samples, "no gap, no overlap between chunks"
        assert b.t_ns == pts_to_ns(b.pts, Fraction(1, AUDIO_RATE))
    total_s = sum(c.n_samples for c in chunks) / AUDIO_RATE
    assert abs(total_s - 19.69) < 0.1
