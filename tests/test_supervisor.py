"""The supervisor on its own: restart budget, and stop = terminate -> timed join -> kill.

Children are tiny Python programs; readiness is a handshake over a FIFO (never a sleep), and
every wait has a deadline.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from momentbus.supervisor import Child, Supervisor

PY = sys.executable


def settle(sup: Supervisor, timeout_s: float = 30.0) -> list[Child]:
    """Poll the supervisor until no child runs; returns every child that failed for good.
    Waits on the children's exits (``wait`` with a short timeout), never sleeps."""
    failed: list[Child] = []
    deadline = time.monotonic() + timeout_s
    while True:
        failed += sup.poll()
        live = sup.running()
        if not live:
            return failed
        assert time.monotonic() < deadline, "children did not exit in time"
        try:
            live[0].proc.wait(0.05)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            pass


def ready_fifo(tmp_path: Path) -> Path:
    path = tmp_path / "ready"
    os.mkfifo(path)
    return path


def wait_ready(fifo: Path, n: int = 1, timeout_s: float = 30.0) -> None:
    """Block until ``n`` children wrote their line into the FIFO."""
    # read-write: we hold a writer end ourselves, so select() waits for data instead of
    # reporting end-of-file while no child has opened the FIFO yet (Linux fifo(7))
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    got = b""
    deadline = time.monotonic() + timeout_s
    try:
        while got.count(b"\n") < n:
            left = deadline - time.monotonic()
            assert left > 0, "children never said ready"
            if select.select([fd], [], [], left)[0]:
                try:
                    got += os.read(fd, 4096)
                except BlockingIOError:  # another child's write raced us: read again
                    continue
    finally:
        os.close(fd)


def child_program(fifo: Path, ignore_term: bool) -> list[str]:
    """A child that says ready, then waits forever (or until SIGTERM, unless it ignores it)."""
    code = ("import os, signal, threading\n"
            f"{'signal.signal(signal.SIGTERM, signal.SIG_IGN)' if ignore_term else ''}\n"
            f"fd = os.open({str(fifo)!r}, os.O_WRONLY); os.write(fd, b'ready\\n'); os.close(fd)\n"
            "threading.Event().wait()\n")
    return [PY, "-c", code]


def test_a_crashing_child_is_restarted_until_the_budget_is_spent(tmp_path):
    events = []
    sup = Supervisor(restart_budget=2, log_dir=str(tmp_path),
                     on_event=lambda kind, child, **kw: events.append((kind, kw)))
    child = sup.start(Child("crasher", [PY, "-c", "import sys; sys.exit(3)"], restartable=True))
    failed = settle(sup)
    assert failed == [child] and child.exit_code == 3
    assert child.restarts == 2 and child.history == [3, 3, 3]
    assert [k for k, _ in events].count("restart") == 2
    assert [kw["attempt"] for k, kw in events if k == "restart"] == [1, 2]


def test_a_child_that_is_not_restartable_fails_at_once(tmp_path):
    sup = Supervisor(restart_budget=5, log_dir=str(tmp_path))
    child = sup.start(Child("once", [PY, "-c", "import sys; sys.exit(7)"]))
    assert settle(sup) == [child] and child.restarts == 0 and child.history == [7]


def test_a_clean_exit_is_neither_restarted_nor_a_failure(tmp_path):
    sup = Supervisor(restart_budget=5, log_dir=str(tmp_path))
    child = sup.start(Child("fine", [PY, "-c", "print('done')"], restartable=True))
    assert settle(sup) == [] and child.exit_code == 0 and child.restarts == 0
    assert "done" in Path(child.stderr_path or "").read_text()


def test_stop_terminates_then_kills_what_ignores_sigterm(tmp_path):
    fifo = ready_fifo(tmp_path)
    sup = Supervisor(log_dir=str(tmp_path))
    polite = sup.start(Child("polite", child_program(fifo, ignore_term=False)))
    stubborn = sup.start(Child("stubborn", child_program(fifo, ignore_term=True)))
    wait_ready(fifo, n=2)
    t0 = time.monotonic()
    sup.stop(grace_s=1.0)
    took = time.monotonic() - t0
    assert polite.exit_code == -signal.SIGTERM, "terminated"
    assert stubborn.exit_code == -signal.SIGKILL, "killed once the grace period was over"
    assert 1.0 <= took < 10.0, took
    assert not sup.running()


def test_stop_returns_as_soon_as_every_child_left(tmp_path):
    fifo = ready_fifo(tmp_path)
    sup = Supervisor(log_dir=str(tmp_path))
    for i in range(3):
        sup.start(Child(f"c{i}", child_program(fifo, ignore_term=False)))
    wait_ready(fifo, n=3)
    t0 = time.monotonic()
    sup.stop(grace_s=30.0)
    assert time.monotonic() - t0 < 10.0, "no waiting out the grace period"
    assert all(c.exit_code == -signal.SIGTERM for c in sup.children)


@pytest.mark.parametrize("budget", [0, 1])
def test_the_budget_counts_per_child(tmp_path, budget):
    sup = Supervisor(restart_budget=budget, log_dir=str(tmp_path))
    a = sup.start(Child("a", [PY, "-c", "import sys; sys.exit(1)"], restartable=True))
    b = sup.start(Child("b", [PY, "-c", "import sys; sys.exit(1)"], restartable=True))
    settle(sup)
    assert a.restarts == budget and b.restarts == budget
