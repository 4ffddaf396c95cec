"""How close the NTP-style offset estimate (ipc/clock.py) comes to a real, injected clock skew.

    uv run python bench/clock_skew.py [--skew +2.5s --skew -1.25s] [--runs 3] [--rounds 20] [--veth]

A server (tests/clock_peer.py ``serve``) runs with its CLOCK_REALTIME moved by libfaketime
(tests/skewed.py: CLOCK_MONOTONIC untouched); a prober exchanges ``--rounds`` NTP stamps with it
over ZeroMQ, then fetches one frame stamped on the skewed clock. Per run: estimate minus injected
skew, the chosen sample's RTT and error bound, the server's estimate of the prober, and the
frame's age by the estimate and by naive subtraction. Loopback always; with ``--veth`` (root)
also server and prober in two network namespaces joined by veth, over CURVE. Needs Debian's
``faketime``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import zmq

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import clock_peer  # noqa: E402
from proc_lines import JsonLines  # noqa: E402
from skewed import reap, skewed_argv, skewed_env  # noqa: E402

from momentbus.ipc import curve  # noqa: E402

PEER = str(TESTS / "clock_peer.py")
NS_PER_S = 1_000_000_000


def parse_skew_ns(skew: str) -> int:
    """``"+2.5s"`` -> 2_500_000_000 (only the seconds form is used here)."""
    return round(float(skew.rstrip("s")) * NS_PER_S)


def stop(server: JsonLines) -> None:
    assert server.proc.stdin is not None
    server.proc.stdin.write("stop\n")
    server.proc.stdin.flush()
    server.wait(10)


def loopback_run(skew: str, rounds: int) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, PEER, "serve", "--bind", "tcp://127.0.0.1:*"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=skewed_env(skew))
    server = JsonLines(proc, "skewed server")
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(server.expect("ready")["endpoint"])
        result = clock_peer.probe(sock, rounds)
        stop(server)
        return result
    finally:
        sock.close(0)
        ctx.term()
        reap(proc)


def veth_run(net: Any, keys: str, skew: str, rounds: int) -> dict[str, Any]:
    a, b = net[0], net[1]
    server = JsonLines(net.run_in(a, skewed_argv(skew, [
        sys.executable, PEER, "serve", "--bind", f"tcp://{a.address}:*", "--keys", keys]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True), "skewed server")
    try:
        endpoint = server.expect("ready")["endpoint"]
        prober = JsonLines(net.run_in(b, [sys.executable, PEER, "probe", "--connect", endpoint,
                                          "--keys", keys, "--rounds", str(rounds)],
                                      stdout=subprocess.PIPE, text=True), "prober")
        result = prober.expect("probe")
        prober.wait(10)
        stop(server)
        return result
    finally:
        reap(server.proc)


def row(path: str, skew: str, r: dict[str, Any]) -> str:
    diff_us = (r["offset_ns"] - parse_skew_ns(skew)) / 1e3
    return (f"{path:13} {skew:>7} {diff_us:12.1f} {r['rtt_ns'] / 1e3:9.1f} "
            f"{r['error_ns'] / 1e3:9.1f} {r['server_offset_ns'] / 1e9:14.6f} "
            f"{r['latency_ns'] / 1e3:10.1f} {r['naive_latency_ns'] / 1e9:12.6f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skew", action="append", help="libfaketime offset, e.g. +2.5s (repeatable)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--veth", action="store_true", help="also across namespaces, over CURVE")
    args = p.parse_args()
    skews = args.skew or ["+2.5s", "-1.25s"]
    print(f"{'path':13} {'skew':>7} {'est-skew us':>12} {'rtt us':>9} {'bound us':>9} "
          f"{'server view s':>14} {'age us':>10} {'naive age s':>12}")
    for skew in skews:
        for _ in range(args.runs):
            print(row("loopback", skew, loopback_run(skew, args.rounds)), flush=True)
    if args.veth:
        from netns import netns_hosts
        with tempfile.TemporaryDirectory(prefix="mb-clock-bench-") as tmp:
            keys = str(curve.init_keys(Path(tmp) / "keys"))
            with netns_hosts(2) as net:
                for skew in skews:
                    for _ in range(args.runs):
                        print(row("veth+curve", skew, veth_run(net, keys, skew, args.rounds)),
                              flush=True)


if __name__ == "__main__":
    main()
