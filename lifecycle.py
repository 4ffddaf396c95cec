"""What every role process shares: its stop flag, its parent-death signal, and its exit codes.

Roles (daemon, extractor, fusion, clip) import this module; only the parent of a local run
imports :mod:`momentbus.supervisor`.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
import threading
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``momentbus`` commands and role processes (documented in README)."""

    #: Finished: everything that was read was analysed, every trigger has its clip.
    OK = 0
    #: An internal failure (a bug, or a role that could not go on): see the log.
    ERROR = 1
    #: A user mistake (bad path, bad rules file, address in use): one line on stderr.
    USAGE = 2
    #: An extractor gave up after too many consecutive per-frame failures.
    EXTRACTOR_FAILED = 3
    #: An extractor got no Welcome from the daemon in time.
    JOIN_TIMEOUT = 4
    #: An extractor lost the daemon (no message for the member timeout).
    SOURCE_LOST = 5
    #: An extractor could not hand observations to fusion for the send timeout.
    FUSION_UNREACHABLE = 6
    #: A newer incarnation of this extractor (same group and instance) joined the daemon: this
    #: process was replaced (a restart raced a stalled original that woke up).
    SUPERSEDED = 9
    #: ``momentbus run`` finished, but part of the source could not be read (decode errors, a
    #: damaged span, frames the container announced but never delivered, an unread tail): the
    #: outputs are complete for what was read, and the summary names what was lost. The number
    #: is sysexits.h's ``EX_DATAERR`` ("the input data was incorrect in some way").
    DATA_LOSS = 65
    #: ``momentbus run`` could not write all its outputs (disk full, I/O error): the summary's
    #: last line says what was saved. Distinct from ``DATA_LOSS`` because the remedy differs
    #: (free space and run again; the input is fine), and it wins over it when both happen. The
    #: number is sysexits.h's ``EX_IOERR`` ("an error occurred while doing I/O on some file").
    OUTPUT_INCOMPLETE = 74
    #: Interrupted by the user (Ctrl-C / SIGINT), as shells report 128 + SIGINT.
    INTERRUPTED = 130
    #: The reader of our standard output went away (``momentbus extract ... | head``), as shells
    #: report 128 + SIGPIPE.
    BROKEN_PIPE = 141


class StopFlag:
    """Set by SIGTERM/SIGINT (once :meth:`install` ed) or by :meth:`set`; role loops poll
    :meth:`is_set`, so no exception lands in the middle of a ZeroMQ call and every process
    closes its sockets and ends its streams cleanly. Without :meth:`install` it is a plain
    thread-safe flag: the library API uses it that way, off the main thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: int | None = None
        #: how many times it was set (signals included): a live run ends gracefully on the
        #: first Ctrl-C and at once on the second
        self.count = 0

    def install(self) -> StopFlag:
        """Route SIGTERM and SIGINT to this flag (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, _frame: object) -> None:
        self.signal = signum
        self.set()

    def set(self) -> None:
        self.count += 1
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the flag; returns whether it is set."""
        return self._event.wait(timeout_s)


#: Environment variable through which a parent names itself to its role processes.
PARENT_PID_ENV = "MOMENTBUS_PARENT_PID"


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no orphans after a crash).

    ``PR_SET_PDEATHSIG`` (prctl(2)) fires when the *thread* that started this process exits;
    the parent names its pid in ``MOMENTBUS_PARENT_PID`` so a parent that died before the
    prctl took effect is noticed too. A parent that died cannot remove its run folder (its
    ``ipc://`` sockets), so a role that outlives its parent removes it on its way out.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass
    parent = os.environ.get(PARENT_PID_ENV)
    if parent and parent.isdigit():
        atexit.register(_remove_run_dir_if_orphaned, int(parent))
        if os.getppid() != int(parent):
            os.kill(os.getpid(), signal.SIGTERM)


def _remove_run_dir_if_orphaned(parent: int) -> None:
    """At exit: if the parent died (we were reparented), remove the run folders it left: it
    cannot any more (see :mod:`momentbus.rundir`; a folder with a live owner is never touched)."""
    if os.getppid() == parent:
        return
    from .rundir import remove_orphans

    try:
        remove_orphans()
    except OSError:
        pass  # best effort on the way out: the next run removes what is left
