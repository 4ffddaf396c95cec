"""Bad input: a clear one-line error and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from helpers import run_momentbus


def _assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("momentbus: error:")
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_file(tmp_path):
    proc = run_momentbus("run", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "no such file")


def test_text_file_renamed_mp4(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are my notes, not a video\n" * 20)
    proc = run_momentbus("run", str(fake), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "not a readable media file")


def test_truncated_mp4(tmp_path, sample):
    data = sample("WolfgangLanger_Pexels.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    proc = run_momentbus("run", str(cut), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "truncated")


def test_no_video_stream(tmp_path):
    import av
    import numpy as np

    wav = tmp_path / "tone.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    proc = run_momentbus("run", str(wav), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "no video stream")


def test_bad_rules_file_names_the_line(tmp_path, sample):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "x"\nkind = "no_such_kind"\n')
    proc = run_momentbus("rules", "check", str(rules))
    _assert_one_line_error(proc, "no_such_kind", ":2:")


@pytest.mark.parametrize("args", [["extractor", "nosuchkind", "--daemon", "ipc:///tmp/x",
                                   "--fusion", "ipc:///tmp/y"]])
def test_unknown_extractor_kind(args):
    proc = run_momentbus(*args, timeout=60)
    _assert_one_line_error(proc, "unknown extractor kind")


def test_unknown_extractor_kind_in_run(tmp_path, sample):
    proc = run_momentbus("run", str(sample("single_face.mp4")), "--out", str(tmp_path / "o"),
                         "--extractors", "face,telepathy", timeout=60)
    _assert_one_line_error(proc, "telepathy", "known:")
