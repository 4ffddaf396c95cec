"""What CURVE costs: 720p raw frames over TCP, plain vs CURVE, in the same run.

    uv run python bench/curve_cost.py [--frames 300] [--repeats 3] [--veth] [--json FILE]

A sender process PUSHes ``--frames`` messages of 1280*720*3 bytes (one raw BGR 720p frame,
2,764,800 bytes) to a receiver process (PULL), both with HWM 4, after 10 warm-up frames. The
receiver times first to last frame; both report their CPU time (``time.process_time``). Runs
alternate plain / CURVE ``--repeats`` times; the table shows medians: MB/s (10^6 bytes), frames/s
and CPU ms per frame on each side. CURVE uses ipc/curve.py exactly as a role would: a server pair
and a CurveAuthenticator on the receiver's bind, a client pair on the sender.

Paths: ``tcp://127.0.0.1`` (loopback), and with ``--veth`` (root, iproute2) across a veth link
between two network namespaces made by tests/netns.py (receiver in a, sender in b): what
crosses hosts. Numbers are noisy on a shared 2-core machine: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from momentbus.ipc import curve

FRAME_BYTES = 1280 * 720 * 3
WARMUP = 10
HWM = 4
TIMEOUT_MS = 30_000


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def role_recv(bind: str, n: int, keys: str | None) -> None:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, HWM)
    auth = None
    try:
        if keys:
            auth = curve.CurveAuthenticator(keys, on_refused=lambda *a: None, context=ctx)
            auth.start()
            auth.secure(sock)
        sock.bind(bind)
        emit(event="ready", endpoint=sock.getsockopt_string(zmq.LAST_ENDPOINT))
        for _ in range(WARMUP):
            if not sock.poll(TIMEOUT_MS):
                raise TimeoutError("no warm-up frame")
            sock.recv(copy=False)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(n):
            if not sock.poll(TIMEOUT_MS):
                raise TimeoutError("sender stalled")
            frame = sock.recv(copy=False)
            assert len(frame) == FRAME_BYTES
        elapsed = time.perf_counter() - t0
        emit(event="result", seconds=elapsed, frames=n, cpu_s=time.process_time() - cpu0)
    finally:
        sock.close(0)
        if auth is not None:
            auth.stop()


def role_send(connect: str, n: int, keys: str | None) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.setsockopt(zmq.SNDHWM, HWM)
    if keys:
        curve.configure_client(sock, curve.load_client_keys(keys))
    sock.connect(connect)
    payload = bytes(range(256)) * (FRAME_BYTES // 256)
    cpu0 = 0.0
    for i in range(WARMUP + n):
        if i == WARMUP:
            cpu0 = time.process_time()
        sock.send(payload, copy=False)
    cpu_s = time.process_time() - cpu0
    sock.close()  # linger: the last frames still go out...
    ctx.term()  # ...and must be gone before `payload` (sent zero-copy) can be freed
    emit(event="sent", cpu_s=cpu_s)


class Runner:
    """Starts the two roles as processes, on loopback or inside namespaces."""

    def __init__(self, net: Any = None) -> None:
        self.net = net

    def start(self, host: int, argv: list[str]) -> subprocess.Popen[str]:
        cmd = [sys.executable, __file__, *argv]
        kw: dict[str, Any] = dict(stdout=subprocess.PIPE, text=True)
        if self.net is None:
            return subprocess.Popen(cmd, **kw)
        proc: subprocess.Popen[str] = self.net.run_in(self.net[host], cmd, **kw)
        return proc

    def bind_address(self) -> str:
        return "tcp://127.0.0.1:*" if self.net is None else f"tcp://{self.net[0].address}:*"

    def once(self, frames: int, keys: str | None) -> dict[str, float]:
        extra = ["--keys", keys] if keys else []
        recv = self.start(0, ["--role", "recv", "--bind", self.bind_address(),
                              "--frames", str(frames), *extra])
        assert recv.stdout is not None
        ready = json.loads(recv.stdout.readline())
        send = self.start(1, ["--role", "send", "--connect", ready["endpoint"],
                              "--frames", str(frames), *extra])
        assert send.stdout is not None
        sent = json.loads(send.stdout.readline())
        result = json.loads(recv.stdout.readline())
        for p in (send, recv):
            p.wait(60)
            assert p.stdout is not None
            p.stdout.close()
        mb_s = frames * FRAME_BYTES / result["seconds"] / 1e6
        return {"MB/s": mb_s, "frames/s": frames / result["seconds"],
                "recv cpu ms/frame": result["cpu_s"] / frames * 1e3,
                "send cpu ms/frame": sent["cpu_s"] / frames * 1e3}


def measure(runner: Runner, frames: int, repeats: int, keys: str) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "curve": []}
    for _ in range(repeats):  # alternate, so drift in machine load hits both alike
        runs["plain"].append(runner.once(frames, None))
        runs["curve"].append(runner.once(frames, keys))
    return {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for mode, rs in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--veth", action="store_true", help="also across two network namespaces")
    p.add_argument("--json", help="write the table as JSON here")
    p.add_argument("--role", choices=["recv", "send"], help=argparse.SUPPRESS)
    p.add_argument("--bind", help=argparse.SUPPRESS)
    p.add_argument("--connect", help=argparse.SUPPRESS)
    p.add_argument("--keys", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "recv":
        return role_recv(args.bind, args.frames, args.keys)
    if args.role == "send":
        return role_send(args.connect, args.frames, args.keys)

    table: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mb-curve-bench-") as tmp:
        keys = str(curve.init_keys(Path(tmp) / "keys"))
        table["loopback"] = measure(Runner(), args.frames, args.repeats, keys)
        if args.veth:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from netns import netns_hosts
            with netns_hosts(2) as net:
                table["veth"] = measure(Runner(net), args.frames, args.repeats, keys)
    print(f"720p raw frames ({FRAME_BYTES:,} B), {args.frames} frames x {args.repeats} runs, "
          "medians")
    cols = ["MB/s", "frames/s", "recv cpu ms/frame", "send cpu ms/frame"]
    print(f"{'path':10} {'mode':6} " + " ".join(f"{c:>18}" for c in cols))
    for path, modes in table.items():
        for mode, row in modes.items():
            print(f"{path:10} {mode:6} " + " ".join(f"{row[c]:18.2f}" for c in cols))
        ratio = modes["curve"]["MB/s"] / modes["plain"]["MB/s"]
        print(f"{path:10} curve/plain throughput: {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
