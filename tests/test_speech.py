"""Speech on a real recording: transcript quality, word times, and the source clock."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest

from momentbus.extractors.base import ModelLoadError, build
from momentbus.extractors.offline import extract_file

from helpers import mux_call_into_video

pytestmark = pytest.mark.slow

OFFSET_S = Fraction(5, 2)  # where the call starts inside the muxed video


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def wer(ref: list[str], hyp: list[str]) -> tuple[float, list[tuple[int, int]]]:
    """Word error rate (Levenshtein over words) and the aligned (ref index, hyp index) matches."""
    d = np.zeros((len(ref) + 1, len(hyp) + 1), int)
    d[:, 0] = range(len(ref) + 1)
    d[0, :] = range(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1,
                          d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs, i, j = [], len(ref), len(hyp)
    while i and j:
        if d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] == hyp[j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return d[-1, -1] / len(ref), pairs[::-1]


@pytest.fixture(scope="module")
def call(sample):
    """(reference words with their STM segment times, the extractor's segments on the wav)."""
    ref: list[tuple[str, float, float]] = []
    for line in sample("sample.stm").read_text().splitlines():
        _file, _ch, _spk, start, end, *text = line.split()
        ref += [(w, float(start), float(end)) for w in words_of(" ".join(text))]
    segments = list(extract_file("speech", str(sample("sample.wav"))))
    return ref, segments


def test_transcript_word_error_rate(call):
    ref, segments = call
    hyp = [w for s in segments for w in words_of(s.payload.text)]
    rate, _ = wer([w for w, _, _ in ref], hyp)
    assert rate <= 0.30, f"WER {rate:.2f}"


def test_word_times_match_the_reference(call):
    ref, segments = call
    hyp = [(w, word.t_ns / 1e9) for s in segments for word in s.payload.words
           for w in words_of(word.word)]
    _, pairs = wer([w for w, _, _ in ref], [w for w, _ in hyp])
    assert len(pairs) >= 0.7 * len(ref)
    for i, j in pairs:
        word, t = hyp[j]
        # a repeated word ("I ... I") can align to either occurrence at equal cost: accept the
        # same word up to 3 reference positions away
        spans = [(s, e) for w, s, e in ref[max(0, i - 3):i + 4] if w == word]
        assert any(s - 0.6 <= t <= e + 0.6 for s, e in spans), \
            f"{word!r} at {t:.2f} s, reference {spans}"


def test_segments_are_final_ordered_and_well_formed(call):
    _, segments = call
    assert segments and all(s.payload.final and s.payload.language == "en" for s in segments)
    starts = [s.t_ns for s in segments]
    assert starts == sorted(starts)
    for s in segments:
        assert s.t_ns <= s.payload.t_end_ns
        for w in s.payload.words:
            assert s.t_ns - 1 <= w.t_ns <= w.t_end_ns <= s.payload.t_end_ns + 1
            assert 0 <= w.probability <= 1


def test_the_same_speech_muxed_at_an_offset_comes_out_shifted_by_exactly_it(call, sample, tmp_path):
    _, on_wav = call
    muxed = tmp_path / "talking.mkv"
    mux_call_into_video(str(sample("WolfgangLanger_Pexels.mp4")), str(sample("sample.wav")),
                        str(muxed), OFFSET_S)
    on_video = list(extract_file("speech", str(muxed)))
    shift = int(OFFSET_S * 1_000_000_000)
    assert [s.payload.text for s in on_video] == [s.payload.text for s in on_wav]
    assert [s.t_ns - shift for s in on_video] == [s.t_ns for s in on_wav]
    assert [w.t_ns - shift for s in on_video for w in s.payload.words] == \
        [w.t_ns for s in on_wav for w in s.payload.words]


def test_whispercpp_needs_a_model_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MOMENTBUS_WHISPERCPP_MODEL", raising=False)
    with pytest.raises(ModelLoadError, match="ggml model file"):
        build("speech", "whispercpp")
    with pytest.raises(ModelLoadError, match="not found"):
        build("speech", "whispercpp", model=str(tmp_path / "ggml-missing.bin"))
    bogus = tmp_path / "ggml-bogus.bin"
    bogus.write_bytes(b"not a ggml model" * 64)
    with pytest.raises(ModelLoadError, match="cannot load"):
        build("speech", "whispercpp", model=str(bogus))


def test_faster_whisper_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="model.bin"):
        build("speech", "faster-whisper", model=str(tmp_path))


def test_a_reconnect_transcribes_what_was_buffered_and_counts_from_the_new_audio(sample):
    """A live source's reconnect: the call's first half as generation 1, its second half as
    generation 2 one minute later on the clock. Every segment falls inside the half it was
    spoken in (nothing straddles the outage), the second half's times count from its own first
    sample."""
    from momentbus.media import FileSource
    from msgspec.structs import replace

    with FileSource(str(sample("sample.wav")), require_video=False) as src:
        chunks = list(src.items(audio=True))
    half = len(chunks) // 2
    gap_ns = 60_000_000_000
    second_t0 = chunks[half].t_ns + gap_ns
    stream = ([replace(c, generation=1) for c in chunks[:half]]
              + [replace(c, generation=2, t_ns=c.t_ns + gap_ns) for c in chunks[half:]])
    first_end = chunks[half].t_ns
    speech = build("speech")
    results = [r for c in stream for r in speech.process(c)] + speech.flush()
    assert results
    before = [r for r in results if r.t_ns < first_end]
    after = [r for r in results if r.t_ns >= second_t0]
    assert len(before) + len(after) == len(results), "no segment in the outage"
    assert before and after
    assert all(r.payload.t_end_ns <= first_end for r in before), "flushed at the reconnect"
    last = second_t0 + sum(c.n_samples for c in chunks[half:]) * 62_500
    assert all(second_t0 <= r.t_ns <= r.payload.t_end_ns <= last for r in after)
