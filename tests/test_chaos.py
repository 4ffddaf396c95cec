"""Faults injected into real runs on the sample video: nothing is lost.

For each fault the bar is the clean run's: exit 0, the same (rule, t_event_ns) triggers, a clip
with its sidecar for each, no late observation, and no process left behind. Faults are injected
at ~40 % of the file (the face extractor past frame 190 of 472), found in the trace, never after
a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from helpers import momentbus_cmd, processes_mentioning, wait_for_trace

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

AT_40_PERCENT = 190  # frame seq of the sample (472 frames)


def triggers(out: Path) -> list[tuple[str, int]]:
    return [(t["rule"], t["t_event_ns"]) for t in
            (json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines())]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()
            if line.endswith("}")]


def assert_nothing_lost(out: Path, clean: list[tuple[str, int]]) -> None:
    got = triggers(out)
    assert got == clean, "the same triggers as a clean run"
    sidecars = [json.loads(p.read_text()) for p in sorted((out / "clips").glob("*.json"))]
    assert sorted((m["trig"]["rule"], m["trig"]["t_event_ns"]) for m in sidecars) == sorted(clean)
    for meta in sidecars:
        assert (out / "clips" / meta["clip"]).stat().st_size > 0
    trace = records(out)
    assert not [r for r in trace if r["record"] == "late_obs"], "nothing late"
    assert not processes_mentioning(str(out)), "no process left behind"


@pytest.fixture(scope="module")
def video(sample):
    return sample("WolfgangLanger_Pexels.mp4")


@pytest.fixture(scope="module")
def clean(video, tmp_path_factory) -> list[tuple[str, int]]:
    """The reference: one process a kind (``--workers 1``). The faulty runs plan their workers
    (two face processes on two cores), so each also checks that ``face:2`` loses nothing."""
    out = tmp_path_factory.mktemp("clean") / "out"
    proc = subprocess.run(momentbus_cmd("run", str(video), "--out", str(out), "--quiet",
                                        "--workers", "1"),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert triggers(out), "the clean run fires"
    return triggers(out)


def start_run(video: Path, out: Path, tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(momentbus_cmd("run", str(video), "--out", str(out), "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)}, start_new_session=True)


def role_pid(run: subprocess.Popen[str], role: str) -> int:
    """The pid of a role process of ``run`` (``fusion``, ``clip``, ``daemon``,
    ``extractor face``: its first instance)."""
    argvs = {c.pid: " ".join(c.cmdline())
             for c in psutil.Process(run.pid).children(recursive=True)}
    found = [pid for pid, argv in argvs.items() if f"momentbus {role}" in argv
             and (not role.startswith("extractor") or "--instance 1 " in argv)]
    assert len(found) == 1, f"{role}: {found}"
    return found[0]


def at_40_percent(run: subprocess.Popen[str], out: Path) -> None:
    wait_for_trace(run, out / "trace.jsonl", lambda r: r["record"] == "timing"
                   and r["component"] == "extractor:face#1"
                   and r.get("seq", 0) >= AT_40_PERCENT)


def finish(run: subprocess.Popen[str]) -> tuple[str, str]:
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    return stdout, stderr


@pytest.mark.parametrize("role", ["fusion", "daemon", "extractor face"])
def test_sigkill_of_a_role_at_40_percent_loses_nothing(role, video, clean, tmp_path):
    out = tmp_path / "out"
    run = start_run(video, out, tmp_path)
    at_40_percent(run, out)
    os.kill(role_pid(run, role), signal.SIGKILL)
    _, stderr = finish(run)
    assert "restart 1/3" in stderr, "the supervisor restarted it"
    assert_nothing_lost(out, clean)


def test_sigkill_of_the_clip_role_while_it_has_a_trigger_loses_nothing(video, clean, tmp_path):
    out = tmp_path / "out"
    run = start_run(video, out, tmp_path)
    wait_for_trace(run, out / "trace.jsonl", lambda r: r["record"] == "trigger")
    os.kill(role_pid(run, "clip"), signal.SIGKILL)  # the TRIG is sent, maybe not yet cut
    _, stderr = finish(run)
    assert "clip crashed" in stderr
    assert_nothing_lost(out, clean)


def test_a_stalled_extractor_loses_nothing(video, clean, tmp_path):
    """SIGSTOP for 8 s (past the frame bus's 5 s member timeout and fusion's 2 s idleness),
    then SIGCONT: it rejoins and catches up; nothing goes on without it."""
    out = tmp_path / "out"
    run = start_run(video, out, tmp_path)
    at_40_percent(run, out)
    face = role_pid(run, "extractor face")
    os.kill(face, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # the stall is seen: the daemon drops the member (5 s), fusion traces it idle (2 s)
        wait_for_trace(run, out / "trace.jsonl", lambda r: r["record"] == "member"
                       and r.get("event") == "leave" and r.get("reason") == "timeout")
        while time.monotonic() - stopped_at < 8.0:  # the stall lasts 8 s, as the issue asks
            try:
                run.wait(8.0 - (time.monotonic() - stopped_at))
            except subprocess.TimeoutExpired:
                pass
    finally:
        os.kill(face, signal.SIGCONT)
    finish(run)
    assert_nothing_lost(out, clean)
    trace = records(out)
    idle = [r for r in trace if r["record"] == "member" and r.get("event") == "idle"
            and r.get("member") == "extractor:face#1"]
    assert idle and idle[0]["holding"] is True, "traced, but still holding on a file"


def test_roles_by_hand_survive_a_daemon_killed_and_restarted(video, clean, tmp_path):
    """Each role started by hand over tcp on loopback: the daemon is killed at 40 % and started
    again with the same --state; the extractors rejoin it within 2 s and the job completes."""
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    frames, obs, clip = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    state = tmp_path / "daemon.state"
    groups = "face,quality"
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        trace = logs / f"{name}.jsonl"
        proc = subprocess.Popen(momentbus_cmd(*args, "--trace-file", str(trace)),
                                stdout=subprocess.DEVNULL,
                                stderr=open(logs / f"{name}.log", "ab"), start_new_session=True)
        procs[name] = proc
        return proc

    daemon_args = ("daemon", str(video), "--bind", frames, "--fusion", obs, "--expect", groups,
                   "--state", str(state))
    try:
        start("clip", "clip", str(video), "--bind", clip, "--out", str(out))
        start("fusion", "fusion", "--bind", obs, "--clip", clip, "--out", str(out),
              "--expect", groups)
        for kind in ("face", "quality"):
            start(kind, "extractor", kind, "--daemon", frames, "--fusion", obs, "--fps", "10")
        first = start("daemon", *daemon_args)
        wait_for_trace(first, logs / "face.jsonl", lambda r: r["record"] == "timing"
                       and r.get("seq", 0) >= AT_40_PERCENT)
        first.kill()
        first.wait(30)
        restarted_at = time.time_ns()
        second = start("daemon2", *daemon_args)
        joins = wait_for_trace(second, logs / "daemon2.jsonl", lambda r: r["record"] == "member"
                               and r.get("event") == "join" and r.get("group") == "quality")
        joins += wait_for_trace(second, logs / "daemon2.jsonl", lambda r: r["record"] == "member"
                                and r.get("event") == "join" and r.get("group") == "face")
        for name in ("daemon2", "face", "quality", "fusion", "clip"):
            assert procs[name].wait(240) == 0, (logs / f"{name}.log").read_text()[-2000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    daemon2 = [json.loads(line) for line in (logs / "daemon2.jsonl").read_text().splitlines()]
    resume = [r for r in daemon2 if r["record"] == "source" and r.get("event") == "resume"]
    assert resume and resume[0]["video_seq"] > 0, "the restarted daemon resumed, not restarted"
    listening = next(r["wall_ns"] for r in daemon2 if r["record"] == "source")
    rejoined = max(r["wall_ns"] for r in joins)
    assert (rejoined - listening) / 1e9 < 2.0, "the extractors rejoined within 2 s"
    assert listening > restarted_at
    assert triggers(out) == clean
    assert len(list((out / "clips").glob("*.json"))) == len(clean)
    late = [line for name in ("fusion",) for line in
            (logs / f"{name}.jsonl").read_text().splitlines() if '"late_obs"' in line]
    assert not late



def test_a_flood_of_malformed_messages_at_every_end_loses_nothing(video, clean, tmp_path):
    """10,000 seeded malformed messages at the daemon's frame bus, fusion and the clip role
    while the job runs: no process dies, the triggers are the clean run's, every bad message is
    counted."""
    import random

    import zmq

    from fuzz_messages import malformed
    from momentbus.ipc import sockets

    out = tmp_path / "out"
    run = start_run(video, out, tmp_path)
    wait_for_trace(run, out / "trace.jsonl", lambda r: r["record"] == "timing"
                   and r["component"] == "extractor:face#1")
    [rundir] = [p for p in tmp_path.iterdir() if p.name.startswith("momentbus-")]
    rng = random.Random(20261121)
    sent = {"frames": 0, "obs": 0, "clip": 0}
    targets = {name: sockets.connect(zmq.DEALER, f"ipc://{rundir}/{name}", hwm=0)
               for name in sent}
    try:
        for i in range(10_000):
            name = ("frames", "obs", "clip")[i % 3]
            targets[name].send_multipart(malformed(rng, reliable=name != "frames"))
            sent[name] += 1
    finally:
        for sock in targets.values():
            sock.close(2000)
    _, stderr = finish(run)
    assert "crashed" not in stderr, stderr[-2000:]
    assert triggers(out) == clean
    counted: dict[str, int] = {}
    for r in records(out):
        if r["record"] == "bad_message" and "counts" in r:
            counted[r["component"]] = counted.get(r["component"], 0) + sum(r["counts"].values())
    assert counted.get("daemon") == sent["frames"]
    assert counted.get("fusion") == sent["obs"]
    assert counted.get("clip") == sent["clip"]


def test_two_processes_of_one_kind_are_two_members_of_one_group(video, clean, tmp_path):
    """`--extractors face,face` used to make both `extractor:face#1` and lose every trigger:
    they are instances 1 and 2 of group face, sharing its frames (`every`), and fire exactly
    the triggers of one face process (the clean run)."""
    out = tmp_path / "out"
    proc = subprocess.run(momentbus_cmd("run", str(video), "--out", str(out), "--quiet",
                                        "--extractors", "face,face,quality"),
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_nothing_lost(out, clean)
    timing = [r for r in records(out) if r["record"] == "timing" and "process_ms" in r]
    by_member = {c: sorted(r["seq"] for r in timing if r["component"] == c)
                 for c in ("extractor:face#1", "extractor:face#2")}
    assert by_member["extractor:face#1"] and by_member["extractor:face#2"], "both took frames"
    assert not set(by_member["extractor:face#1"]) & set(by_member["extractor:face#2"])


def test_a_member_that_joins_while_fusion_is_down_is_never_late(video, clean, tmp_path):
    """Fusion must know a member before the daemon gives it a frame.

    Roles by hand. face#1 and quality run; fusion is stopped (SIGSTOP) and a second face
    process starts. Fusion is then killed, which loses whatever face#2 had sent it, and
    restarted with --resume while face#2 is held (SIGSTOP), so face#1's resent backlog reaches
    the new fusion first. Before the fix face#2 joined the daemon at once and took every other
    frame; the new fusion, knowing only face#1, released the face group past them, and face#2's
    observations were late (what CI once caught at random in the fusion SIGKILL test above).
    Now face#2 joins the frame bus only once fusion has acknowledged its Hello.
    """
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    frames, obs, clip = (f"ipc://{tmp_path}/{name}" for name in ("f", "o", "c"))
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(momentbus_cmd(*args, "--trace-file", str(logs / f"{name}.jsonl")),
                                stdout=subprocess.DEVNULL,
                                stderr=open(logs / f"{name}.log", "ab"), start_new_session=True)
        procs[name] = proc
        return proc

    def face(instance: int) -> tuple[str, ...]:
        return ("extractor", "face", "--daemon", frames, "--fusion", obs, "--fps", "10",
                "--instance", str(instance))

    fusion_args = ("fusion", "--bind", obs, "--clip", clip, "--out", str(out),
                   "--expect", "face,quality")
    try:
        start("clip", "clip", str(video), "--bind", clip, "--out", str(out))
        fusion = start("fusion", *fusion_args)
        daemon = start("daemon", "daemon", str(video), "--bind", frames, "--fusion", obs,
                       "--expect", "face,quality")
        start("quality", "extractor", "quality", "--daemon", frames, "--fusion", obs,
              "--fps", "10")
        face1 = start("face1", *face(1))
        wait_for_trace(face1, logs / "face1.jsonl", lambda r: r["record"] == "timing")
        fusion.send_signal(signal.SIGSTOP)
        face2 = start("face2", *face(2))
        # face#2 either took a frame (before the fix) or waits for fusion's acknowledgement
        hit = wait_for_trace(face2, logs / "face2.jsonl", lambda r: r["record"] == "timing"
                             or r.get("event") == "waiting_for_fusion")[0]
        if hit["record"] == "timing":  # before the fix: face#1 goes past face#2's first frame
            wait_for_trace(face1, logs / "face1.jsonl", lambda r: r["record"] == "timing"
                           and r["seq"] > hit["seq"])
        fusion.kill()
        fusion.wait(30)
        face2.send_signal(signal.SIGSTOP)
        backlog = {member: max(r["seq"] for r in records_of(logs / f"{name}.jsonl")
                               if r["record"] == "timing")
                   for member, name in (("extractor:face#1", "face1"),
                                        ("extractor:quality#1", "quality"))}
        fusion = start("fusion2", *fusion_args, "--resume")
        for member, seq in backlog.items():  # what face#1 and quality did reaches fusion first
            wait_for_trace(fusion, logs / "fusion2.jsonl",
                           lambda r, m=member, s=seq: r.get("stage") == "fusion_in"
                           and r["member"] == m and r["seq"] >= s)
        face2.send_signal(signal.SIGCONT)
        for name in ("daemon", "face1", "face2", "quality", "fusion2", "clip"):
            assert procs[name].wait(240) == 0, (logs / f"{name}.log").read_text()[-2000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)
    assert triggers(out) == clean
    assert len(list((out / "clips").glob("*.json"))) == len(clean)
    late = [r for name in ("fusion", "fusion2") for r in records_of(logs / f"{name}.jsonl")
            if r["record"] == "late_obs"]
    assert not late
    face2_frames = [r["seq"] for r in records_of(logs / "face2.jsonl") if r["record"] == "timing"]
    assert face2_frames, "face#2 joined and took frames once fusion was back"
    assert daemon.returncode == 0


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
