"""``HOST:PORT`` addresses for the HTTP endpoints (``--metrics``, ``momentbus review --bind``).

Forms: ``127.0.0.1:9464``, ``localhost:8080``, ``[::1]:9464``, ``0.0.0.0:9464``; port 0 asks the
kernel for a free port (the server reports the real one). A bind that is not loopback exposes
trace data (and, for the review page, the clips) to the network: callers require ``--token`` or
``--insecure`` for it, the same rule the ZeroMQ roles follow for non-loopback binds.
"""

from __future__ import annotations

import socket

__all__ = ["BindError", "is_loopback", "listen", "parse_bind"]


class BindError(ValueError):
    """An HTTP bind address that is malformed or cannot be bound (in use, not this host's)."""


def parse_bind(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; IPv6 hosts in brackets (``[::1]:9464``).

    Raises:
        BindError: no port, a port outside 0-65535, or an empty host.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise BindError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise BindError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:9464")
    try:
        port = int(port_text)
    except ValueError:
        raise BindError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise BindError(f"{text!r}: port {port} is outside 0-65535")
    if not host:
        raise BindError(f"{text!r}: empty host")
    return host, port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): the rule of the ZeroMQ
    binds (:func:`momentbus.ipc.curve.is_loopback`) for an HTTP host. Wildcards (``0.0.0.0``,
    ``::``) and other names are not; names are not resolved (no DNS look-up to decide a
    security question)."""
    from ..ipc.curve import is_loopback as endpoint_is_loopback

    return endpoint_is_loopback(f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0")


def listen(host: str, port: int, backlog: int = 64) -> socket.socket:
    """A listening TCP socket on ``(host, port)`` (IPv4 or IPv6 by the host's form).

    Raises:
        BindError: the address is in use or not this host's, naming the address.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise BindError(f"{host}:{port}: cannot bind ({e.strerror or e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise BindError(f"{host}:{port}: cannot bind ({e.strerror or e})") from None
    return sock
