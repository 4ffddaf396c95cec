"""How `momentbus run` ends when things go wrong: damaged input, a full disk, a killed parent.

* A source with damage -> the summary names what was lost and the run exits DATA_LOSS (65),
  with the triggers and clips of what was read.
* trace.jsonl on a full disk -> the run goes on, ends with one line naming what was saved, and
  exits OUTPUT_INCOMPLETE (74). The full disk is /dev/full: every write fails with ENOSPC.
* The parent SIGKILLed -> its children exit (parent-death signal) and its socket folder goes.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from momentbus.lifecycle import ExitCode

from helpers import momentbus_cmd, processes_mentioning, run_momentbus, wait_for_trace

pytestmark = pytest.mark.slow

SMILE_S = 11.0  # inside the smile trigger's window (tests/test_run_e2e.py)
JUNK = bytes(random.Random(1).getrandbits(8) for _ in range(1000))


def spliced(src: Path, dest: Path, *, insert: bool) -> Path:
    """1,000 seeded random bytes at the middle of the file (inside the sample's mdat, which
    runs from 11 KB to its end), inserted or overwriting."""
    data = src.read_bytes()
    at = len(data) // 2
    dest.write_bytes(data[:at] + JUNK + data[at + (0 if insert else len(JUNK)):])
    return dest


def triggers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]


def test_inserted_bytes_are_reported_as_data_loss(sample, tmp_path):
    """The issue's file: every packet after the bytes is shifted and lost. The run says how
    many frames it read of how many, from when, and exits 65 instead of 0."""
    video = spliced(sample("WolfgangLanger_Pexels.mp4"), tmp_path / "inserted.mp4", insert=True)
    out = tmp_path / "out"
    proc = run_momentbus("run", str(video), "--out", str(out), "--quiet",
                         env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == ExitCode.DATA_LOSS == 65, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    m = re.search(r"data loss: (\d+) of 472 frames read; damaged ([\d.]+)-19\.68 s "
                  r"\((\d+) decode errors\)", proc.stdout)
    assert m, proc.stdout
    read, t0, errors = int(m[1]), float(m[2]), int(m[3])
    assert 200 < read < 250 and 9.0 < t0 < 9.9 and errors > 100  # bytes at 9.4 s of 19.7
    summary = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()
               if '"summary"' in line and '"daemon"' in line][0]
    assert summary["damage"]["lossy"] and summary["damage"]["frames_read"] == read


def test_overwritten_bytes_lose_a_span_and_the_rest_is_analysed(sample, tmp_path):
    """Bytes overwritten at 9.4 s: one short span is lost, every frame after it is read, the
    smile (from 9.5 s) still fires and its clip is written; the exit code still says 65."""
    video = spliced(sample("WolfgangLanger_Pexels.mp4"), tmp_path / "overwritten.mp4",
                    insert=False)
    out = tmp_path / "out"
    proc = run_momentbus("run", str(video), "--out", str(out), "--quiet",
                         env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == ExitCode.DATA_LOSS, proc.stderr[-3000:]
    m = re.search(r"data loss: (\d+) of 472 frames read; damaged ([\d.]+)-([\d.]+) s "
                  r"\((\d+) decode errors?\)", proc.stdout)
    assert m, proc.stdout
    t0, t1 = float(m[2]), float(m[3])
    assert int(m[1]) >= 465 and 9.0 < t0 < t1 < 10.0
    trigs = triggers(out)
    assert any(t["t_start_ns"] <= SMILE_S * 1e9 <= t["t_end_ns"] for t in trigs), trigs
    assert len(list((out / "clips").glob("*.mp4"))) == len(trigs)
    # the trace summary tells the same
    tables = run_momentbus("trace", "summary", str(out / "trace.jsonl"), timeout=60)
    assert tables.returncode == 0 and f"damaged {m[2]}-{m[3]} s" in tables.stdout
    js = json.loads(run_momentbus("trace", "summary", str(out / "trace.jsonl"), "--json",
                                  timeout=60).stdout)
    assert js["damage"]["lossy"] and js["damage"]["decode_errors"] == int(m[4])


def test_a_full_disk_for_the_trace_ends_with_what_was_saved(sample, tmp_path):
    """OUT/trace.jsonl is a link to /dev/full (the collector opens it with "w", which follows
    the link): every write fails with ENOSPC. No traceback; the pipeline runs to the end;
    the last line names what was saved; exit 74."""
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full on this system")
    with pytest.raises(OSError) as e, open(full, "w", buffering=1) as f:
        f.write("x\n")
    assert e.value.errno == errno.ENOSPC
    out = tmp_path / "out"
    out.mkdir()
    (out / "trace.jsonl").symlink_to(full)
    proc = run_momentbus("run", str(sample("WolfgangLanger_Pexels.mp4")), "--out", str(out),
                         "--quiet", env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == ExitCode.OUTPUT_INCOMPLETE == 74, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    m = re.fullmatch(r"momentbus: disk full: (\S+) stopped at 0 of (\d+) records \(No space "
                     r"left on device\); saved: (\S+) \((\d+) triggers?\) and (\d+) clips?"
                     r"(?: in (\S+))?", last)
    assert m, last
    assert m[1] == str(out / "trace.jsonl") and int(m[2]) > 500
    assert m[3] == str(out / "triggers.jsonl") and int(m[4]) == len(triggers(out)) >= 1
    assert int(m[5]) == len(list((out / "clips").glob("*.mp4"))) >= 1


def _wait_for_exits(pids: list[int], timeout_s: float) -> list[int]:
    """Wait (pidfd + poll: no sleeping) until every pid exited or time runs out; returns the
    pids still alive."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass  # gone already
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    try:
        while fds and time.monotonic() < deadline:
            for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                poller.unregister(fd)
                os.close(fd)
                del fds[fd]
        return list(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


def test_no_socket_folder_is_left_after_the_parent_is_killed(sample, tmp_path):
    tmpdir = tmp_path / "t"
    tmpdir.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen(momentbus_cmd("run", str(sample("WolfgangLanger_Pexels.mp4")),
                                          "--out", str(out), "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmpdir)}, start_new_session=True)
    try:
        wait_for_trace(proc, out / "trace.jsonl",
                       lambda r: r["record"] == "timing" and "process_ms" in r)
        children = [int(line.split(":")[0]) for line in processes_mentioning(str(tmpdir))]
        assert len(children) >= 4, "daemon, extractors, fusion, clip are running"
        assert [p.name for p in tmpdir.iterdir() if p.name.startswith("momentbus-")]
        os.kill(proc.pid, signal.SIGKILL)  # the parent only: no cleanup code of its runs
        proc.wait(10)
        left = _wait_for_exits(children, 60)
        assert not left, f"children outlived their parent: {processes_mentioning(str(tmpdir))}"
        assert not [p for p in tmpdir.iterdir() if p.name.startswith("momentbus-")], \
            "the socket folder of the killed run is removed"
        from momentbus.ipc.shm import NAME_PREFIX

        shm = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
        assert not [n for n in shm for pid in children if n.startswith(f"{NAME_PREFIX}{pid}-")]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for line in processes_mentioning(str(tmpdir)):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        proc.communicate(timeout=10)


def test_a_new_run_removes_folders_of_dead_runs_and_spares_live_ones(tmp_path):
    """The sweep behind the removal: a folder whose .owner lock is free goes; one whose owner
    holds the lock, or that has no .owner (being made, or another version's), stays."""
    from momentbus.rundir import claim_run_dir, remove_orphans

    dead, alive, unowned = (tmp_path / f"momentbus-{n}" for n in ("dead", "alive", "new"))
    for d in (dead, alive, unowned):
        d.mkdir()
    # a process that claims `dead`, then dies without cleaning (SIGKILL: no code of it runs)
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, signal; from momentbus.rundir import claim_run_dir; "
         f"claim_run_dir({str(dead)!r}); print('claimed', flush=True); "
         "os.kill(os.getpid(), signal.SIGKILL)"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "claimed"
    child.wait(10)
    lock = claim_run_dir(alive)
    try:
        assert not dead.exists(), "claiming a folder sweeps the dead ones beside it"
        assert remove_orphans(tmp_path) == []
        assert alive.exists() and unowned.exists()
    finally:
        lock.release()
    assert remove_orphans(tmp_path) == [alive]
