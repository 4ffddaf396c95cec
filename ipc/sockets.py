"""Socket wrappers: the only place (with the frame bus) that calls ZeroMQ.

Sockets are created in the thread/process that uses them and closed with ``linger=0`` unless a
caller asks for a flush window (trace records at exit). Every send and receive goes through
:func:`send` / :func:`recv`, so every message on the wire is a typed, validated
:class:`~momentbus.ipc.schema.Message`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

import zmq

from .errors import DecodeError
from .schema import Message, decode, encode

#: Send/receive high-water mark for message sockets (messages). Frames never queue here: the
#: frame bus's credits bound them. 1000 observations ~ 40 s of one extractor at 25 fps.
DEFAULT_HWM = 1000


def context() -> zmq.Context[Any]:
    """The process's shared ZeroMQ context (``zmq.Context.instance()``)."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    return ctx


def make_socket(kind: int, *, hwm: int = DEFAULT_HWM, linger_ms: int = 0) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = context().socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


def bind(kind: int, address: str, **kw: Any) -> zmq.Socket[Any]:
    """A socket of ``kind`` bound to ``address`` (``ipc://PATH`` or ``tcp://HOST:PORT``).

    Raises:
        zmq.ZMQError: the address is in use or malformed (callers turn it into a user error).
    """
    sock = make_socket(kind, **kw)
    try:
        sock.bind(address)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock


def connect(kind: int, address: str, **kw: Any) -> zmq.Socket[Any]:
    sock = make_socket(kind, **kw)
    sock.connect(address)
    return sock


def send(sock: zmq.Socket[Any], msg: Message, *, identity: bytes | None = None, flags: int = 0) -> None:
    """Send ``msg`` as ``[identity?, kind, header, *payload]``; payloads are not copied."""
    parts: list[Any] = encode(msg)
    if identity is not None:
        parts.insert(0, identity)
    sock.send_multipart(parts, flags=flags, copy=False)


def try_send(sock: zmq.Socket[Any], msg: Message) -> bool:
    """Non-blocking send; ``False`` when the peer's HWM is reached (the caller counts the drop)."""
    try:
        send(sock, msg, flags=zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def recv(sock: zmq.Socket[Any], *, router: bool = False, flags: int = 0) -> tuple[bytes | None, Message]:
    """Receive and decode one message; ``(identity, msg)`` (``identity`` only for ROUTER).

    Raises:
        DecodeError: the message is malformed (the caller counts and traces it, and goes on).
        zmq.Again: with ``flags=zmq.NOBLOCK`` and nothing queued.
    """
    parts = sock.recv_multipart(flags=flags, copy=False)
    identity = None
    if router:
        if len(parts) < 2:
            raise DecodeError("router message without identity")
        identity = parts[0].bytes
        parts = parts[1:]
    return identity, decode(parts)


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
