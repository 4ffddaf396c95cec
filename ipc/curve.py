"""CURVE security for binds that leave the machine: key folder, policy, socket set-up, ZAP.

ZeroMQ's CURVE (RFC 26/CurveZMQ, libzmq ``zmq_curve(7)``) encrypts and authenticates a TCP
connection with long-term Curve25519 key pairs; who may connect is decided by a ZAP handler
(RFC 27/ZAP) that sees each client's public key. This module owns every CURVE and ZAP call.

Key folder (``momentbus keys init DIR``; the same folder copied to every host is the whole set-up)::

    DIR/                        0700 (created so)
      server.key                server public key        (every connecting role reads it)
      server.key_secret         server secret key, 0600  (every binding role reads it)
      clients/                  0700
        default.key             a client's public key: a bind admits exactly the *.key here
        default.key_secret      that client's key pair, 0600 (a connecting role reads its own)
        NAME.key, NAME.key_secret   added by ``momentbus keys add DIR NAME``

Files are pyzmq certificates (``zmq.auth.create_certificates``: z85 keys in a text file). A
``.key_secret`` file also holds its public key, so a connecting host needs only ``server.key``
and its own ``clients/NAME.key_secret``; a binding host needs ``server.key_secret`` and the
``clients/*.key`` it admits. **Revoking a client is deleting its ``clients/NAME.key``** on the
binding hosts: the authenticator re-reads ``clients/`` on every handshake, so running roles refuse
that client from its next connection on (an established CURVE session is not re-checked; restart
the binding role to cut it). A role holding a folder from another ``keys init`` is a stranger: its
server key does not match, so its handshake fails before any key of its own is seen.

Secrets: written 0600 (inside a 0700 temporary folder, then linked into place, so never readable
by others even for a moment); a secret file readable by group or others is refused when loaded
(:class:`KeyPermissionError`, like OpenSSH's "UNPROTECTED PRIVATE KEY FILE"). Secret keys never
appear in ``repr``, errors, logs or traces: peers are named by :func:`fingerprint` of their
*public* key.

Policy (:func:`require_security`): a bind on anything but ``ipc://``, ``inproc://`` or a loopback
host needs keys, or an explicit ``--insecure``.

Refused peers (:class:`CurveAuthenticator`): an unknown client key is refused by ZAP (its
fingerprint and IP address are known); a client without CURVE, or holding another folder's server
key, fails the handshake before ZAP runs, so libzmq reports it only as a monitor event on the
bound socket, with neither key nor peer address (the address reported is the bound endpoint).
Both ends see a mechanism mismatch in the greetings; whichever closes first, the other sees only
the close, so a client without CURVE is reported as ``mechanism_mismatch`` or
``handshake_aborted`` (seen both ways across a veth link).
Measured with libzmq 4.3.5: a client refused by ZAP, or that sees the mechanism mismatch, does
not retry; a client that only sees the connection close (the wrong server key, always) reconnects
every ``ZMQ_RECONNECT_IVL`` (100 ms by default: 7-9 attempts a second), so reports are
rate-limited per (fingerprint, address, reason) (``repeat_s``) and every attempt is counted
(:attr:`CurveAuthenticator.refusals`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import zmq
from zmq.auth.certs import create_certificates, load_certificate
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from .errors import IpcError, PeerTimeoutError

__all__ = [
    "CLIENTS_DIR", "DEFAULT_CLIENT", "PUBLIC_SUFFIX", "SECRET_SUFFIX", "SERVER_NAME", "ZAP_DOMAIN",
    "REFUSED_UNKNOWN_KEY", "REFUSED_MECHANISM", "REFUSED_WRONG_SERVER_KEY", "REFUSED_PROTOCOL",
    "REFUSED_ABORTED", "REFUSED_KEY_FOLDER", "REFUSED_BY_SERVER", "HANDSHAKE_FAILED",
    "SecurityError", "KeyFileMissingError", "KeyPermissionError", "KeyFormatError",
    "KeyExistsError", "KeyNameError", "InsecureBindError", "CurveSetupError",
    "KeyPair", "ClientKeys", "init_keys", "add_client", "load_server_keys", "load_client_keys",
    "allowed_client_keys", "PeerRefusedError", "fingerprint", "is_loopback", "require_security",
    "configure_server", "configure_client", "handshake_failure_reason", "HANDSHAKE_EVENTS",
    "handshake_monitor", "wait_handshake", "CurveAuthenticator", "HandshakeWatch",
    "refusal_text",
    "OnRefused", "OnAllowed",
]

log = logging.getLogger("momentbus.ipc.curve")

SERVER_NAME = "server"
CLIENTS_DIR = "clients"
DEFAULT_CLIENT = "default"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: ZAP domain set on every CURVE server socket; the authenticator answers for this domain only.
ZAP_DOMAIN = "momentbus"

#: Client names: a letter or digit, then letters, digits, ``_`` or ``-``; at most 64 characters
#: (they become file names and trace fields, so no dots, slashes or spaces).
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: A z85-encoded Curve25519 key: 32 bytes -> 40 characters (RFC 32/Z85).
_Z85_KEY_LEN = 40

# Refusal reasons (``on_refused``'s third argument, and trace ``reason`` values).
REFUSED_UNKNOWN_KEY = "unknown_key"          # ZAP: a valid CURVE client whose key is not allowed
REFUSED_MECHANISM = "mechanism_mismatch"     # the peer speaks no CURVE (NULL/PLAIN) or vice versa
REFUSED_WRONG_SERVER_KEY = "wrong_server_key"  # the client's HELLO did not decrypt: a stranger
REFUSED_PROTOCOL = "protocol_error"          # any other ZMTP/ZAP protocol error
REFUSED_ABORTED = "handshake_aborted"        # the peer closed mid-handshake (a client without
#                                              CURVE that noticed first, or a port scan)
REFUSED_KEY_FOLDER = "key_folder_unreadable"  # fail closed: the allowed keys could not be read
# Client-side outcomes (handshake_failure_reason on a connecting socket's monitor).
REFUSED_BY_SERVER = "refused_by_server"      # the server's ZAP said no (our key is not allowed)
HANDSHAKE_FAILED = "handshake_failed"        # the server dropped the handshake (wrong server key?)

OnRefused = Callable[[str | None, str, str], None]
OnAllowed = Callable[[str, str, str], None]


# ---------------------------------------------------------------------------------- errors


class SecurityError(IpcError):
    """Base class of key-folder, policy and CURVE set-up errors; ``.path``: the file concerned
    (or ``None``). Messages are one line and never hold a secret."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class KeyFileMissingError(SecurityError, FileNotFoundError):
    """The key folder or a key file in it does not exist (``.path`` names it)."""


class KeyPermissionError(SecurityError, PermissionError):
    """A secret key file is readable by group or others (``.path``, ``.mode``)."""

    mode: int = 0


class KeyFormatError(SecurityError, ValueError):
    """A key file is not a CURVE certificate, or its public and secret keys do not match."""


class KeyExistsError(SecurityError, FileExistsError):
    """``init_keys`` on a folder that has keys, or ``add_client`` for a name that exists."""


class KeyNameError(SecurityError, ValueError):
    """A client name that is not ``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``."""


class InsecureBindError(SecurityError, PermissionError):
    """A bind on a non-loopback address without keys and without ``--insecure``."""


class PeerRefusedError(SecurityError, ConnectionRefusedError):
    """The peer we connect to refused our handshake (our key is not admitted there, we hold
    another folder's server key, or one side has no CURVE): retrying cannot help."""


class CurveSetupError(SecurityError, ValueError):
    """A socket was configured for CURVE after it was bound or connected, or without a secret."""


def _missing(path: Path, what: str) -> KeyFileMissingError:
    return KeyFileMissingError(
        f"{what} not found: {path} (make a key folder with `momentbus keys init DIR`)", path=path)


# ---------------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, keys z85-encoded (40 ASCII bytes each, 32-byte Curve25519 keys).

    ``repr`` shows the name and public fingerprint, never the secret.
    """

    name: str
    public: bytes
    secret: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def __repr__(self) -> str:
        return f"KeyPair(name={self.name!r}, fingerprint={self.fingerprint!r})"


@dataclass(frozen=True)
class ClientKeys:
    """What a connecting role needs: its own pair and the server's public key (z85)."""

    pair: KeyPair
    server_public: bytes

    def __repr__(self) -> str:
        return (f"ClientKeys(name={self.pair.name!r}, fingerprint={self.pair.fingerprint!r}, "
                f"server={fingerprint(self.server_public)!r})")


def fingerprint(public_key: bytes | str) -> str:
    """Short, stable name of a *public* key: the first 16 hex digits of SHA-256 of its 32 bytes.

    Accepts the z85 text (40 characters, as in key files and pyzmq's ZAP callbacks) or the raw
    32 bytes (as in ZAP requests); both give the same fingerprint. 64 bits tell a folder's keys
    apart; they authenticate nothing (CURVE checks the full key).

    Raises:
        KeyFormatError: not a 32-byte key in either encoding.
    """
    raw = _raw_key(public_key)
    return sha256(raw).hexdigest()[:16]


def _raw_key(key: bytes | str) -> bytes:
    data = key.encode("ascii", "replace") if isinstance(key, str) else bytes(key)
    if len(data) == 32:
        return data
    if len(data) == _Z85_KEY_LEN:
        try:
            raw = z85.decode(data)
        except (ValueError, KeyError, TypeError):
            raise KeyFormatError("not a z85-encoded CURVE key") from None
        if len(raw) == 32:
            return raw
    raise KeyFormatError(f"not a CURVE key ({len(data)} bytes; want 32 raw or 40 z85)")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise KeyNameError(f"bad client name {name!r}: use 1-64 letters, digits, '_' or '-', "
                           "starting with a letter or digit")
    return name


def _write_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (0644) and ``name.key_secret`` (0600) into ``directory``, never
    overwriting. The files are made in a private temporary folder and linked into place."""
    public_dst = directory / f"{name}{PUBLIC_SUFFIX}"
    secret_dst = directory / f"{name}{SECRET_SUFFIX}"
    for dst in (public_dst, secret_dst):
        if os.path.lexists(dst):
            raise KeyExistsError(f"key file exists: {dst}", path=dst)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-keys-", dir=directory))  # 0700
    try:
        public_tmp, secret_tmp = (Path(p) for p in create_certificates(tmp, name))
        os.chmod(secret_tmp, 0o600)
        os.chmod(public_tmp, 0o644)
        _place(secret_tmp, secret_dst)
        try:
            _place(public_tmp, public_dst)
        except BaseException:
            secret_dst.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return public_dst, secret_dst


def _place(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` atomically without replacing an existing ``dst``."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise KeyExistsError(f"key file exists: {dst}", path=dst) from None
    except OSError:  # a filesystem without hard links: check, then rename (single-user race)
        if os.path.lexists(dst):
            raise KeyExistsError(f"key file exists: {dst}", path=dst) from None
        os.rename(src, dst)


def init_keys(directory: str | os.PathLike[str]) -> Path:
    """Create a key folder: the server pair and the ``default`` client pair (layout above).

    The folder is created 0700 if missing; an existing folder must not hold a server key.

    Returns:
        The folder's path.
    Raises:
        KeyExistsError: ``DIR/server.key`` or ``DIR/server.key_secret`` already exists.
        OSError: the folder cannot be created or written.
    """
    d = Path(directory)
    for f in (d / f"{SERVER_NAME}{PUBLIC_SUFFIX}", d / f"{SERVER_NAME}{SECRET_SUFFIX}"):
        if os.path.lexists(f):
            raise KeyExistsError(f"{d} already holds keys ({f.name}); use `momentbus keys add "
                                 "DIR NAME` for more clients", path=f)
    if not d.exists():
        d.mkdir(parents=True, mode=0o700)
        os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
    clients = d / CLIENTS_DIR
    if not clients.exists():
        clients.mkdir(mode=0o700)
        os.chmod(clients, 0o700)
    _write_pair(d, SERVER_NAME)
    _write_pair(clients, DEFAULT_CLIENT)
    return d


def add_client(directory: str | os.PathLike[str], name: str) -> Path:
    """Add client pair ``NAME`` to a key folder made by :func:`init_keys`.

    Copy the updated folder (or just ``clients/NAME.key``) to the binding hosts; their running
    roles admit the new key from its next handshake on.

    Returns:
        Path of the new public key file ``DIR/clients/NAME.key``.
    Raises:
        KeyNameError: ``name`` is not a valid client name.
        KeyFileMissingError: ``DIR`` has no server key (not a key folder).
        KeyExistsError: the client exists.
    """
    _check_name(name)
    d = Path(directory)
    server_public = d / f"{SERVER_NAME}{PUBLIC_SUFFIX}"
    if not server_public.is_file():
        raise _missing(server_public, "server public key")
    clients = d / CLIENTS_DIR
    if not clients.exists():
        clients.mkdir(mode=0o700)
        os.chmod(clients, 0o700)
    public, _ = _write_pair(clients, name)
    return public


def _read_cert(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """``(public, secret)`` z85 keys of a certificate; checks a secret file's mode and pair."""
    if not path.is_file():
        raise _missing(path, "secret key" if secret else "public key")
    if secret:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            e = KeyPermissionError(f"secret key {path} is readable by others (mode {mode:04o}); "
                                   f"run: chmod 600 {path}", path=path)
            e.mode = mode
            raise e
    try:
        public, secret_key = load_certificate(path)
    except (OSError, ValueError, IndexError) as exc:
        raise KeyFormatError(f"not a CURVE certificate: {path} ({type(exc).__name__})",
                             path=path) from None
    try:
        raw_public = _raw_key(public)
        if secret:
            if secret_key is None:
                raise KeyFormatError("no secret-key")
            if zmq.curve_public(z85.encode(_raw_key(secret_key))) != z85.encode(raw_public):
                raise KeyFormatError("public and secret keys do not match")
    except KeyFormatError as exc:
        raise KeyFormatError(f"bad CURVE certificate {path}: {exc}", path=path) from None
    return public, secret_key


def load_server_keys(directory: str | os.PathLike[str]) -> KeyPair:
    """The server pair, for binds (``DIR/server.key_secret``).

    Raises:
        KeyFileMissingError: the folder or the file is missing.
        KeyPermissionError: the secret file is readable by group or others.
        KeyFormatError: the file is not a valid certificate.
    """
    d = Path(directory)
    if not d.is_dir():
        raise _missing(d, "key folder")
    path = d / f"{SERVER_NAME}{SECRET_SUFFIX}"
    public, secret = _read_cert(path, secret=True)
    assert secret is not None
    return KeyPair(SERVER_NAME, public, secret)


def load_client_keys(directory: str | os.PathLike[str], name: str = DEFAULT_CLIENT) -> ClientKeys:
    """Client pair ``name`` and the server's public key, for connects (``--key-name``).

    Raises:
        KeyNameError, KeyFileMissingError, KeyPermissionError, KeyFormatError: as for
        :func:`load_server_keys`, for ``DIR/clients/NAME.key_secret`` and ``DIR/server.key``.
    """
    _check_name(name)
    d = Path(directory)
    if not d.is_dir():
        raise _missing(d, "key folder")
    public, secret = _read_cert(d / CLIENTS_DIR / f"{name}{SECRET_SUFFIX}", secret=True)
    assert secret is not None
    server_public, _ = _read_cert(d / f"{SERVER_NAME}{PUBLIC_SUFFIX}", secret=False)
    return ClientKeys(KeyPair(name, public, secret), server_public)


def allowed_client_keys(directory: str | os.PathLike[str]) -> dict[bytes, str]:
    """The client public keys a bind admits: ``{z85 public key: client name}`` from
    ``DIR/clients/*.key`` (``.key_secret`` files are not read; an empty folder admits nobody).

    Raises:
        KeyFileMissingError: ``DIR/clients`` does not exist.
        KeyFormatError: a ``.key`` file is not a valid certificate.
    """
    clients = Path(directory) / CLIENTS_DIR
    if not clients.is_dir():
        raise _missing(clients, "client key folder")
    allowed: dict[bytes, str] = {}
    for path in sorted(clients.glob(f"*{PUBLIC_SUFFIX}")):
        public, _ = _read_cert(path, secret=False)
        allowed[z85.encode(_raw_key(public))] = path.name[: -len(PUBLIC_SUFFIX)]
    return allowed


# ---------------------------------------------------------------------------------- policy


def _host_of(address: str) -> tuple[str, str]:
    """``(transport, host)`` of a ZeroMQ endpoint; for ``tcp://SRC;HOST:PORT`` the HOST."""
    transport, sep, rest = address.partition("://")
    if not sep:
        return "", address
    rest = rest.rsplit(";", 1)[-1]
    if rest.startswith("["):
        return transport, rest[1:].partition("]")[0]
    return transport, rest.rpartition(":")[0] if ":" in rest else rest


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine: ``ipc://``, ``inproc://``, or a TCP (or
    other IP transport) endpoint on a loopback address (127.0.0.0/8, ``::1``, ``localhost``, the
    ``lo`` interface). ``*``, ``0.0.0.0``, other interfaces and other host names are not."""
    transport, host = _host_of(address)
    if transport in ("ipc", "inproc"):
        return True
    if not transport or not host:
        return False
    if host in ("localhost", "lo"):
        return True
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def require_security(address: str, keys: str | os.PathLike[str] | None,
                     insecure: bool) -> Literal["curve", "none"]:
    """The policy for a bind: CURVE with keys, else plain only on loopback or with ``insecure``.

    Returns:
        ``"curve"`` when ``keys`` is given (binds then use CURVE wherever they are), ``"none"``
        for a loopback bind without keys or an explicit ``insecure``.
    Raises:
        InsecureBindError: a non-loopback bind without keys and without ``insecure`` (one line,
        for the CLI to print and exit 2).
    """
    if keys is not None:
        return "curve"
    if insecure or is_loopback(address):
        return "none"
    raise InsecureBindError(
        f"refusing to bind {address} without CURVE keys: give --keys DIR "
        "(made by `momentbus keys init DIR`) or --insecure")


# ---------------------------------------------------------------------------------- sockets


def _not_yet_used(sock: zmq.Socket[Any], what: str) -> None:
    if sock.getsockopt(zmq.LAST_ENDPOINT):
        raise CurveSetupError(f"configure CURVE {what} before bind/connect")


def configure_server(sock: zmq.Socket[Any], server: KeyPair, *, domain: str = ZAP_DOMAIN) -> None:
    """Make ``sock`` a CURVE server with ``server``'s pair, its ZAP domain set (before bind).

    Without a running :class:`CurveAuthenticator` in the socket's context libzmq admits *any*
    client key (ZAP absent = allow); start one first (or use :meth:`CurveAuthenticator.secure`).

    Raises:
        CurveSetupError: the socket is already bound or connected.
    """
    _not_yet_used(sock, "server")
    sock.setsockopt(zmq.CURVE_SECRETKEY, server.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, server.public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def configure_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    """Make ``sock`` a CURVE client with its pair and the server's public key (before connect).

    Raises:
        CurveSetupError: the socket is already bound or connected.
    """
    _not_yet_used(sock, "client")
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.pair.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.pair.secret)


def handshake_failure_reason(event: int, value: int) -> str | None:
    """A refusal reason for a socket monitor event, or ``None`` if it is no handshake failure.

    ``HANDSHAKE_FAILED_PROTOCOL`` values are ZMTP error codes (``zmq_socket_monitor(3)``):
    ``ZMTP_MECHANISM_MISMATCH`` -> :data:`REFUSED_MECHANISM`, ``ZMTP_CRYPTOGRAPHIC`` (on a server:
    the client's HELLO did not decrypt with our key) -> :data:`REFUSED_WRONG_SERVER_KEY`, others
    -> :data:`REFUSED_PROTOCOL`. ``HANDSHAKE_FAILED_AUTH`` (ZAP status, on a client: the server
    refused our key) -> :data:`REFUSED_BY_SERVER`; ``HANDSHAKE_FAILED_NO_DETAIL`` (the peer closed
    mid-handshake; a client holding the wrong server key sees this, and so may a client without
    CURVE when the server closes before its greeting is read) -> :data:`HANDSHAKE_FAILED`.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return REFUSED_MECHANISM
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return REFUSED_WRONG_SERVER_KEY
        return REFUSED_PROTOCOL
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return REFUSED_BY_SERVER
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return HANDSHAKE_FAILED
    return None


#: Monitor events that end a handshake, for :func:`handshake_monitor`.
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def handshake_monitor(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """A PAIR socket receiving ``sock``'s handshake outcomes (call before connect, in the
    thread that owns ``sock``). Close it after ``sock.disable_monitor()``."""
    monitor: zmq.Socket[Any] = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    monitor.setsockopt(zmq.LINGER, 0)
    return monitor


def wait_handshake(monitor: zmq.Socket[Any], timeout_s: float) -> str | None:
    """Wait for the first handshake outcome on a :func:`handshake_monitor` socket.

    Lets a connecting role tell "refused" (exit with a clear line) from "server not there yet".

    Returns:
        ``None`` when the handshake succeeded, else the reason (:func:`handshake_failure_reason`:
        :data:`REFUSED_BY_SERVER`, :data:`HANDSHAKE_FAILED`, :data:`REFUSED_MECHANISM`, ...).
    Raises:
        PeerTimeoutError: no handshake ended within ``timeout_s`` (no server, or unreachable).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0 or not monitor.poll(left_ms):
            raise PeerTimeoutError(f"no CURVE handshake within {timeout_s:g} s")
        event = recv_monitor_message(monitor)
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return None
        reason = handshake_failure_reason(event["event"], event["value"])
        if reason is not None:
            return reason


def refusal_text(peer: str, address: str, reason: str, have_keys: bool) -> str:
    """One line telling a user why ``peer`` (``"the daemon"``, ``"fusion"``) at ``address``
    refused this role's handshake, and what to do about it."""
    if not have_keys:
        return (f"{peer} at {address} requires CURVE ({reason}): give --keys DIR, a copy "
                "of its key folder")
    if reason == REFUSED_BY_SERVER:
        return (f"{peer} at {address} refused our key: it does not admit this client "
                "(copy its public key DIR/clients/NAME.key to its key folder)")
    if reason == REFUSED_MECHANISM:
        return (f"{peer} at {address} and this role disagree on CURVE: give both --keys "
                "DIR (or both --insecure)")
    return (f"the CURVE handshake with {peer} at {address} failed ({reason}): is --keys the "
            "folder it uses (the same `momentbus keys init`)?")


class HandshakeWatch:
    """Tells a server that refuses a connecting socket's CURVE handshake from one that is not
    there yet (tcp only: ipc has no handshake to refuse).

    Pass :meth:`attach` as ``before_connect`` to :func:`~momentbus.ipc.sockets.connect`, call
    :meth:`check` while waiting for the first answer, :meth:`close` once answered.
    """

    def __init__(self, peer: str, address: str) -> None:
        self.peer = peer
        self.address = address
        self._sock: zmq.Socket[Any] | None = None
        self._monitor: zmq.Socket[Any] | None = None
        self._failures: list[str] = []

    def attach(self, sock: zmq.Socket[Any]) -> None:
        from .security import is_tcp  # security imports this module

        if is_tcp(self.address):
            self._sock = sock
            self._monitor = handshake_monitor(sock)

    def check(self, have_keys: bool) -> None:
        """Raise when the peer keeps refusing our handshake.

        Raises:
            PeerRefusedError: a refusal by ZAP or a mechanism mismatch (final: libzmq does not
                retry), or three closed handshakes in a row (what a wrong server key looks
                like; libzmq retries those).
        """
        if self._monitor is None:
            return
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._failures.clear()
                continue
            reason = handshake_failure_reason(event["event"], event["value"])
            if reason is not None:
                self._failures.append(reason)
        failures = self._failures
        if failures and (failures[-1] != HANDSHAKE_FAILED or len(failures) >= 3):
            raise PeerRefusedError(refusal_text(self.peer, self.address, failures[-1],
                                                have_keys))

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._monitor is not None and self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._monitor.close(0)
        self._monitor = self._sock = None


# ---------------------------------------------------------------------------------- ZAP


class _Zap(ThreadAuthenticator):
    """pyzmq's threaded ZAP handler, remembering each request's peer address for the decision."""

    def __init__(self, context: zmq.Context[Any], owner: CurveAuthenticator) -> None:
        super().__init__(context=context, log=logging.getLogger("momentbus.ipc.curve.zap"))
        self._owner = owner
        self._peer = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # ZAP request frames (RFC 27): version, request id, domain, address, identity, mechanism,
        # credentials... The decision runs in this same coroutine, so one slot is enough.
        self._peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        # the ZAP User-Id (message property "User-Id" on the server side): the client's name
        return self._owner._name_of(client_public_key)


class _Provider:
    def __init__(self, owner: CurveAuthenticator, zap: _Zap) -> None:
        self._owner, self._zap = owner, zap

    def callback(self, domain: str, z85_key: bytes) -> bool:
        return self._owner._decide(z85_key, self._zap._peer)


_MONITORED = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_MONITOR_STOPPED)


class CurveAuthenticator:
    """Admit exactly the client keys in ``DIR/clients/*.key``; report every refused peer.

    Wraps :class:`zmq.auth.thread.ThreadAuthenticator` (one ZAP handler per context: it binds
    ``inproc://zeromq.zap.01``), plus one thread reading monitor events of the sockets given to
    :meth:`watch`, for peers refused before ZAP runs. Use as a context manager, started before the
    first CURVE bind::

        with CurveAuthenticator(keys_dir, on_refused=report) as auth:
            sock = ctx.socket(zmq.ROUTER)
            auth.secure(sock)              # CURVE server + watched
            sock.bind("tcp://10.0.0.1:5550")

    Args:
        directory: the key folder (read again on every handshake: deleting ``clients/NAME.key``
            revokes NAME from its next connection on).
        on_refused: ``on_refused(fingerprint, address, reason)``: ``fingerprint`` of the client's
            public key or ``None`` when the handshake failed before it was sent; ``address`` the
            peer's IP (ZAP) or the bound endpoint (monitor); ``reason`` one of the ``REFUSED_*``
            strings. Called from a background thread, never concurrently with itself, at most
            once per (fingerprint, address, reason) every ``repeat_s`` seconds; exceptions are
            logged, never propagated (a dead ZAP thread would hang every handshake).
        on_allowed: optional ``on_allowed(fingerprint, address, client_name)`` per admitted
            handshake (same thread rules).
        context: the sockets' context (default ``zmq.Context.instance()``).
        repeat_s: minimum seconds between two reports of the same refusal (a client holding the
            wrong server key retries every 100 ms).
        now: monotonic clock in seconds (injected for tests).

    Raises (at construction):
        KeyFileMissingError, KeyFormatError: the folder has no readable ``clients/``.
    """

    def __init__(self, directory: str | os.PathLike[str], on_refused: OnRefused, *,
                 on_allowed: OnAllowed | None = None,
                 context: zmq.Context[Any] | None = None, repeat_s: float = 60.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self._allowed = allowed_client_keys(self.directory)  # fail early on a bad folder
        self._on_refused = on_refused
        self._on_allowed = on_allowed
        self.context: zmq.Context[Any] = context or zmq.Context.instance()
        self.repeat_s = repeat_s
        self._now = now
        self._lock = threading.Lock()
        self._last: dict[tuple[str | None, str, str], float] = {}
        #: every refused attempt, by (fingerprint, address, reason), reported or not
        self.refusals: Counter[tuple[str | None, str, str]] = Counter()
        self._zap: _Zap | None = None
        self._ctl: zmq.Socket[Any] | None = None
        self._ctl_lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._watched = 0

    # -- lifecycle

    def start(self) -> None:
        """Start the ZAP handler and the monitor thread (idempotent)."""
        if self._zap is not None:
            return
        zap = _Zap(self.context, self)
        zap.start()
        zap.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_Provider(self, zap))
        self._zap = zap
        endpoint = f"inproc://momentbus.curve.{id(self)}.ctl"
        ctl: zmq.Socket[Any] = self.context.socket(zmq.PAIR)
        ctl.setsockopt(zmq.LINGER, 0)
        ctl.bind(endpoint)
        self._ctl = ctl
        self._monitor = threading.Thread(target=self._monitor_loop, args=(endpoint,),
                                         name="momentbus-curve-monitor", daemon=True)
        self._monitor.start()
        self._command([b"PING"])

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop both threads and close their sockets (idempotent)."""
        if self._ctl is not None:
            try:
                self._command([b"STOP"], timeout_s)
            finally:
                if self._monitor is not None:
                    self._monitor.join(timeout_s)
                self._ctl.close(0)
                self._ctl = None
                self._monitor = None
        if self._zap is not None:
            self._zap.stop()
            self._zap = None

    def __enter__(self) -> CurveAuthenticator:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- sockets

    def secure(self, sock: zmq.Socket[Any]) -> None:
        """:func:`configure_server` with the folder's server pair, then :meth:`watch` (before
        bind).

        Raises:
            KeyFileMissingError, KeyPermissionError, KeyFormatError: no usable server secret.
            CurveSetupError: the socket is already bound.
        """
        configure_server(sock, load_server_keys(self.directory))
        self.watch(sock)

    def watch(self, sock: zmq.Socket[Any]) -> None:
        """Report handshakes on ``sock`` that fail before ZAP (no CURVE, wrong server key).

        Call from the thread that owns ``sock``, before it binds; the monitor stops when the
        socket is closed.

        Raises:
            RuntimeError: the authenticator is not started.
        """
        if self._ctl is None:
            raise RuntimeError("CurveAuthenticator.watch before start()")
        self._watched += 1
        endpoint = f"inproc://momentbus.curve.{id(self)}.mon{self._watched}"
        sock.monitor(endpoint, _MONITORED)
        self._command([b"WATCH", endpoint.encode()])

    def _command(self, msg: list[bytes], timeout_s: float = 5.0) -> None:
        with self._ctl_lock:
            assert self._ctl is not None
            self._ctl.send_multipart(msg)
            if not self._ctl.poll(int(timeout_s * 1000)):
                raise RuntimeError(f"curve monitor thread did not answer {msg[0]!r}")
            self._ctl.recv()

    def _monitor_loop(self, ctl_endpoint: str) -> None:
        ctl: zmq.Socket[Any] = self.context.socket(zmq.PAIR)
        ctl.setsockopt(zmq.LINGER, 0)
        ctl.connect(ctl_endpoint)
        poller = zmq.Poller()
        poller.register(ctl, zmq.POLLIN)
        monitors: dict[zmq.Socket[Any], str] = {}
        try:
            while True:
                for s, _ in poller.poll():
                    if s is ctl:
                        cmd = ctl.recv_multipart()
                        if cmd[0] == b"STOP":  # report what is queued, then leave
                            for mon in list(monitors):
                                while mon in monitors and mon.poll(0):
                                    self._on_monitor_event(mon, monitors, poller)
                            ctl.send(b"OK")
                            return
                        if cmd[0] == b"WATCH":
                            watcher: zmq.Socket[Any] = self.context.socket(zmq.PAIR)
                            watcher.setsockopt(zmq.LINGER, 0)
                            watcher.connect(cmd[1].decode())
                            poller.register(watcher, zmq.POLLIN)
                            monitors[watcher] = cmd[1].decode()
                        ctl.send(b"OK")
                        continue
                    self._on_monitor_event(s, monitors, poller)
        except Exception:  # never silent: this thread only reports; the run goes on
            log.exception("curve monitor thread failed")
        finally:
            for s in monitors:
                s.close(0)
            ctl.close(0)

    def _on_monitor_event(self, mon: zmq.Socket[Any], monitors: dict[zmq.Socket[Any], str],
                          poller: zmq.Poller) -> None:
        event = recv_monitor_message(mon)
        if event["event"] == zmq.EVENT_MONITOR_STOPPED:  # the watched socket was closed
            poller.unregister(mon)
            monitors.pop(mon, None)
            mon.close(0)
            return
        reason = handshake_failure_reason(event["event"], event["value"])
        if reason == HANDSHAKE_FAILED:  # on a server: the peer left mid-handshake
            reason = REFUSED_ABORTED
        if reason is not None:
            endpoint = event["endpoint"]
            address = (endpoint.decode("utf-8", "replace") if isinstance(endpoint, bytes)
                       else str(endpoint))
            self._report(None, address, reason)

    # -- decisions (ZAP thread)

    def _name_of(self, client_public_key: bytes) -> str:
        try:
            return self._allowed.get(z85.encode(_raw_key(client_public_key)), "unknown")
        except KeyFormatError:
            return "unknown"

    def _decide(self, z85_key: bytes, address: str) -> bool:
        try:
            try:
                self._allowed = allowed_client_keys(self.directory)
            except (SecurityError, OSError) as exc:
                log.error("key folder unreadable, refusing every client: %s", exc)
                self._report(fingerprint(z85_key), address, REFUSED_KEY_FOLDER)
                return False
            name = self._allowed.get(bytes(z85_key))
            if name is None:
                self._report(fingerprint(z85_key), address, REFUSED_UNKNOWN_KEY)
                return False
            if self._on_allowed is not None:
                with self._lock:
                    try:
                        self._on_allowed(fingerprint(z85_key), address, name)
                    except Exception:  # a reporting bug must not refuse an allowed client
                        log.exception("on_allowed callback failed")
            return True
        except Exception:
            log.exception("ZAP decision failed; refusing")
            return False

    def _report(self, fp: str | None, address: str, reason: str) -> None:
        key = (fp, address, reason)
        with self._lock:
            self.refusals[key] += 1
            now = self._now()
            last = self._last.get(key)
            if last is not None and now - last < self.repeat_s:
                return
            self._last[key] = now
            try:
                self._on_refused(fp, address, reason)
            except Exception:
                log.exception("on_refused callback failed")
