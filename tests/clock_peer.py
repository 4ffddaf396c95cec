"""Clock-offset peers over ZeroMQ, run as real processes by test_clock_skew.py.

Usage:
    python clock_peer.py serve --bind ADDR [--keys DIR]
    python clock_peer.py probe --connect ADDR [--keys DIR] [--rounds N]

``serve`` answers each ``stamps`` request with its own :class:`~momentbus.ipc.clock.Stamps`
(NTP symmetric mode through :class:`~momentbus.ipc.clock.ClockPeer`) plus its CLOCK_MONOTONIC and
its own estimate of the prober's clock, and each ``frame`` request with a ``capture_wall_ns``
stamped on its wall clock, as a daemon stamps frames. ``probe`` runs :func:`probe` and prints its
result as one JSON line. Both print ``ready`` first; ``serve`` stops on a ``stop`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import zmq

from momentbus.ipc import curve
from momentbus.ipc.clock import ClockFilter, ClockPeer, Stamps

TIMEOUT_MS = 5000


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _stamps(d: dict[str, int]) -> Stamps:
    return Stamps(d["org"], d["rec"], d["xmt"])


def serve(args: argparse.Namespace) -> int:
    time.sleep(0.001)  # under faketime this needs tests/faketime_site (libfaketime#426)
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    auth = None
    peer = ClockPeer()
    try:
        if args.keys:
            auth = curve.CurveAuthenticator(args.keys, context=ctx, on_refused=lambda *a: None)
            auth.start()
            auth.secure(sock)
        sock.bind(args.bind)
        emit("ready", endpoint=sock.getsockopt_string(zmq.LAST_ENDPOINT),
             wall_ns=time.time_ns(), mono_ns=time.monotonic_ns())
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(sys.stdin.fileno(), zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if sock in events:
                ident, kind, body = sock.recv_multipart()
                if kind == b"stamps":
                    peer.receive(_stamps(json.loads(body)), time.time_ns(), time.monotonic_ns())
                    mono = time.monotonic_ns()
                    out = peer.stamp(time.time_ns(), mono)
                    est = peer.estimate()
                    reply = {"org": out.org, "rec": out.rec, "xmt": out.xmt, "mono_ns": mono,
                             "their_offset_ns": est.offset_ns if est else None}
                else:  # a frame, stamped as the daemon stamps capture_wall_ns
                    reply = {"capture_wall_ns": time.time_ns()}
                sock.send_multipart([ident, kind, json.dumps(reply).encode()])
            if sys.stdin.fileno() in events:
                line = sys.stdin.readline()
                if not line or line.strip() == "stop":
                    return 0
    finally:
        sock.close(0)
        if auth is not None:
            auth.stop()


def _ask(sock: zmq.Socket[Any], kind: bytes, body: dict[str, Any]) -> dict[str, Any]:
    sock.send_multipart([kind, json.dumps(body).encode()])
    if not sock.poll(TIMEOUT_MS):
        raise TimeoutError(f"no {kind.decode()} reply within {TIMEOUT_MS} ms")
    _, reply = sock.recv_multipart()
    result: dict[str, Any] = json.loads(reply)
    return result


def probe(sock: zmq.Socket[Any], rounds: int = 20) -> dict[str, Any]:
    """``rounds`` back-to-back exchanges with a ``serve`` peer, then one frame.

    Returns:
        ``offset_ns``, ``rtt_ns``, ``error_ns``, ``samples`` (the estimate of the server's clock
        minus ours), ``server_offset_ns`` (its estimate of ours), ``mono_in_bracket`` (every
        server CLOCK_MONOTONIC reading fell between our send and receive readings: its
        monotonic clock was not shifted), ``latency_ns`` (a frame's age by the estimate) and
        ``naive_latency_ns`` (by subtracting the two hosts' wall clocks).
    """
    peer = ClockPeer(ClockFilter())
    mono_ok = True
    server_offset = None
    for _ in range(rounds):
        before = time.monotonic_ns()
        out = peer.stamp(time.time_ns(), before)
        reply = _ask(sock, b"stamps", {"org": out.org, "rec": out.rec, "xmt": out.xmt})
        now_wall, now_mono = time.time_ns(), time.monotonic_ns()
        peer.receive(_stamps(reply), now_wall, now_mono)
        mono_ok = mono_ok and before <= reply["mono_ns"] <= now_mono
        server_offset = reply["their_offset_ns"]
    est = peer.estimate()
    assert est is not None
    frame = _ask(sock, b"frame", {})
    seen = time.time_ns()
    return {"offset_ns": est.offset_ns, "rtt_ns": est.rtt_ns, "error_ns": est.error_ns,
            "samples": est.samples, "server_offset_ns": server_offset, "bogus": peer.bogus,
            "mono_in_bracket": mono_ok,
            "latency_ns": est.latency_ns(frame["capture_wall_ns"], seen),
            "naive_latency_ns": seen - frame["capture_wall_ns"]}


def main() -> int:
    p = argparse.ArgumentParser(prog="clock_peer")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--keys")
    c = sub.add_parser("probe")
    c.add_argument("--connect", required=True)
    c.add_argument("--keys")
    c.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    if args.role == "serve":
        return serve(args)
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if args.keys:
            curve.configure_client(sock, curve.load_client_keys(args.keys))
        sock.connect(args.connect)
        emit("probe", **probe(sock, args.rounds))
    finally:
        sock.close(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
