"""Several hosts on one machine: network namespaces joined by veth, for multi-host tests.

``Netns(2)`` makes namespaces ``mb<tag>a`` and ``mb<tag>b`` joined by one veth pair, addresses
``10.200.X.1/30`` and ``10.200.X.2/30`` (X random per run), loopback up in each. ``Netns(n)``
with n > 2 joins n namespaces through a bridge in a hub namespace ``mb<tag>hub`` (addresses
``10.200.X.1..n/24``). Traffic between them crosses real (virtual) interfaces, so a bind there is
not loopback and needs CURVE. Nothing is created in the root namespace: every link lives in a
namespace made here, and goes with it.

Cleanup always happens: :meth:`Netns.close` (the fixture's finalizer, or ``with``) kills every
process started with :meth:`Netns.run_in` (its process group: TERM, timed wait, KILL), then any
process left inside the namespaces, deletes the links and the namespaces; an ``atexit`` hook does
the same for anything still open, and each run first sweeps namespaces left by a crashed run
(recorded in ``/run/momentbus-netns/``, only when their creator process is gone).

Needs root and iproute2's ``ip``; the ``netns`` fixture skips (with the reason) without them.
Never contacts an address outside the namespaces it made.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Where each live set of namespaces is recorded with its creator's pid (for sweeping).
MARK_DIR = Path("/run/momentbus-netns")
#: Seconds a started process gets between SIGTERM and SIGKILL at cleanup.
TERM_GRACE_S = 3.0
#: Seconds any single ``ip`` command may take.
IP_TIMEOUT_S = 20.0


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, or the kernel refused)."""


@dataclass(frozen=True)
class Host:
    """One namespace: ``name`` (for ``ip netns exec``), its interface and IPv4 address."""

    name: str
    ifname: str
    address: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    try:
        proc = _ip("netns", "list", check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns` unavailable: {e}"
    if proc.returncode != 0:
        return f"`ip netns` unavailable: {proc.stderr.strip()}"
    return None


_LIVE: set[Netns] = set()


class Netns:
    """``n`` hosts (namespaces) on one link. Use as a context manager or via the fixture.

    Attributes:
        hosts: the namespaces, ``hosts[0]`` is ``mb<tag>a`` at ``10.200.X.1``.
        subnet: e.g. ``"10.200.37.0/30"``.
    Raises:
        NetnsUnavailable: at construction, when a namespace or link cannot be made (whatever
            was made is removed first).
    """

    def __init__(self, n: int = 2) -> None:
        if n < 2:
            raise ValueError("need at least two hosts")
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        sweep_stale()
        tag = secrets.token_hex(3)
        x = secrets.randbelow(256)
        self.tag = tag
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.closed = False
        prefix = 30 if n == 2 else 24
        self.subnet = f"10.200.{x}.0/{prefix}"
        self.hosts = [Host(f"mb{tag}{chr(ord('a') + i)}", f"mb{tag}{chr(ord('a') + i)}v",
                           f"10.200.{x}.{i + 1}") for i in range(n)]
        _LIVE.add(self)
        try:
            self._mark()
            for h in self.hosts:
                self._add_namespace(h.name)
            if n == 2:
                a, b = self.hosts
                _ip("link", "add", a.ifname, "netns", a.name, "type", "veth",
                    "peer", "name", b.ifname, "netns", b.name)
            else:
                hub = f"mb{tag}hub"
                self._add_namespace(hub)
                _ip("-n", hub, "link", "add", "br0", "type", "bridge")
                _ip("-n", hub, "link", "set", "br0", "up")
                for i, h in enumerate(self.hosts):
                    port = f"p{i}"
                    _ip("link", "add", h.ifname, "netns", h.name, "type", "veth",
                        "peer", "name", port, "netns", hub)
                    _ip("-n", hub, "link", "set", port, "master", "br0")
                    _ip("-n", hub, "link", "set", port, "up")
            for h in self.hosts:
                _ip("-n", h.name, "addr", "add", f"{h.address}/{prefix}", "dev", h.ifname)
                _ip("-n", h.name, "link", "set", h.ifname, "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        self._mark()
        _ip("-n", name, "link", "set", "lo", "up")

    def _mark(self) -> None:
        MARK_DIR.mkdir(mode=0o700, exist_ok=True)
        (MARK_DIR / f"mb{self.tag}.json").write_text(
            json.dumps({"pid": os.getpid(), "namespaces": self.namespaces}))

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_in(self, host: Host | str, argv: Sequence[str], **popen_kwargs: Any
               ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec`` execs it, so the
        returned Popen's pid is the program's). Its own process group; killed at close."""
        name = host.name if isinstance(host, Host) else host
        if name not in self.namespaces:
            raise ValueError(f"{name} is not one of this Netns's namespaces")
        popen_kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", name, *argv], **popen_kwargs)
        self.procs.append(proc)
        return proc

    def pids(self, host: Host | str) -> list[int]:
        """Processes now inside ``host``'s namespace."""
        name = host.name if isinstance(host, Host) else host
        out = _ip("netns", "pids", name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def close(self) -> None:
        """Kill what runs inside, delete links and namespaces. Idempotent.

        Raises:
            RuntimeError: something could not be removed (after trying everything).
        """
        if self.closed:
            return
        problems: list[str] = []
        for proc in self.procs:
            _stop(proc, problems)
        for name in self.namespaces:
            for pid in self.pids(name):  # only processes inside namespaces we made
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for h in self.hosts:
            if h.name in self.namespaces:
                _ip("-n", h.name, "link", "del", h.ifname, check=False)
        for name in reversed(self.namespaces):
            proc = _ip("netns", "del", name, check=False)
            if proc.returncode != 0 and name in _netns_names():
                problems.append(f"ip netns del {name}: {proc.stderr.strip()}")
        self.closed = True
        _LIVE.discard(self)
        if not problems:
            with contextlib.suppress(FileNotFoundError):
                (MARK_DIR / f"mb{self.tag}.json").unlink()
        else:
            raise RuntimeError("netns cleanup: " + "; ".join(problems))


def _stop(proc: subprocess.Popen[Any], problems: list[str]) -> None:
    if proc.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, TERM_GRACE_S)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            problems.append(f"pid {proc.pid} survived SIGKILL")
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _netns_names() -> set[str]:
    out = _ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def sweep_stale() -> list[str]:
    """Delete namespaces recorded by runs whose process is gone; returns their names."""
    swept: list[str] = []
    if not MARK_DIR.is_dir():
        return swept
    for mark in MARK_DIR.glob("mb*.json"):
        try:
            data = json.loads(mark.read_text())
            pid = int(data["pid"])
            names = [str(n) for n in data["namespaces"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        for name in names:
            if not name.startswith("mb"):
                continue
            for p in _ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
            swept.append(name)
        mark.unlink(missing_ok=True)
    return swept


@atexit.register
def _close_all() -> None:
    for n in list(_LIVE):
        with contextlib.suppress(Exception):
            n.close()


@contextlib.contextmanager
def netns_hosts(n: int = 2) -> Iterator[Netns]:
    """``with netns_hosts(2) as net: ...`` (raises :class:`NetnsUnavailable`)."""
    net = Netns(n)
    try:
        yield net
    finally:
        net.close()


def two_hosts() -> Iterator[Netns]:
    """Fixture body: two hosts on one veth link, closed afterwards; skips (pytest.skip, with the
    reason) when namespaces cannot be made here. In a test module::

        @pytest.fixture
        def net():
            yield from two_hosts()
    """
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        net = Netns(2)
    except NetnsUnavailable as e:
        pytest.skip(str(e))
    try:
        yield net
    finally:
        net.close()


#: The same as a ready fixture, for a conftest.py to import.
netns = pytest.fixture(two_hosts, name="netns")
