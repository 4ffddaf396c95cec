"""The supervisor of a local run: starts role processes, restarts crashed ones within a budget,
and stops everything with terminate -> timed join -> kill (Frigate's watchdog, minus silence).

Only the parent imports this module; what the roles themselves share (stop flag, parent-death
signal, exit codes) is in :mod:`momentbus.lifecycle`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .lifecycle import PARENT_PID_ENV

#: Children get this long after SIGTERM before SIGKILL.
TERMINATE_GRACE_S = 5.0


@dataclass
class Child:
    """One supervised role process."""

    name: str
    argv: list[str]
    restartable: bool = False
    #: argv for a restart (e.g. fusion's ``--resume``); ``None``: the same as the first start
    restart_argv: list[str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    exit_code: int | None = None
    stderr_path: str | None = None
    history: list[int] = field(default_factory=list)

    def terminate(self) -> None:
        """SIGTERM, if it is running: a role ends its work gracefully (a live daemon ends the
        stream, so every role downstream finishes by itself)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()


class Supervisor:
    """Start, watch, restart (within ``restart_budget``) and stop role processes.

    Args:
        restart_budget: restarts allowed per restartable child over the whole run.
        on_event: ``on_event(kind, child, **info)`` for ``start``/``exit``/``restart``.
    """

    def __init__(self, restart_budget: int = 3, log_dir: str | None = None,
                 on_event: Callable[..., None] | None = None) -> None:
        self.children: list[Child] = []
        self.restart_budget = restart_budget
        self.log_dir = log_dir
        self._on_event = on_event or (lambda *a, **k: None)

    def start(self, child: Child) -> Child:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_PID_ENV: str(os.getpid())})
        stderr = None
        if self.log_dir:
            child.stderr_path = os.path.join(self.log_dir, f"{child.name}.log")
            stderr = open(child.stderr_path, "ab")
        argv = child.restart_argv if child.restarts and child.restart_argv else child.argv
        child.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                      stdout=stderr or subprocess.DEVNULL, stderr=stderr,
                                      start_new_session=True)
        if stderr is not None:
            stderr.close()
        if child not in self.children:
            self.children.append(child)
        self._on_event("start", child, pid=child.proc.pid)
        return child

    def poll(self) -> list[Child]:
        """Reap exited children, restart crashed restartable ones; returns newly failed ones
        (crashed with the budget spent, or not restartable)."""
        failed = []
        for child in self.children:
            if child.proc is None or child.exit_code is not None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            child.history.append(code)
            self._on_event("exit", child, code=code)
            if code != 0 and child.restartable and child.restarts < self.restart_budget:
                child.restarts += 1
                self._on_event("restart", child, attempt=child.restarts,
                               pid=child.proc.pid)
                self.start(child)
                continue
            child.exit_code = code
            if code != 0:
                failed.append(child)
        return failed

    def running(self) -> list[Child]:
        return [c for c in self.children if c.proc is not None and c.exit_code is None
                and c.proc.poll() is None]

    def all_exited(self) -> bool:
        self.poll()
        return all(c.exit_code is not None for c in self.children)

    def stop(self, grace_s: float = TERMINATE_GRACE_S) -> None:
        """terminate -> timed join -> kill, for every child still running."""
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in live:
            c.proc.terminate()
        deadline = time.monotonic() + grace_s
        for c in live:
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)
        for c in self.children:
            if c.proc is not None and c.exit_code is None:
                c.exit_code = c.proc.returncode
