"""A CURVE server or client run as a real process (inside a namespace) by test_netns_curve.py.

Usage:
    python curve_peer.py serve --bind ADDR [--keys DIR] [--insecure]
    python curve_peer.py client --connect ADDR [--keys DIR] [--key-name NAME] [--loop]

Prints one JSON object per line on stdout (the test reads them; nothing here sleeps):

* serve: ``ready`` (endpoint), then ``allowed``/``refused`` (fingerprint, address, reason) from the
  authenticator, ``request`` per message (user = the client's key name); replies ``re:BODY``.
  Stops on a ``stop`` line or end of stdin. A non-loopback bind without keys and without
  ``--insecure`` prints one line on stderr and exits 2, as a role's CLI does.
* client: ``handshake`` (result: ``ok`` or the refusal reason). Without ``--loop``: one request,
  then ``reply`` or ``no_reply``. With ``--loop``: requests back to back (each must be answered
  within 5 s) until a ``stop`` line, printing ``first_reply`` once and ``done`` (ok, failed,
  max_rtt_ms) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import zmq

from momentbus.ipc import curve
from momentbus.ipc.errors import PeerTimeoutError

REPLY_TIMEOUT_MS = 5000
_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _print_lock:
        print(json.dumps({"event": event, **fields}), flush=True)


def serve(args: argparse.Namespace) -> int:
    try:
        mode = curve.require_security(args.bind, args.keys, args.insecure)
    except curve.SecurityError as e:
        print(f"curve_peer: error: {e}", file=sys.stderr)
        return 2
    ctx: zmq.Context[Any] = zmq.Context.instance()
    auth = None
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if mode == "curve":
            auth = curve.CurveAuthenticator(
                args.keys, context=ctx,
                on_refused=lambda fp, addr, why: emit("refused", fingerprint=fp, address=addr,
                                                      reason=why),
                on_allowed=lambda fp, addr, name: emit("allowed", fingerprint=fp, address=addr,
                                                       name=name))
            auth.start()
            auth.secure(sock)
        sock.bind(args.bind)
        emit("ready", endpoint=sock.getsockopt_string(zmq.LAST_ENDPOINT), security=mode)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(sys.stdin.fileno(), zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if sock in events:
                ident, body = sock.recv_multipart(copy=False)
                user = body.get("User-Id") if mode == "curve" else None
                sock.send_multipart([ident.bytes, b"re:" + body.bytes])
                if not body.bytes.startswith(b"loop:"):
                    emit("request", body=body.bytes.decode(), user=user)
            if sys.stdin.fileno() in events:
                line = sys.stdin.readline()
                if not line or line.strip() == "stop":
                    return 0
    finally:
        sock.close(0)
        if auth is not None:
            auth.stop()


def client(args: argparse.Namespace) -> int:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if args.keys:
        curve.configure_client(sock, curve.load_client_keys(args.keys, args.key_name))
    monitor = curve.handshake_monitor(sock)
    try:
        sock.connect(args.connect)
        if not args.loop:
            sock.send(b"hello")  # queued until (unless) the handshake succeeds
        try:
            result = curve.wait_handshake(monitor, 20)
        except PeerTimeoutError:
            emit("handshake", result="timeout")
            return 1
        emit("handshake", result=result or "ok")
        if not args.loop:
            if sock.poll(REPLY_TIMEOUT_MS if result is None else 0):
                emit("reply", body=sock.recv().decode())
            else:
                emit("no_reply")
            return 0
        return loop(sock)
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def loop(sock: zmq.Socket[Any]) -> int:
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    ok = failed = 0
    max_rtt = 0.0
    n = 0
    while True:
        n += 1
        body = f"loop:{n}".encode()
        t0 = time.monotonic()
        sock.send(body)
        events = dict(poller.poll(REPLY_TIMEOUT_MS))
        if sock in events:
            reply = sock.recv()
            if reply == b"re:" + body:
                ok += 1
                max_rtt = max(max_rtt, time.monotonic() - t0)
                if ok == 1:
                    emit("first_reply", pid=os.getpid())
            else:
                failed += 1
        elif sys.stdin.fileno() not in events:
            failed += 1  # no answer within 5 s
        if sys.stdin.fileno() in events:
            line = sys.stdin.readline()
            if not line or line.strip() == "stop":
                if sock.poll(REPLY_TIMEOUT_MS) and sock.recv() == b"re:" + body:  # the last one
                    ok += 1
                emit("done", ok=ok, failed=failed, max_rtt_ms=round(max_rtt * 1000, 3))
                return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="curve_peer")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--keys")
    s.add_argument("--insecure", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--keys")
    c.add_argument("--key-name", default=curve.DEFAULT_CLIENT)
    c.add_argument("--loop", action="store_true")
    args = p.parse_args()
    return serve(args) if args.role == "serve" else client(args)


if __name__ == "__main__":
    sys.exit(main())
