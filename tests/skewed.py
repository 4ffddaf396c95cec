"""Start a process whose wall clock (CLOCK_REALTIME) is off by a given skew: libfaketime.

Measured here (Debian 12, libfaketime 0.9.10, Python 3.11; tests/HOSTS_NOTES.md):

* ``faketime -f "+2.5s" CMD`` (or ``LD_PRELOAD=libfaketime.so.1 FAKETIME=+2.5s``) shifts
  ``time.time_ns()`` by +2.5 s, but also makes CLOCK_MONOTONIC read the *faked wall clock*
  (~1.8e18 ns instead of the uptime), and ``threading.Event().wait(0.1)`` then hangs forever.
* ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (``faketime --exclude-monotonic``) leaves CLOCK_MONOTONIC
  alone (same readings as every other process) and threading waits work, but ``time.sleep``
  raises EINVAL (libfaketime#426): tests/faketime_site/sitecustomize.py works around it.
* ZeroMQ (libzmq's timers, ``zmq_poll`` timeouts) behaves normally either way.

* A process that loads libfaketime without ``FAKETIME_SHARED`` creates
  ``/dev/shm/faketime_shm_PID`` and ``/dev/shm/sem.faketime_sem_PID`` and removes them at exit;
  they stay behind when it is killed, or when it ``exec``s (``ip netns exec`` would, if it were
  preloaded itself).

So :func:`skewed_env` sets ``LD_PRELOAD``, ``FAKETIME`` and ``FAKETIME_DONT_FAKE_MONOTONIC=1``
directly (no ``faketime`` wrapper process in between) and puts the sleep shim on ``PYTHONPATH``;
:func:`skewed_argv` does the same through ``env`` for a command run by something that must not be
preloaded (``ip netns exec``); :func:`reap` kills such a process and removes its /dev/shm files.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Where Debian's ``libfaketime`` package puts the preload library (``dpkg -L libfaketime``).
CANDIDATES = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
              "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
              "/usr/lib/faketime/libfaketime.so.1",
              "/usr/local/lib/faketime/libfaketime.so.1")
SHIM_DIR = Path(__file__).with_name("faketime_site")


def faketime_library() -> str | None:
    """Path of libfaketime.so.1, or ``None`` (Debian: ``apt-get install faketime``)."""
    return next((p for p in CANDIDATES if os.path.exists(p)), None)


def skewed_env(skew: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child whose CLOCK_REALTIME reads ``skew`` off (libfaketime offset
    syntax: ``"+2.5s"``, ``"-1.25s"``, ``"+1d"``) and whose CLOCK_MONOTONIC is untouched.

    Raises:
        FileNotFoundError: libfaketime is not installed.
    """
    lib = faketime_library()
    if lib is None:
        raise FileNotFoundError("libfaketime.so.1 not found (apt-get install faketime)")
    env = dict(os.environ if base is None else base)
    pythonpath = [str(SHIM_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(LD_PRELOAD=lib, FAKETIME=skew, FAKETIME_DONT_FAKE_MONOTONIC="1",
               PYTHONPATH=os.pathsep.join(pythonpath))
    return env


def skewed_argv(skew: str, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed by ``env VAR=...`` so only the final program is preloaded (for
    ``Netns.run_in``: ``ip`` itself then runs with the real clock and leaves no /dev/shm files)."""
    env = skewed_env(skew, base={})
    return ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]


def reap(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """Kill ``proc`` if it still runs, wait, and remove the /dev/shm files libfaketime made for
    it (left when a preloaded process dies by a signal)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout_s)
    for name in (f"faketime_shm_{proc.pid}", f"sem.faketime_sem_{proc.pid}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{name}")
