"""`momentbus run` end to end on the real sample video, as separate OS processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from helpers import momentbus_cmd, processes_mentioning, run_momentbus, wait_for_trace

pytestmark = pytest.mark.slow

# The sample: a woman crying from ~1 s to ~9 s, smiling from ~9.5 s (her happy score, measured
# with `momentbus extract face`, is 0.85-1.0 from 9.5 s; tests/test_extractors_real.py).
SMILE_S = 11.0
CRYING_ENDS_S = 8.5


@pytest.fixture(scope="module")
def runs(sample, tmp_path_factory):
    """Two complete runs on the same file (determinism), each with its own TMPDIR."""
    video = sample("WolfgangLanger_Pexels.mp4")
    results = []
    for i in range(2):
        out = tmp_path_factory.mktemp(f"run{i}")
        tmpdir = tmp_path_factory.mktemp(f"tmp{i}")
        proc = run_momentbus("run", str(video), "--out", str(out / "result"), "--quiet",
                             env={"TMPDIR": str(tmpdir)})
        results.append((proc, out / "result", tmpdir))
    return results


def triggers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]


def test_run_exits_zero_by_itself_with_a_summary(runs):
    proc, out, _ = runs[0]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "frames read" in proc.stdout and "triggers" in proc.stdout
    assert "extractor:face#1" in proc.stdout


def test_smile_fires_and_its_clip_holds_the_smile(runs):
    _, out, _ = runs[0]
    trigs = [t for t in triggers(out) if t["rule_kind"] == "expression_spike"]
    assert trigs, "the expression-spike rule fired"
    hit = [t for t in trigs if t["t_start_ns"] <= SMILE_S * 1e9 <= t["t_end_ns"]]
    assert hit, f"a trigger window holds {SMILE_S} s: {trigs}"
    trig = hit[0]
    for key in ("rule", "t_event_ns", "t_start_ns", "t_end_ns", "score", "evidence"):
        assert key in trig
    assert trig["evidence"] and all({"kind", "seq", "t_ns"} <= set(e) for e in trig["evidence"])
    sidecars = sorted((out / "clips").glob("*.json"))
    assert len(sidecars) == len(triggers(out))
    meta = json.loads(sidecars[0].read_text())
    assert meta["trig"]["t_event_ns"] == trig["t_event_ns"]
    clip = out / "clips" / meta["clip"]
    # copy mode starts at the keyframe at or before the requested start
    assert meta["actual"]["t_start_ns"] <= meta["requested"]["t_start_ns"]
    assert meta["actual"]["t_end_ns"] >= min(meta["requested"]["t_end_ns"], 19.6e9)
    with av.open(str(clip)) as c:
        assert c.streams.video and c.streams.audio, "clip has video and audio"
        n = sum(1 for _ in c.decode(video=0))
        span_s = (meta["actual"]["t_end_ns"] - meta["actual"]["t_start_ns"]) / 1e9
        assert abs(n - span_s * 24000 / 1001) <= 2, "every frame of the window decodes"


def test_nothing_fires_in_the_crying_part(runs):
    _, out, _ = runs[0]
    early = [t for t in triggers(out) if t["t_event_ns"] < CRYING_ENDS_S * 1e9]
    assert not early, early


def test_two_runs_give_the_same_triggers(runs):
    a, b = (triggers(r[1]) for r in runs)
    assert runs[1][0].returncode == 0
    assert a == b


def test_trace_has_records_from_every_process(runs):
    _, out, _ = runs[0]
    records = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    components = {r["component"] for r in records}
    assert {"daemon", "fusion", "clip", "extractor:face#1", "extractor:quality#1"} <= components
    kinds = {r["record"] for r in records}
    assert {"timing", "member", "trigger", "clip", "source", "summary"} <= kinds
    timing = [r for r in records if r["record"] == "timing" and r["component"] == "extractor:face#1"]
    assert all(r["process_ms"] > 0 for r in timing)


def test_no_orphans_and_no_leftover_ipc_files(runs):
    for _, out, tmpdir in runs:
        assert not processes_mentioning(str(out)), "no child outlives the run"
        assert not processes_mentioning(str(tmpdir))
        leftovers = [p for p in Path(tmpdir).iterdir() if p.name.startswith("momentbus-")]
        assert not leftovers, "the ipc socket folder is removed"


def test_ctrl_c_stops_everything_cleanly(sample, tmp_path):
    video = sample("WolfgangLanger_Pexels.mp4")
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(momentbus_cmd("run", str(video), "--out", str(out), "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    # wait until processing really started: the trace shows a processed frame (no sleeping)
    wait_for_trace(proc, out / "trace.jsonl", lambda r: r["record"] == "timing" and "process_ms" in r)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert not processes_mentioning(str(out))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("momentbus-")]


def test_killed_extractor_is_restarted_and_the_run_still_ends(sample, tmp_path):
    video = sample("WolfgangLanger_Pexels.mp4")
    out = tmp_path / "out"
    proc = subprocess.Popen(momentbus_cmd("run", str(video), "--out", str(out), "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)}, start_new_session=True)
    trace = out / "trace.jsonl"
    joins = wait_for_trace(proc, trace, lambda r: r["record"] == "member"
                            and r["component"] == "daemon" and r.get("event") == "join"
                            and r.get("group") == "face")
    wait_for_trace(proc, trace, lambda r: r["record"] == "timing"
                    and r["component"] == "extractor:face#1" and r.get("seq", 0) >= 40)
    os.kill(joins[0]["pid"], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert "restart 1/3" in stderr
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    face_joins = [r for r in records if r["record"] == "member" and r["component"] == "daemon"
                  and r.get("event") == "join" and r.get("group") == "face"]
    assert len(face_joins) == 2, "the restarted extractor joined again"
    # the dead member is noticed by the daemon and its in-flight frames are accounted as drops
    assert any(r["record"] == "member" and r.get("event") == "leave"
               and r.get("reason") == "timeout" for r in records)
    # the run still reached the end of the file and the smile
    trigs = triggers(out)
    assert any(t["t_start_ns"] <= SMILE_S * 1e9 <= t["t_end_ns"] for t in trigs), trigs
    assert not processes_mentioning(str(out))


def test_speech_and_face_share_one_time_axis(sample, tmp_path):
    """A real call muxed into the sample video 2.5 s in: speech and face Obs on one clock."""
    from fractions import Fraction

    from helpers import mux_call_into_video

    video = tmp_path / "talking.mkv"
    mux_call_into_video(str(sample("WolfgangLanger_Pexels.mp4")), str(sample("sample.wav")),
                        str(video), Fraction(5, 2))
    out = tmp_path / "out"
    proc = run_momentbus("run", str(video), "--out", str(out), "--extractors", "face,speech",
                         "--fps", "5", "--save-obs", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    obs = [json.loads(line) for line in (out / "obs.jsonl").read_text().splitlines()]
    face = [o for o in obs if o["kind"] == "face"]
    speech = [o for o in obs if o["kind"] == "speech"]
    assert face and speech and {o["source_id"] for o in obs} == {"talking"}
    # face times are the video's own frame times: n * 1001/24000 s, as Matroska's 1 ms
    # time_base stores them
    period = 1001 / 24000 * 1e9
    assert all(abs(o["t_ns"] - round(o["t_ns"] / period) * period) <= 1e6 for o in face)
    assert face[0]["t_ns"] < 1e9 and face[-1]["t_ns"] > 19e9
    # the call's first "Hello?" is at 6.68 s of the call (STM): 9.18 s on the video's clock
    first = speech[0]["words"][0]
    assert first["word"].lower().startswith("hello")
    assert abs(first["t_ns"] / 1e9 - (6.68 + 2.5)) < 0.6
    assert speech[-1]["t_end_ns"] <= 32.6e9


def test_trace_summary_reads_a_real_run(runs):
    _, out, _ = runs[0]
    proc = run_momentbus("trace", "summary", str(out / "trace.jsonl"), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    face = summary["components"]["extractor:face#1"]
    assert face["frames"] == 197 and face["fps"] > 1
    assert 0 < face["p50_ms"] <= face["p95_ms"] <= face["p99_ms"] <= face["max_ms"]
    assert summary["frames_read"] == 472
    assert [t["rule"] for t in summary["triggers"]] == ["smile"]
    clip = summary["clips"][0]
    assert clip["actual"][0] <= clip["requested"][0]
    assert "face" in summary["sync_delays"], "quality observations waited for face"
    tables = run_momentbus("trace", "summary", str(out / "trace.jsonl"), timeout=60)
    assert tables.returncode == 0 and "sync delays by who was waited for" in tables.stdout


def test_trace_summary_works_on_a_partial_trace(runs, tmp_path):
    _, out, _ = runs[0]
    data = (out / "trace.jsonl").read_bytes()
    cut = tmp_path / "partial.jsonl"
    cut.write_bytes(data[: len(data) // 2])  # a run killed mid-write: a torn last line
    proc = run_momentbus("trace", "summary", str(cut), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["malformed_lines"] <= 1 and summary["records"] > 100


def test_trace_plot_renders_a_timeline_png(runs, tmp_path):
    _, out, _ = runs[0]
    png = tmp_path / "timeline.png"
    proc = run_momentbus("trace", "plot", str(out / "trace.jsonl"), "-o", str(png), timeout=120)
    assert proc.returncode == 0, proc.stderr
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.shape[1] >= 1000 and img.shape[0] >= 200
    # lanes are drawn: the image is not blank (many distinct colours)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
