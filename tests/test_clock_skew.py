"""A real clock skew between two processes: libfaketime moves one role's wall clock by +2.5 s.

The skewed process (tests/clock_peer.py ``serve``, under tests/skewed.py's environment) exchanges
NTP stamps with a prober over ZeroMQ; the prober's estimate must come within 5 ms of the injected
skew, and a frame's age computed with it must be right (not off by 2.5 s). Once over loopback
with the test process as prober, once across two network namespaces with CURVE. Skipped without
libfaketime (Debian ``faketime``); the namespace test also needs root.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import clock_peer
from momentbus.ipc import curve
from netns import Netns, two_hosts
from proc_lines import JsonLines
from skewed import faketime_library, reap, skewed_argv, skewed_env

SKEW = "+2.5s"
SKEW_NS = 2_500_000_000
TOLERANCE_NS = 5_000_000  # the bar; loopback estimates are ~0.1 ms off
PEER = str(Path(__file__).with_name("clock_peer.py"))

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(faketime_library() is None,
                                 reason="libfaketime not installed (apt-get install faketime)")]


def stop(peer: JsonLines) -> None:
    assert peer.proc.stdin is not None
    peer.proc.stdin.write("stop\n")
    peer.proc.stdin.flush()
    assert peer.wait() == 0, peer.stderr()


@pytest.fixture
def skewed_server() -> Iterator[JsonLines]:
    proc = subprocess.Popen([sys.executable, PEER, "serve", "--bind", "tcp://127.0.0.1:*"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=skewed_env(SKEW))
    peer = JsonLines(proc, "skewed server")
    try:
        yield peer
    finally:
        reap(proc)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def check_estimate(result: dict[str, Any]) -> None:
    off = result["offset_ns"] - SKEW_NS
    assert abs(off) < TOLERANCE_NS, result
    assert abs(off) <= result["error_ns"], result  # the true skew is inside the stated bound
    assert abs(result["server_offset_ns"] + SKEW_NS) < TOLERANCE_NS, result  # and the other way
    assert result["mono_in_bracket"], "the skewed process's CLOCK_MONOTONIC was shifted"
    assert result["bogus"] == 0
    # a frame stamped on the skewed host: its age is right with the estimate, -2.5 s without
    assert -result["error_ns"] <= result["latency_ns"] < 50_000_000, result
    assert result["naive_latency_ns"] < -SKEW_NS + 50_000_000, result


def test_faketime_moves_the_wall_clock_only():
    code = ("import json, sys, time; time.time_ns(); time.sleep(0.001)\n"
            "for line in sys.stdin:\n"
            "    print(json.dumps({'event': 'clocks', 'wall': time.time_ns(),\n"
            "                      'mono': time.monotonic_ns()}), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=skewed_env(SKEW))
    child = JsonLines(proc, "skewed child")
    try:
        for _ in range(5):
            w0, m0 = time.time_ns(), time.monotonic_ns()
            proc.stdin.write("\n")
            proc.stdin.flush()
            clocks = child.expect("clocks", timeout_s=10)
            w1, m1 = time.time_ns(), time.monotonic_ns()
            assert w0 + SKEW_NS <= clocks["wall"] <= w1 + SKEW_NS  # +2.5 s, within the bracket
            assert m0 <= clocks["mono"] <= m1  # CLOCK_MONOTONIC untouched
        proc.stdin.close()
        assert child.wait(10) == 0, child.stderr()
    finally:
        reap(proc)
        proc.stdout.close()
        proc.stderr.close()


def test_offset_to_a_skewed_process_over_zeromq_is_within_5ms(skewed_server):
    endpoint = skewed_server.expect("ready")["endpoint"]
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        result = clock_peer.probe(sock, rounds=20)
    finally:
        sock.close(0)
        ctx.term()
    check_estimate(result)
    stop(skewed_server)


@pytest.fixture
def net() -> Iterator[Netns]:
    yield from two_hosts()


def test_skewed_host_across_namespaces_with_curve(net, tmp_path):
    keys = curve.init_keys(tmp_path / "keys")
    a, b = net[0], net[1]
    server = JsonLines(net.run_in(a, skewed_argv(SKEW, [
        sys.executable, PEER, "serve", "--bind", f"tcp://{a.address}:*", "--keys", str(keys)]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "skewed server in a")
    try:
        endpoint = server.expect("ready")["endpoint"]
        prober = JsonLines(net.run_in(
            b, [sys.executable, PEER, "probe", "--connect", endpoint, "--keys", str(keys)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), "prober in b")
        check_estimate(prober.expect("probe"))
        assert prober.wait() == 0, prober.stderr()
        stop(server)
    finally:
        reap(server.proc)
