"""ipc/curve.py on one host: the key folder, the bind policy, CURVE sockets and the ZAP gate.

Over tcp://127.0.0.1 with a private zmq.Context per test (one ZAP handler per context); the
cross-namespace version of the same checks is test_netns_curve.py.
"""

from __future__ import annotations

import os
import queue
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from momentbus.ipc import curve
from momentbus.ipc.errors import IpcError

TIMEOUT_S = 10  # any single wait; a healthy loopback handshake takes ~1 ms


# ---------------------------------------------------------------------------- key folder


def test_init_writes_the_documented_layout_with_private_secrets(tmp_path):
    d = curve.init_keys(tmp_path / "keys")
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    assert files == ["clients", "clients/default.key", "clients/default.key_secret",
                     "server.key", "server.key_secret"]
    for secret in ("server.key_secret", "clients/default.key_secret"):
        assert stat.S_IMODE(os.stat(d / secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d / "clients").st_mode) == 0o700
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp")]  # no leftovers


def test_init_refuses_a_folder_that_has_keys(tmp_path):
    curve.init_keys(tmp_path)
    with pytest.raises(curve.KeyExistsError) as e:
        curve.init_keys(tmp_path)
    assert isinstance(e.value, FileExistsError) and isinstance(e.value, IpcError)
    assert e.value.path == tmp_path / "server.key"


def test_add_client_is_admitted_and_names_are_validated(tmp_path):
    curve.init_keys(tmp_path)
    path = curve.add_client(tmp_path, "ext-face_2")
    assert path == tmp_path / "clients" / "ext-face_2.key"
    assert set(curve.allowed_client_keys(tmp_path).values()) == {"default", "ext-face_2"}
    for bad in ("", "../x", "a/b", "a.b", "-x", "x" * 65, "a b"):
        with pytest.raises(curve.KeyNameError):
            curve.add_client(tmp_path, bad)
    with pytest.raises(curve.KeyExistsError):
        curve.add_client(tmp_path, "ext-face_2")
    with pytest.raises(curve.KeyFileMissingError):
        curve.add_client(tmp_path / "nowhere", "x")


def test_loaded_pairs_match_and_never_show_their_secret(tmp_path):
    curve.init_keys(tmp_path)
    server = curve.load_server_keys(tmp_path)
    client = curve.load_client_keys(tmp_path)
    assert zmq.curve_public(server.secret) == server.public
    assert zmq.curve_public(client.pair.secret) == client.pair.public
    assert client.server_public == server.public
    for text in (repr(server), str(server), repr(client)):
        assert server.secret.decode() not in text and client.pair.secret.decode() not in text
    assert server.fingerprint in repr(server)


def test_a_readable_secret_is_a_typed_error_naming_the_file(tmp_path):
    curve.init_keys(tmp_path)
    secret = tmp_path / "server.key_secret"
    os.chmod(secret, 0o644)
    with pytest.raises(curve.KeyPermissionError) as e:
        curve.load_server_keys(tmp_path)
    assert isinstance(e.value, PermissionError)
    assert str(secret) in str(e.value) and e.value.mode == 0o644
    os.chmod(secret, 0o640)  # group-readable is refused too
    with pytest.raises(curve.KeyPermissionError):
        curve.load_server_keys(tmp_path)


def test_missing_folder_or_file_is_a_typed_error(tmp_path):
    with pytest.raises(curve.KeyFileMissingError) as e:
        curve.load_server_keys(tmp_path / "none")
    assert isinstance(e.value, FileNotFoundError)
    curve.init_keys(tmp_path)
    with pytest.raises(curve.KeyFileMissingError) as e:
        curve.load_client_keys(tmp_path, "nobody")
    assert e.value.path == tmp_path / "clients" / "nobody.key_secret"
    (tmp_path / "server.key").unlink()
    with pytest.raises(curve.KeyFileMissingError):
        curve.load_client_keys(tmp_path)


def test_a_damaged_key_file_is_a_format_error(tmp_path):
    curve.init_keys(tmp_path)
    (tmp_path / "clients" / "bad.key").write_text("curve\n    public-key = \"tooshort\"\n")
    with pytest.raises(curve.KeyFormatError) as e:
        curve.allowed_client_keys(tmp_path)
    assert isinstance(e.value, ValueError) and "bad.key" in str(e.value)
    # a secret file whose halves come from two pairs
    other = curve.init_keys(tmp_path / "other")
    text = (tmp_path / "server.key_secret").read_text()
    foreign = curve.load_server_keys(other).public.decode()
    own = curve.load_server_keys(tmp_path).public.decode()
    (tmp_path / "server.key_secret").write_text(text.replace(own, foreign))
    with pytest.raises(curve.KeyFormatError, match="do not match"):
        curve.load_server_keys(tmp_path)


def test_fingerprint_is_short_stable_and_encoding_free(tmp_path):
    curve.init_keys(tmp_path)
    pub = curve.load_client_keys(tmp_path).pair.public
    fp = curve.fingerprint(pub)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert curve.fingerprint(pub.decode()) == fp == curve.fingerprint(zmq.utils.z85.decode(pub))
    with pytest.raises(curve.KeyFormatError):
        curve.fingerprint(b"short")


# ---------------------------------------------------------------------------- bind policy


@pytest.mark.parametrize("address, loopback", [
    ("ipc:///tmp/mb-frames", True), ("inproc://x", True),
    ("tcp://127.0.0.1:5550", True), ("tcp://127.1.2.3:*", True), ("tcp://localhost:5550", True),
    ("tcp://[::1]:5550", True), ("tcp://lo:5550", True), ("tcp://[::ffff:127.0.0.1]:1", True),
    ("tcp://10.200.1.1;127.0.0.1:5550", True),
    ("tcp://*:5550", False), ("tcp://0.0.0.0:5550", False), ("tcp://10.200.1.1:5550", False),
    ("tcp://eth0:5550", False), ("tcp://[::]:5550", False), ("tcp://example.org:5550", False),
    ("tcp://127.0.0.1;10.0.0.2:5550", False), ("udp://192.168.1.5:5555", False), ("bogus", False),
])
def test_is_loopback(address, loopback):
    assert curve.is_loopback(address) is loopback


def test_non_loopback_bind_needs_keys_or_insecure(tmp_path):
    with pytest.raises(curve.InsecureBindError) as e:
        curve.require_security("tcp://10.200.1.1:5550", None, insecure=False)
    assert isinstance(e.value, PermissionError)
    assert "\n" not in str(e.value) and "--insecure" in str(e.value) and "--keys" in str(e.value)
    assert curve.require_security("tcp://10.200.1.1:5550", None, insecure=True) == "none"
    assert curve.require_security("tcp://10.200.1.1:5550", tmp_path, insecure=False) == "curve"
    assert curve.require_security("tcp://127.0.0.1:5550", None, insecure=False) == "none"
    assert curve.require_security("ipc:///tmp/x", tmp_path, insecure=False) == "curve"


# ---------------------------------------------------------------------------- sockets and ZAP


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """A private context; every socket made through ``ctx.socket`` is closed at teardown."""
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def keys(tmp_path) -> Path:
    return curve.init_keys(tmp_path / "keys")


class Gate:
    """A CURVE ROUTER on loopback behind a CurveAuthenticator, refusals in a queue."""

    def __init__(self, ctx: zmq.Context[Any], keys: Path, **kw: Any) -> None:
        self.refused: queue.Queue[tuple[str | None, str, str]] = queue.Queue()
        self.allowed: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self.auth = curve.CurveAuthenticator(
            keys, on_refused=lambda *a: self.refused.put(a),
            on_allowed=lambda *a: self.allowed.put(a), context=ctx, **kw)
        self.auth.start()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.auth.secure(self.sock)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.ctx = ctx

    def client(self, keys: curve.ClientKeys | None) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            curve.configure_client(sock, keys)
        monitor = curve.handshake_monitor(sock)
        sock.connect(self.endpoint)
        return sock, monitor

    def serve_one(self) -> bytes:
        """Echo one request; returns the client's ZAP User-Id (its key's name)."""
        assert self.sock.poll(TIMEOUT_S * 1000), "no request reached the server"
        ident, body = self.sock.recv_multipart(copy=False)
        self.sock.send_multipart([ident.bytes, b"re:" + body.bytes])
        return body.get("User-Id").encode()

    def close(self) -> None:
        self.sock.close(0)
        self.auth.stop()


@pytest.fixture
def gate(ctx, keys) -> Iterator[Gate]:
    g = Gate(ctx, keys)
    yield g
    g.close()


def round_trip(gate: Gate, sock: zmq.Socket[Any]) -> tuple[bytes, bytes]:
    sock.send(b"ping")
    user = gate.serve_one()
    assert sock.poll(TIMEOUT_S * 1000), "no reply"
    return user, sock.recv()


def test_an_allowed_client_gets_through_named_by_its_key(gate, keys):
    sock, monitor = gate.client(curve.load_client_keys(keys))
    assert curve.wait_handshake(monitor, TIMEOUT_S) is None
    assert round_trip(gate, sock) == (b"default", b"re:ping")
    fp, address, name = gate.allowed.get(timeout=TIMEOUT_S)
    assert (fp, address, name) == (curve.load_client_keys(keys).pair.fingerprint, "127.0.0.1",
                                   "default")
    assert gate.refused.empty()


def test_an_unknown_key_is_refused_reported_and_gets_nothing(gate, keys, tmp_path):
    stranger = curve.init_keys(tmp_path / "stranger")
    shutil.copy(keys / "server.key", stranger / "server.key")  # right server, unknown client
    unknown = curve.load_client_keys(stranger)
    sock, monitor = gate.client(unknown)
    sock.send(b"let me in")
    assert curve.wait_handshake(monitor, TIMEOUT_S) == curve.REFUSED_BY_SERVER
    assert gate.refused.get(timeout=TIMEOUT_S) == (unknown.pair.fingerprint, "127.0.0.1",
                                                   curve.REFUSED_UNKNOWN_KEY)
    assert not gate.sock.poll(0)


def test_a_client_without_curve_is_refused_before_zap(gate):
    sock, monitor = gate.client(None)
    sock.send(b"plain")
    # the client sees the mismatch, or only the close if the server's greeting came too late
    assert curve.wait_handshake(monitor, TIMEOUT_S) in (curve.REFUSED_MECHANISM,
                                                        curve.HANDSHAKE_FAILED)
    fp, address, reason = gate.refused.get(timeout=TIMEOUT_S)
    assert (fp, address) == (None, gate.endpoint)
    assert reason in (curve.REFUSED_MECHANISM, curve.REFUSED_ABORTED)  # who closed first
    assert not gate.sock.poll(0)


def test_a_stranger_with_another_folders_server_key_is_refused(gate, tmp_path):
    other = curve.init_keys(tmp_path / "other")
    sock, monitor = gate.client(curve.load_client_keys(other))
    sock.send(b"hello?")
    assert curve.wait_handshake(monitor, TIMEOUT_S) == curve.HANDSHAKE_FAILED
    assert gate.refused.get(timeout=TIMEOUT_S) == (None, gate.endpoint,
                                                   curve.REFUSED_WRONG_SERVER_KEY)
    assert not gate.sock.poll(0)


def test_deleting_a_public_key_revokes_the_client_while_running(gate, keys):
    curve.add_client(keys, "ext-2")
    ext2 = curve.load_client_keys(keys, "ext-2")
    sock, monitor = gate.client(ext2)
    assert curve.wait_handshake(monitor, TIMEOUT_S) is None
    assert round_trip(gate, sock)[0] == b"ext-2"
    (keys / "clients" / "ext-2.key").unlink()  # revoke; ext-2 still holds its secret
    sock2, monitor2 = gate.client(ext2)
    assert curve.wait_handshake(monitor2, TIMEOUT_S) == curve.REFUSED_BY_SERVER
    assert gate.refused.get(timeout=TIMEOUT_S)[2] == curve.REFUSED_UNKNOWN_KEY


def test_repeated_refusals_are_counted_and_reported_once_per_period(ctx, keys, tmp_path):
    clock = [0.0]
    gate = Gate(ctx, keys, repeat_s=60.0, now=lambda: clock[0])
    key = (None, gate.endpoint, curve.REFUSED_WRONG_SERVER_KEY)
    other = curve.load_client_keys(curve.init_keys(tmp_path / "other"))
    try:
        sock, monitor = gate.client(other)  # retries every 100 ms by itself
        for _ in range(3):  # three refused attempts, seen on the client's own monitor
            assert curve.wait_handshake(monitor, TIMEOUT_S) == curve.HANDSHAKE_FAILED
        assert gate.refused.get(timeout=TIMEOUT_S) == key
        clock[0] = 61.0  # a period later the same refusal is reported again
        assert curve.wait_handshake(monitor, TIMEOUT_S) == curve.HANDSHAKE_FAILED
        assert gate.refused.get(timeout=TIMEOUT_S) == key
        sock.close(0)
    finally:
        gate.close()  # stop() reports what is still queued: counts are final now
    assert gate.auth.refusals[key] >= 4
    assert gate.refused.empty()  # yet only two reports


def test_failing_callbacks_do_not_change_or_stop_authentication(ctx, keys, tmp_path):
    def boom(*_: object) -> None:
        raise RuntimeError("callback bug")
    auth = curve.CurveAuthenticator(keys, on_refused=boom, on_allowed=boom, context=ctx)
    with auth:
        srv = ctx.socket(zmq.ROUTER)
        auth.secure(srv)
        srv.bind("tcp://127.0.0.1:*")
        endpoint = srv.getsockopt_string(zmq.LAST_ENDPOINT)
        stranger = curve.init_keys(tmp_path / "s")
        shutil.copy(keys / "server.key", stranger / "server.key")
        for client_keys, outcome in ((curve.load_client_keys(stranger), curve.REFUSED_BY_SERVER),
                                     (curve.load_client_keys(keys), None)):
            c = ctx.socket(zmq.DEALER)
            curve.configure_client(c, client_keys)
            monitor = curve.handshake_monitor(c)
            c.connect(endpoint)
            assert curve.wait_handshake(monitor, TIMEOUT_S) == outcome
        srv.close(0)


def test_curve_must_be_configured_before_bind(ctx, keys):
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:*")
    with pytest.raises(curve.CurveSetupError):
        curve.configure_server(sock, curve.load_server_keys(keys))
    sock.close(0)
