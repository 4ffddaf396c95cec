"""Socket wrappers: the only place (with the frame bus) that calls ZeroMQ.

Sockets are created in the thread/process that uses them and closed with ``linger=0`` unless a
caller asks for a flush window (trace records at exit); pyzmq sockets are context managers
(``with bind(...) as sock:`` closes them). Every send and receive goes through :func:`send`,
:func:`recv` or a :class:`Receiver`, so every message on the wire is a typed, validated
:class:`~momentbus.ipc.schema.Message`. Every socket made here is tracked (:func:`open_sockets`)
so the test suite fails a test that leaves one open, as pyzmq's own conftest does.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

import zmq

from .errors import DecodeError
from .schema import Message, decode, encode
from .security import RoleSecurity

M = TypeVar("M", bound=Message)

#: Send/receive high-water mark for message sockets (messages). Frames never queue here: the
#: frame bus's credits bound them. 1000 observations ~ 40 s of one extractor at 25 fps.
DEFAULT_HWM = 1000


def context() -> zmq.Context[Any]:
    """The process's shared ZeroMQ context (``zmq.Context.instance()``)."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    return ctx


_made: weakref.WeakSet[zmq.Socket[Any]] = weakref.WeakSet()


def make_socket(kind: int, *, hwm: int = DEFAULT_HWM, linger_ms: int = 0) -> zmq.Socket[Any]:
    """A socket of ``kind`` with ``linger_ms`` and both high-water marks set to ``hwm``."""
    sock: zmq.Socket[Any] = context().socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    _made.add(sock)
    return sock


def open_sockets() -> list[zmq.Socket[Any]]:
    """Sockets made by this module in this process and not closed yet (leak checks)."""
    return [s for s in list(_made) if not s.closed]


_security: RoleSecurity = RoleSecurity()


def use_security(security: RoleSecurity) -> RoleSecurity:
    """Install this process's :class:`~momentbus.ipc.security.RoleSecurity` (CURVE keys or the
    bind policy) for every later :func:`bind` and :func:`connect`; returns the previous one."""
    global _security
    previous, _security = _security, security
    return previous


def security() -> RoleSecurity:
    """This process's :class:`~momentbus.ipc.security.RoleSecurity`."""
    return _security


def bind(kind: int, address: str, **kw: Any) -> zmq.Socket[Any]:
    """A socket of ``kind`` bound to ``address`` (``ipc://PATH`` or ``tcp://HOST:PORT``), a
    CURVE server when the process holds keys (:func:`use_security`).

    Raises:
        zmq.ZMQError: the address is in use or malformed (callers turn it into a user error).
        SecurityError: a non-loopback bind without keys or ``--insecure``, or unusable keys.
    """
    sock = make_socket(kind, **kw)
    try:
        _security.before_bind(sock, address)
        sock.bind(address)
    except BaseException:
        sock.close(0)
        raise
    return sock


def connect(kind: int, address: str, *,
            before_connect: Callable[[zmq.Socket[Any]], None] | None = None,
            **kw: Any) -> zmq.Socket[Any]:
    """A socket of ``kind`` connected to ``address``, a CURVE client when the process holds
    keys (:func:`use_security`); ``before_connect(sock)`` runs just before (a monitor).

    Raises:
        SecurityError: unusable keys.
    """
    sock = make_socket(kind, **kw)
    try:
        _security.before_connect(sock, address)
        if before_connect is not None:
            before_connect(sock)
        sock.connect(address)
    except BaseException:
        sock.close(0)
        raise
    return sock


#: Parts shorter than this are copied into the message, longer ones sent zero-copy: pyzmq's own
#: threshold (``zmq.COPY_THRESHOLD``, 64 KiB), below which zero-copy costs more than it saves.
COPY_THRESHOLD = zmq.COPY_THRESHOLD
_SNDMORE = int(zmq.SNDMORE)


def send(sock: zmq.Socket[Any], msg: Message, *, identity: bytes | None = None, flags: int = 0,
         parts: list[Any] | None = None) -> None:
    """Send ``msg`` as ``[identity?, kind, header, *payload]``; parts of
    :data:`COPY_THRESHOLD` bytes or more (pixels, samples) are not copied. ``parts``: ``msg``
    already encoded (:func:`~momentbus.ipc.schema.encode`), for a caller that had to look at it.

    Part by part with integer flags rather than ``send_multipart``, whose flag arithmetic (an
    enum ``|`` per part) and checks made this call 7.4 us of CPU for a 4-part frame header, now
    3.7 us including the encoding (measured on the project's 2-core machine; the frame bus sends
    one such message per member per frame). As with ``send_multipart``, only the first part can
    fail with ``zmq.Again`` (``NOBLOCK``): ZeroMQ then sent nothing; once it is queued, the rest
    is accepted.
    """
    parts = encode(msg) if parts is None else list(parts)
    if identity is not None:
        parts.insert(0, identity)
    flags = int(flags)
    more = flags | _SNDMORE
    last = len(parts) - 1
    for i, part in enumerate(parts):
        sock.send(part, more if i < last else flags, copy=len(part) < COPY_THRESHOLD)


def try_send(sock: zmq.Socket[Any], msg: Message, parts: list[Any] | None = None) -> bool:
    """Non-blocking send; ``False`` when the peer's HWM is reached (the caller counts the drop)."""
    try:
        send(sock, msg, flags=zmq.NOBLOCK, parts=parts)
    except zmq.Again:
        return False
    return True


def peer_address(frame: Any) -> str:
    """The IP address a received TCP frame came from, ``"local"`` over ``ipc://`` (libzmq
    gives ``localhost:UID:GID:PID`` there), ``""`` when unknown."""
    try:
        value = frame.get("Peer-Address")
    except (zmq.ZMQError, AttributeError, TypeError):
        return ""
    if not isinstance(value, str):
        return ""
    return "local" if value.startswith("localhost:") else value


def recv(sock: zmq.Socket[Any], *, router: bool = False, flags: int = 0) -> tuple[bytes | None, Message]:
    """Receive and decode one message; ``(identity, msg)`` (``identity`` only for ROUTER).

    Raises:
        DecodeError: the message is malformed (the caller counts and traces it, and goes on).
        zmq.Again: with ``flags=zmq.NOBLOCK`` and nothing queued.
    """
    identity, _, msg = _recv(sock, router, flags)
    return identity, msg


def _recv(sock: zmq.Socket[Any], router: bool, flags: int) -> tuple[bytes | None, str, Message]:
    # part by part on Frame.more: recv_multipart asks getsockopt(RCVMORE) per part, 8.5 us a
    # 3-part message against 3.3 us here (measured on the project's 2-core machine)
    part = sock.recv(flags, copy=False)
    parts = [part]
    while part.more:
        part = sock.recv(flags, copy=False)
        parts.append(part)
    identity = None
    address = ""
    if router:
        if len(parts) < 2:
            raise DecodeError("router message without identity")
        identity = parts[0].bytes
        address = peer_address(parts[0])
        parts = parts[1:]
    return identity, address, decode(parts)


class Receiver(Generic[M]):
    """The one receive loop: poll, receive, decode, and count what is malformed or unexpected.

    ``recv`` returns the next message of an accepted type, or ``None`` once ``timeout_ms`` passed
    with none. A malformed message (any :class:`DecodeError`), or a well-formed one of a type the
    receiver does not accept, is counted by error type in :attr:`bad`, handed to ``on_bad`` (which
    traces the first of each type) and skipped: it never ends the loop.

    Args:
        sock: a bound or connected socket (PULL, DEALER, ...; ROUTER with ``router=True``).
        accept: the message types this end takes.
        on_bad: called with each :class:`DecodeError` (unexpected types are wrapped in one).
        where: names this end in the "unexpected message" errors (``"fusion"``).
    """

    def __init__(self, sock: zmq.Socket[Any], accept: tuple[type[M], ...], *,
                 on_bad: Callable[[DecodeError], None] | None = None, where: str = "",
                 router: bool = False) -> None:
        self.sock = sock
        self.accept = accept
        self.where = where or "this end"
        self.router = router
        self.bad: dict[str, int] = {}
        self.identity: bytes | None = None  # the sender of the last message (ROUTER only)
        self.peer_address = ""  # its IP address (TCP, ROUTER only; "" otherwise)
        self._on_bad = on_bad or (lambda e: None)
        # one poller for the socket's life: Socket.poll builds and registers a new one per call
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)

    def _count(self, err: DecodeError) -> None:
        name = type(err).__name__
        self.bad[name] = self.bad.get(name, 0) + 1
        self._on_bad(err)

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def recv(self, timeout_ms: int) -> M | None:
        """The next accepted message, or ``None`` after ``timeout_ms`` (0: only what is queued)."""
        deadline = time.monotonic() + timeout_ms / 1000
        wait = timeout_ms
        while self._poller.poll(wait):
            try:
                identity, address, msg = _recv(self.sock, self.router, zmq.NOBLOCK)
            except zmq.Again:  # pragma: no cover - poll said readable
                return None
            except DecodeError as e:
                self._count(e)
            else:
                if isinstance(msg, self.accept):
                    self.identity = identity
                    self.peer_address = address
                    return msg
                self._count(DecodeError(f"unexpected {type(msg).__name__} at {self.where}"))
            wait = max(0, int((deadline - time.monotonic()) * 1000))
        return None


def close_all(socks: Iterable[zmq.Socket[Any] | None], linger_ms: int = 0) -> None:
    for s in socks:
        if s is not None and not s.closed:
            s.close(linger_ms)


def ipc_path(address: str) -> str | None:
    """Filesystem path of an ``ipc://`` address, else ``None``."""
    if address.startswith("ipc://"):
        return address[len("ipc://"):]
    return None


def is_loopback(address: str) -> bool:
    """True for ``ipc://`` and ``tcp://`` on a loopback host (no CURVE needed there)."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = urlparse(address).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def remove_ipc_file(address: str) -> None:
    path = ipc_path(address)
    if path and os.path.exists(path):
        try:
            os.unlink(path)
        except OSError:
            pass
