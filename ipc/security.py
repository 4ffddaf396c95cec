"""A role process's security: CURVE on its TCP sockets when it holds keys, the bind policy else.

One :class:`RoleSecurity` per process, installed in :mod:`momentbus.ipc.sockets` by the role's
command (``--keys DIR``, ``--key-name NAME``, ``--insecure``); every socket the process binds or
connects goes through it:

* with keys, every ``tcp://`` bind is a CURVE server admitting exactly the client keys in
  ``DIR/clients/`` (ZAP, :class:`~momentbus.ipc.curve.CurveAuthenticator`, started before the
  first bind) and every ``tcp://`` connect a CURVE client with ``DIR/clients/NAME`` and the
  folder's server key; ``ipc://`` stays plain (it never leaves the machine, and file permissions
  guard it);
* without keys, a bind anywhere but ``ipc://`` or a loopback address is refused
  (:class:`~momentbus.ipc.curve.InsecureBindError`, exit 2) unless ``--insecure`` is given, which
  logs a warning naming the address.

A peer refused by a bind (an unknown key, no CURVE, another folder's server key) is reported
through ``on_refused`` (the role traces it: ``member``, ``event: refused``, the key's fingerprint
when known, never a secret) and gets nothing; the run goes on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from .curve import (DEFAULT_CLIENT, ClientKeys, CurveAuthenticator, configure_client,
                    is_loopback, load_client_keys, load_server_keys, require_security)

#: ``on_refused(fingerprint, address, reason)``: see :class:`~momentbus.ipc.curve.CurveAuthenticator`.
OnRefused = Callable[[str | None, str, str], None]


def is_tcp(address: str) -> bool:
    """Whether a ZeroMQ endpoint is a network transport (everything but ``ipc``/``inproc``)."""
    return address.partition("://")[0] not in ("ipc", "inproc")


class RoleSecurity:
    """What a role's sockets do about CURVE (see the module doc).

    Args:
        keys: the key folder (``momentbus keys init DIR``), or ``None``.
        key_name: the client pair this role connects with (``DIR/clients/NAME.key_secret``).
        insecure: allow a non-loopback bind without keys (warned, never silent).
        on_refused: called for each refused peer (from a background thread).

    Raises (from :meth:`check`, and from the first socket that needs them):
        KeyFileMissingError, KeyPermissionError, KeyFormatError, KeyNameError: unusable keys.
        InsecureBindError: a non-loopback bind without keys or ``insecure``.
    """

    def __init__(self, keys: str | os.PathLike[str] | None = None,
                 key_name: str = DEFAULT_CLIENT, insecure: bool = False,
                 on_refused: OnRefused | None = None) -> None:
        self.keys = Path(keys) if keys is not None else None
        self.key_name = key_name
        self.insecure = insecure
        self.on_refused: OnRefused = on_refused or (lambda fp, address, reason: None)
        self._client: ClientKeys | None = None
        self._auth: CurveAuthenticator | None = None
        self._warned: set[str] = set()

    @property
    def curve(self) -> bool:
        return self.keys is not None

    def check(self, binds: tuple[str, ...] = (), connects: bool = True) -> None:
        """Fail now, before any work, on what would fail at the first socket: the policy for
        ``binds``, the server secret if this role binds over TCP, its client pair if it
        connects."""
        for address in binds:
            require_security(address, self.keys, self.insecure)
        if self.keys is None:
            return
        if any(is_tcp(a) for a in binds):
            load_server_keys(self.keys)
        if connects:
            self.client_keys()

    def client_keys(self) -> ClientKeys:
        if self._client is None:
            assert self.keys is not None
            self._client = load_client_keys(self.keys, self.key_name)
        return self._client

    def before_bind(self, sock: zmq.Socket[Any], address: str) -> None:
        """Apply the policy to a socket about to bind ``address``."""
        policy = require_security(address, self.keys, self.insecure)
        if policy == "curve" and is_tcp(address):
            self._authenticator().secure(sock)
        elif not is_loopback(address) and address not in self._warned:
            self._warned.add(address)
            print(f"momentbus: warning: --insecure: {address} accepts anyone who can reach it, "
                  "unencrypted", file=sys.stderr, flush=True)

    def before_connect(self, sock: zmq.Socket[Any], address: str) -> None:
        """Make a socket about to connect to ``address`` a CURVE client when we hold keys."""
        if self.keys is not None and is_tcp(address):
            configure_client(sock, self.client_keys())

    def _authenticator(self) -> CurveAuthenticator:
        if self._auth is None:
            assert self.keys is not None
            self._auth = CurveAuthenticator(self.keys, self.on_refused)
            self._auth.start()
        return self._auth

    @property
    def refusals(self) -> int:
        """Refused connection attempts so far (every attempt, reported or not)."""
        return sum(self._auth.refusals.values()) if self._auth is not None else 0

    def close(self) -> None:
        """Stop the authenticator (after the sockets it guards are closed)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
