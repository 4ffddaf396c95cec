"""Fusion on real media through `momentbus run`: cuts in VFR files, a spoken phrase, a killed
extractor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from helpers import momentbus_cmd, mux_call_into_video, run_momentbus, wait_for_trace

pytestmark = pytest.mark.slow


def scene_cut_s(path: Path) -> float:
    """Ground truth independent of any face model: the first frame whose mean absolute
    difference to the previous one jumps (a hard cut), at its pts time."""
    from momentbus.media import FileSource

    src = FileSource(path)
    prev = None
    try:
        for f in src.items():
            g = f.image().astype(np.int16).mean(axis=2)
            if prev is not None and np.abs(g - prev).mean() > 50:
                return f.t_ns / 1e9
            prev = g
    finally:
        src.close()
    raise AssertionError("no cut")


@pytest.mark.parametrize("name,rule", [("face_noface.mov", "face_out"),
                                       ("noface_face.mov", "face_in")])
def test_face_leaving_or_entering_fires_at_the_cut(sample, tmp_path, name, rule):
    video = sample(name)
    out = tmp_path / "out"
    proc = run_momentbus("run", str(video), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    trigs = [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]
    assert [t["rule"] for t in trigs] == [rule]
    cut = scene_cut_s(video)
    assert abs(trigs[0]["t_event_ns"] / 1e9 - cut) <= 0.2, (trigs[0]["t_event_ns"], cut)


def test_a_phrase_in_real_speech_fires_at_its_word_time(sample, tmp_path):
    video = tmp_path / "call.mkv"
    mux_call_into_video(str(sample("WolfgangLanger_Pexels.mp4")), str(sample("sample.wav")),
                        str(video), Fraction(5, 2))
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "chicago"\nkind = "speech_phrase"\n'
                     'phrase = "originally from Chicago"\ncooldown = "1s"\npre_roll = "1s"\n'
                     'post_roll = "1s"\n')
    out = tmp_path / "out"
    proc = run_momentbus("run", str(video), "--out", str(out), "--extractors", "speech",
                         "--rules", str(rules), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    trigs = [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]
    # said twice (STM: Sheila 14.444-17.769 s, Diane 17.789-20.113 s), 2.7 s apart
    assert len(trigs) == 2, trigs
    for trig, (start, end) in zip(trigs, [(14.444, 17.769), (17.789, 20.113)]):
        t = trig["t_event_ns"] / 1e9 - 2.5
        assert start - 0.6 <= t <= end + 0.6, (t, start, end)
        words = [e["values"]["word"] for e in trig["evidence"]]
        assert [w.lower().strip(".,") for w in words] == ["originally", "from", "chicago"]
    sidecars = [json.loads(p.read_text()) for p in sorted((out / "clips").glob("*.json"))]
    # the first window overlaps the video (an mp4), the second lies after its last frame (the
    # call runs on past the video): an audio clip
    assert [m["audio_only"] for m in sidecars] == [False, True]


def test_killed_extractor_is_absent_within_the_idle_timeout_and_others_keep_firing(sample,
                                                                                  tmp_path):
    video = sample("WolfgangLanger_Pexels.mp4")
    out = tmp_path / "out"
    proc = subprocess.Popen(momentbus_cmd("run", str(video), "--out", str(out), "--quiet",
                                          "--restart-budget", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)}, start_new_session=True)
    trace = out / "trace.jsonl"
    joins = wait_for_trace(proc, trace, lambda r: r["record"] == "member"
                           and r["component"] == "daemon" and r.get("event") == "join"
                           and r.get("group") == "quality")
    wait_for_trace(proc, trace, lambda r: r["record"] == "timing"
                   and r["component"] == "extractor:face#1" and r.get("seq", 0) >= 30)
    pid = joins[0]["pid"]
    killed_at = time.time_ns()
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert "extractor-quality died" in stdout
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    idle = [r for r in records if r["record"] == "member" and r.get("event") == "idle"
            and r.get("member") == "extractor:quality#1"]
    assert idle, "fusion traced the absence"
    assert (idle[0]["wall_ns"] - killed_at) / 1e9 <= 2.0 + 0.5
    # the smile rule (gated by quality) still fired, listing quality as missing
    trigs = [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]
    smile = [t for t in trigs if t["rule"] == "smile"]
    assert smile and smile[0]["missing"] == ["quality"]
    assert not [r for r in records if r["record"] == "error" and r["component"] != "run"
                and "quality" not in r["component"]]

