"""A fork server for the role processes of a local run: start fast, share what every role imports.

Each role is a fresh ``python -m momentbus ROLE`` and spends most of its start importing the same
libraries (numpy, PyAV, OpenCV, pyzmq, msgspec, structlog, rich and momentbus itself: 0.6-0.7 s
of CPU a role measured here, ``python -X importtime``), six times at once on two cores before the
first frame is analysed. The run parent therefore starts one *zygote* (``python -m
momentbus.forkserver``) as it begins; the zygote imports those modules once and forks every role
from that warm state (as Android's zygote and multiprocessing's ``forkserver`` do). The pages of
the shared imports stay shared between the roles (copy-on-write; ``gc.freeze`` keeps the garbage
collector from touching them).

Models are never loaded in the zygote: each role loads its own after the fork. Of the model
runtimes only mediapipe is imported for pose and gesture (:data:`RUNTIMES`), when the first of
those roles is asked for (the other roles are forked and at work meanwhile); a role forked after
that import gives the same observations as one started on its own and exits cleanly
(tests/test_workers.py). onnxruntime cannot be: imported before a fork, the child hangs or aborts
at exit (``std::system_error: No such process``, a thread of the parent's gone), measured here;
so face imports it after the fork (0.6 s of its 0.74 s ``build``). Speech's ctranslate2 is not
preloaded (untested). numpy's OpenBLAS pool is fork-safe (its ``pthread_atfork`` handlers).

Every role stays a child of the run parent, so the supervisor waits, signals and restarts it as a
``subprocess.Popen``: the parent makes itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``,
prctl(2)), the zygote forks twice and the middle process exits, so the role is re-parented to the
run parent; the role waits for that before it starts (its parent-death signal must name the run
parent). A role starts as ``python -m momentbus ROLE ARGS`` would: its own session, stdin from
/dev/null, stdout and stderr to its log file, its environment, then ``cli.main(ARGS)`` and a normal
interpreter exit (atexit handlers run: ZeroMQ delivers what is queued); ``ps`` shows it as
``momentbus ROLE ARGS`` (setproctitle). If the zygote cannot
start, or the parent cannot be a subreaper (not Linux), the run starts its roles as plain
processes (:attr:`ForkServer.available` is false).

Protocol: one JSON line a request on the zygote's stdin (``argv``, ``env``, ``log``), one JSON
line a reply on its stdout (``pid`` or ``error``); the zygote's first line says it is ready.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

#: Modules every role imports (and the roles themselves), imported once by the zygote.
PRELOAD = ("numpy", "cv2", "av", "zmq", "msgspec", "structlog", "rich.console",
           "momentbus.cli", "momentbus.ipc.framebus", "momentbus.traces.tracer",
           "momentbus.daemon.main", "momentbus.fusion.main", "momentbus.clip.main",
           "momentbus.extractors.runner")
#: Model runtimes imported for a kind's default backend (no model is loaded; see the module doc).
RUNTIMES: dict[str, tuple[str, ...]] = {"pose": ("mediapipe",), "gesture": ("mediapipe",)}
#: How long a role waits to be re-parented to the run parent (it happens when the zygote's
#: middle process exits, which the zygote waits for before it replies: microseconds).
REPARENT_TIMEOUT_S = 5.0
#: How long the parent waits for the zygote's imports (about 1 s here, more on a busy machine).
READY_TIMEOUT_S = 60.0
_PR_SET_CHILD_SUBREAPER = 36


def _prctl_subreaper() -> bool:
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except OSError:
        return False


class ForkedProcess:
    """A role forked by the zygote and re-parented to this process: the parts of
    :class:`subprocess.Popen` the supervisor uses (``pid``, ``returncode``, ``poll``, ``wait``,
    ``terminate``, ``kill``)."""

    def __init__(self, pid: int, argv: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(argv)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone, the code is unknown
                self.returncode = 255
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (a pidfd, poll(2)); ``subprocess.TimeoutExpired`` after
        ``timeout`` seconds."""
        if self.poll() is not None:
            return self.returncode  # type: ignore[return-value]
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = os.pidfd_open(self.pid)
        try:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
                select.select([fd], [], [], left)
        finally:
            os.close(fd)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The run parent's side: start the zygote (:meth:`start`), fork roles from it
    (:meth:`spawn`), stop it (:meth:`close`).

    Args:
        extractors: the run's extractor specs (``face``, ``face:2``): the zygote also imports
            each kind's backend module (it imports no model runtime at import time).
    """

    def __init__(self, extractors: Sequence[str] = ()) -> None:
        self.kinds = sorted({spec.partition(":")[0].strip() for spec in extractors} - {""})
        self.available = False
        self._proc: subprocess.Popen[str] | None = None
        self._ready: bool | None = None
        #: the zygote's first reply (``seconds`` it took, modules ``preloaded`` so far)
        self.ready_info: dict[str, Any] = {}

    def start(self, log_path: str | None = None) -> ForkServer:
        """Start the zygote (it imports in the background); no-op where forking roles cannot
        work (then :meth:`spawn` is never used: see :attr:`available`)."""
        if not hasattr(os, "pidfd_open") or not _prctl_subreaper():
            return self
        log: IO[bytes] | None = open(log_path, "ab") if log_path else None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "momentbus.forkserver", str(os.getpid()), *self.kinds],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL,
                text=True, bufsize=1, start_new_session=True)
        except OSError:
            return self
        finally:
            if log is not None:
                log.close()
        self.available = True
        return self

    def _wait_ready(self) -> bool:
        if self._ready is None:
            self._ready = False
            reply = self._read(READY_TIMEOUT_S)
            if reply is not None and reply.get("ready"):
                self._ready = True
                self.ready_info = reply
        return self._ready

    def _read(self, timeout_s: float) -> dict[str, Any] | None:
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else ""
        try:
            reply = json.loads(line) if line else None
        except ValueError:
            reply = None
        return reply if isinstance(reply, dict) else None

    def spawn(self, argv: Sequence[str], env: dict[str, str],
              log_path: str | None) -> ForkedProcess | None:
        """Fork ``argv`` (``[python, "-m", "momentbus", ROLE, ...]``) from the zygote; ``None``
        if the zygote cannot (gone, not ready): the caller starts a plain process instead."""
        if (not self.available or self._proc is None
                or list(argv[:3]) != [sys.executable, "-m", "momentbus"]):
            return None
        if not self._wait_ready():  # it died importing, or is stuck: never again
            self.close()
            return None
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps({"argv": list(argv[3:]), "env": env,
                                               "log": log_path}) + "\n")
            self._proc.stdin.flush()
        except OSError:
            self.close()
            return None
        reply = self._read(READY_TIMEOUT_S)
        if reply is None or not isinstance(reply.get("pid"), int):
            # broken or stuck: killed, so it cannot fork this role after the caller started it
            # as a plain process; plain processes from now on
            self.close()
            return None
        self.ready_info["preloaded"] = reply.get("preloaded", [])  # runtimes imported since
        return ForkedProcess(reply["pid"], argv)

    def close(self) -> None:
        """Kill the zygote: it holds no state, and the roles it forked are not its children
        (they go on). Immediate, even while it is still importing."""
        proc, self._proc, self.available = self._proc, None, False
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # a request the killed zygote never read
                    pass


# -- the zygote ------------------------------------------------------------------------------


def _become_role(request: dict[str, Any], run_parent: int) -> None:
    """In the forked role: its session, stdio, environment, then the role; exits."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    log = (os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
           if request.get("log") else devnull)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd in {devnull, log}:
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # signal dispositions are the interpreter's own, as the zygote never changes them (SIGINT
    # raises KeyboardInterrupt, SIGPIPE is ignored); the role installs its stop flag itself
    os.environ.clear()
    os.environ.update(request["env"])
    deadline = time.monotonic() + REPARENT_TIMEOUT_S
    while os.getppid() != run_parent:  # the middle process is exiting
        if time.monotonic() > deadline:
            os._exit(70)  # EX_SOFTWARE: never re-parented, so never supervised
        time.sleep(0.0005)
    sys.argv = ["momentbus", *request["argv"]]
    # `ps` shows the role as if it had been started on its own
    setproctitle.setproctitle(" ".join(["momentbus", *request["argv"]]))
    from momentbus.cli import main

    raise SystemExit(main(request["argv"]))


def _import_all(names: Sequence[str], loaded: list[str], failed: list[str]) -> None:
    for name in names:
        if name in loaded:
            continue
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as e:  # an optional module: the role imports it itself
            failed.append(f"{name}: {type(e).__name__}: {e}")
    gc.collect()
    gc.freeze()  # imported objects stay in the permanent generation: shared pages stay shared


def _serve(run_parent: int, kinds: Sequence[str]) -> None:
    """Import, say ready, then fork a role per request line. A kind's runtime (mediapipe: 1.1 s
    here) is imported only when the first role of that kind is asked for, so the other roles
    (face loading its model, the daemon, fusion) are forked and at work meanwhile."""
    started = time.perf_counter()
    setproctitle.getproctitle()  # set up while argv and environ are the interpreter's own
    loaded: list[str] = []
    failed: list[str] = []
    _import_all(PRELOAD, loaded, failed)
    from momentbus.extractors.base import backend_module

    backends = []
    for kind in kinds:
        try:
            backends.append(backend_module(kind))
        except Exception:  # an unknown kind: the run reports it, in one line
            continue
    _import_all(backends, loaded, failed)
    out = sys.stdout
    out.write(json.dumps({"ready": True, "seconds": round(time.perf_counter() - started, 3),
                          "preloaded": loaded, "failed": failed}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        argv = request.get("argv") or [""]
        if argv[0] in ("extractor", "extract") and len(argv) > 1:
            _import_all(RUNTIMES.get(argv[1], ()), loaded, failed)
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:
            os.close(read_end)
            role = os.fork()
            if role == 0:
                os.close(write_end)
                _become_role(request, run_parent)
            os.write(write_end, str(role).encode())
            os._exit(0)
        os.close(write_end)
        data = os.read(read_end, 32)
        os.close(read_end)
        os.waitpid(middle, 0)  # the middle process is gone: the role is the run parent's now
        reply = ({"pid": int(data), "preloaded": loaded} if data.isdigit()
                 else {"error": "fork failed"})
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    import setproctitle

    _serve(int(sys.argv[1]), sys.argv[2:])
