"""CURVE across real network namespaces: hosts on one machine joined by veth (tests/netns.py).

The server runs in namespace a and binds ``tcp://10.200.X.1:*``; clients run in namespace b, so
every byte crosses a veth link and the bind is not loopback. Each role is a real process
(tests/curve_peer.py) printing JSON lines; the test waits on those lines with timeouts and on
the handshake outcomes each client sees on its own socket monitor (never a sleep). Skipped
without root or ``ip netns``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from momentbus.ipc import curve
from netns import Host, Netns, netns_hosts, two_hosts, unavailable_reason
from proc_lines import JsonLines

PEER = str(Path(__file__).with_name("curve_peer.py"))
UP_THEN_WAIT = "import json, sys; print(json.dumps({'event': 'up'}), flush=True); sys.stdin.read()"
pytestmark = pytest.mark.timeout(120)


def start(net: Netns, host: Host, *args: str, name: str) -> JsonLines:
    proc = net.run_in(host, [sys.executable, PEER, *args], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return JsonLines(proc, name)


def stop(peer: JsonLines) -> list[dict]:
    """Ask a peer to finish; its remaining events. Fails if it does not exit 0."""
    assert peer.proc.stdin is not None
    peer.proc.stdin.write("stop\n")
    peer.proc.stdin.flush()
    rest = peer.rest()
    assert peer.wait() == 0, peer.stderr()
    return rest


@pytest.fixture
def net() -> Iterator[Netns]:
    yield from two_hosts()


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path, Path]:
    """(the run's key folder, a stranger's folder from another `keys init`, a folder with the
    run's server key but a client key the run does not know)."""
    good = curve.init_keys(tmp_path / "keys")
    stranger = curve.init_keys(tmp_path / "stranger")
    unknown = curve.init_keys(tmp_path / "unknown")
    shutil.copy(good / "server.key", unknown / "server.key")
    return good, stranger, unknown


def test_refused_peers_get_nothing_are_reported_and_do_not_disturb_the_run(net, folders):
    good, stranger, unknown = folders
    a, b = net[0], net[1]
    server = start(net, a, "serve", "--bind", f"tcp://{a.address}:*", "--keys", str(good),
                   name="server")
    endpoint = server.expect("ready", security="curve")["endpoint"]
    assert endpoint.startswith(f"tcp://{a.address}:")

    # (a) the authorised client, kept busy with requests for the whole test
    member = start(net, b, "client", "--connect", endpoint, "--keys", str(good), "--loop",
                   name="authorised")
    member.expect("handshake", result="ok")
    member.expect("first_reply")
    allowed = server.expect("allowed", name="default")
    assert allowed["address"] == b.address
    assert allowed["fingerprint"] == curve.load_client_keys(good).pair.fingerprint

    # (b) three kinds of refused peer, each from the other host, one after the other
    # a mechanism mismatch is seen by both ends; whichever closes first, the other sees only
    # the close (both orders happen across the veth link)
    mismatch = {curve.REFUSED_MECHANISM, curve.HANDSHAKE_FAILED, curve.REFUSED_ABORTED}
    cases = [
        ("no keys", [], mismatch, mismatch, None, endpoint),
        ("unknown key", ["--keys", str(unknown)], {curve.REFUSED_BY_SERVER},
         {curve.REFUSED_UNKNOWN_KEY}, curve.load_client_keys(unknown).pair.fingerprint, b.address),
        ("stranger", ["--keys", str(stranger)], {curve.HANDSHAKE_FAILED},
         {curve.REFUSED_WRONG_SERVER_KEY}, None, endpoint),
    ]
    for name, keys, client_sees, server_reasons, fingerprint, address in cases:
        before = len(server.seen)
        peer = start(net, b, "client", "--connect", endpoint, *keys, name=name)
        assert peer.expect("handshake")["result"] in client_sees, name
        peer.expect("no_reply")
        assert peer.wait() == 0, peer.stderr()
        refused = server.expect("refused",
                                where=lambda e, reasons=server_reasons: e["reason"] in reasons)
        assert (refused["fingerprint"], refused["address"]) == (fingerprint, address), name
        assert "request" not in [e["event"] for e in server.seen[before:]], name

    # the authorised client never missed a reply, and nothing from a stranger got through
    done = stop(member)[-1]
    assert done["event"] == "done" and done["failed"] == 0 and done["ok"] > 0, done
    rest = stop(server)
    assert not [e for e in server.seen + rest if e["event"] == "request"], server.seen
    # no secret anywhere in what the server printed
    printed = repr(server.seen)
    for folder in (good, stranger, unknown):
        for secret_file in folder.rglob("*.key_secret"):
            secret = curve.load_server_keys(folder).secret if secret_file.name.startswith(
                "server") else curve.load_client_keys(folder).pair.secret
            assert secret.decode() not in printed


def test_a_non_loopback_bind_needs_keys_unless_insecure(net):
    a, b = net[0], net[1]
    refused = start(net, a, "serve", "--bind", f"tcp://{a.address}:*", name="no-keys server")
    assert refused.wait() == 2
    err = refused.proc.stderr.read()
    assert err.count("\n") == 1 and "--insecure" in err and "--keys" in err, err

    loopback = start(net, a, "serve", "--bind", "tcp://127.0.0.1:*", name="loopback server")
    assert loopback.expect("ready")["security"] == "none"  # loopback needs no keys
    stop(loopback)

    insecure = start(net, a, "serve", "--bind", f"tcp://{a.address}:*", "--insecure",
                     name="insecure server")
    endpoint = insecure.expect("ready", security="none")["endpoint"]
    plain = start(net, b, "client", "--connect", endpoint, name="plain client")
    plain.expect("handshake", result="ok")
    assert plain.expect("reply")["body"] == "re:hello"
    assert insecure.expect("request")["user"] is None
    stop(insecure)


def test_three_hosts_through_a_bridge(folders):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    good = folders[0]
    curve.add_client(good, "host-c")
    with netns_hosts(3) as net:
        a = net[0]
        server = start(net, a, "serve", "--bind", f"tcp://{a.address}:*", "--keys", str(good),
                       name="server")
        endpoint = server.expect("ready")["endpoint"]
        for host, key_name in ((net[1], "default"), (net[2], "host-c")):
            c = start(net, host, "client", "--connect", endpoint, "--keys", str(good),
                      "--key-name", key_name, name=key_name)
            assert c.expect("reply")["body"] == "re:hello"
            assert server.expect("allowed", name=key_name)["address"] == host.address
            assert server.expect("request")["user"] == key_name
        stop(server)


def test_namespaces_links_and_processes_are_removed_even_when_a_test_fails():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="a failing test"):
        with netns_hosts(2) as net:
            names = [h.name for h in net.hosts]
            child = net.run_in(net[1], [sys.executable, "-c", UP_THEN_WAIT],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            JsonLines(child, "child").expect("up")  # it runs inside the namespace by now
            assert net.pids(net[1]) == [child.pid]
            raise RuntimeError("a failing test")
    assert child.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in listed]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"mb{net.tag}" not in links  # no veth end ever sat in (or fell back to) the root
    assert not (Path("/run/momentbus-netns") / f"mb{net.tag}.json").exists()


def test_without_root_or_ip_the_fixture_skips_with_the_reason(monkeypatch):
    import netns as netns_module
    monkeypatch.setattr(netns_module.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        next(two_hosts())
    monkeypatch.setattr(netns_module.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns_module.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="iproute2"):
        next(two_hosts())
