"""Frames across hosts: raw vs JPEG at 720p, one extractor host and two, CURVE vs --insecure.

    sudo uv run python bench/hosts.py [--frames 300]

Needs root and iproute2 (network namespaces, tests/netns.py): host a runs a frame-bus server
(the real :class:`~momentbus.ipc.framebus.FrameBusServer`, ``every`` policy, so the source goes
as fast as its members take frames), hosts b and c run members of one group (the real
:class:`~momentbus.ipc.framebus.FrameBusClient`; with two hosts they share the frames), joined by
veth through a bridge, so every byte crosses a real interface. A member does no work but decode
(JPEG) and touch the pixels. Frames are the sample video's, scaled to 1280x720 (BGR, 2.76 MB
raw). Per configuration: frames/s delivered (all members together) and frame age (capture stamp
to the member holding the pixels, p50/p99: one kernel clock for every namespace, so exact).
Ratios against the same run's raw/--insecure/one-host row. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FRAMES, SIZE = 300, (1280, 720)


def _security(args: argparse.Namespace) -> None:
    from momentbus.ipc import sockets
    from momentbus.ipc.security import RoleSecurity

    sockets.use_security(RoleSecurity(args.keys, insecure=args.keys is None))


def serve(args: argparse.Namespace) -> None:
    """Host a: publish ``--frames`` 720p frames to group ``bench`` as fast as it takes them."""
    import cv2
    import numpy as np

    from momentbus.daemon import samples
    from momentbus.ipc.framebus import FrameBusServer
    from momentbus.ipc.schema import Frame, Welcome
    from momentbus.media import FileSource

    _security(args)
    with FileSource(samples.path()) as src:
        images = [np.ascontiguousarray(cv2.resize(f.image(), SIZE)) for _, f in
                  zip(range(48), src.items())]
    welcome = Welcome(source_id="bench", width=SIZE[0], height=SIZE[1], time_base=Fraction(1, 30),
                      duration_ns=None, live=False)
    with FrameBusServer(args.bind, welcome, expected_groups=("bench",)) as server:
        server.wait_for_groups(("bench",), 60, lambda: False)
        while sum(len(g.members) for g in server.groups.values()) < args.members:
            server.poll(50)
        t0 = time.perf_counter()
        for seq in range(args.frames):
            while not server.can_accept():
                server.poll(1)
            img = images[seq % len(images)]
            server.publish(Frame(source_id="bench", seq=seq, pts=seq, time_base=Fraction(1, 30),
                                 t_ns=seq * 33_333_333, capture_wall_ns=time.time_ns(),
                                 width=SIZE[0], height=SIZE[1], data=img))
            server.poll(0)
        server.finish("video", args.frames - 1, args.frames * 33_333_333)
        while not server.drained():
            server.poll(20)
        jpeg = [len(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 80])[1]) for im in images]
        print(json.dumps({"server_s": time.perf_counter() - t0,
                          "raw_bytes": images[0].nbytes, "jpeg_bytes": sum(jpeg) / len(jpeg)}),
              flush=True)


def member(args: argparse.Namespace) -> None:
    """Host b/c: take frames until the end; report count, time span and ages."""
    from momentbus.ipc.framebus import FrameBusClient
    from momentbus.ipc.schema import Eof, Hello

    _security(args)
    hello = Hello(component=f"bench:bench#{args.instance}", group="bench", pid=os.getpid(),
                  encoding=args.encoding, instance=args.instance, incarnation=time.time_ns())
    ages, first, last = [], 0.0, 0.0
    with FrameBusClient(args.connect, hello, credits=2, daemon_timeout_s=60) as client:
        client.join(60)
        while True:
            item = client.recv(1000)
            if item is None:
                continue
            if isinstance(item, Eof):
                break
            img = item.image()
            _ = int(img[0, 0, 0]) + int(img[-1, -1, -1])
            now = time.time_ns()
            ages.append((now - item.capture_wall_ns) / 1e6)
            last = time.perf_counter()
            first = first or last
            client.done()
        client.leave()
    print(json.dumps({"frames": len(ages), "first": first, "last": last, "ages": ages}),
          flush=True)


def measure(net, keys: Path | None, encoding: str, hosts: int, frames: int) -> dict:
    a = net[0]
    me = [sys.executable, __file__]
    sec = ["--keys", str(keys)] if keys is not None else []
    bind = f"tcp://{a.address}:5550"
    server = net.run_in(a, me + ["serve", "--bind", bind, "--frames", str(frames),
                                 "--members", str(hosts)] + sec,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    members = [net.run_in(net[1 + i], me + ["member", "--connect", bind, "--encoding", encoding,
                                            "--instance", str(1 + i)] + sec,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(hosts)]
    out = []
    for p in [server, *members]:
        stdout, stderr = p.communicate(timeout=300)
        if p.returncode != 0:
            raise SystemExit(f"bench process failed ({p.returncode}): {stderr[-2000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    got = [m for m in out[1:]]
    n = sum(m["frames"] for m in got)
    span = max(m["last"] for m in got) - min(m["first"] for m in got)
    ages = [x for m in got for x in m["ages"]]
    from momentbus.traces.summary import percentile

    return {"frames": n, "fps": (n - 1) / span if span > 0 else float("nan"),
            "age_p50": percentile(ages, 50), "age_p99": percentile(ages, 99),
            "per_host": [m["frames"] for m in got], "raw_bytes": out[0]["raw_bytes"],
            "jpeg_bytes": out[0]["jpeg_bytes"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode")
    p = sub.add_parser("serve")
    p.add_argument("--bind", required=True)
    p.add_argument("--frames", type=int, default=FRAMES)
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--keys")
    p = sub.add_parser("member")
    p.add_argument("--connect", required=True)
    p.add_argument("--encoding", default="raw")
    p.add_argument("--instance", type=int, default=1)
    p.add_argument("--keys")
    ap.add_argument("--frames", type=int, default=FRAMES)
    args = ap.parse_args()
    if args.mode == "serve":
        serve(args)
        return 0
    if args.mode == "member":
        member(args)
        return 0

    import tempfile

    from rich.console import Console
    from rich.table import Table

    from momentbus.ipc import curve
    from netns import netns_hosts, unavailable_reason

    why = unavailable_reason()
    if why:
        print(f"cannot make hosts here: {why}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp, netns_hosts(3) as net:
        keys = curve.init_keys(Path(tmp) / "keys")
        for hosts in (1, 2):
            for encoding in ("raw", "jpeg"):
                for security, folder in (("--insecure", None), ("CURVE", keys)):
                    r = measure(net, folder, encoding, hosts, args.frames)
                    rows.append((hosts, encoding, security, r))
    base = {(h, e): r["fps"] for h, e, s, r in rows if s == "--insecure"}
    raw = {(h, s): r["fps"] for h, e, s, r in rows if e == "raw"}
    one = {(e, s): r["fps"] for h, e, s, r in rows if h == 1}
    t = Table(title=f"720p frames across veth, {args.frames} per row (2 cores)",
              title_justify="left")
    for col in ("hosts", "pixels", "link", "frames/s", "age p50", "age p99", "/plain", "/raw",
                "/1 host", "per host"):
        t.add_column(col, justify="right" if col not in ("pixels", "link") else "left")
    for hosts, encoding, security, r in rows:
        t.add_row(str(hosts), encoding, "CURVE" if security == "CURVE" else "plain", f"{r['fps']:.0f}", f"{r['age_p50']:.1f}",
                  f"{r['age_p99']:.1f}", f"{r['fps'] / base[(hosts, encoding)]:.2f}x",
                  f"{r['fps'] / raw[(hosts, security)]:.2f}x",
                  f"{r['fps'] / one[(encoding, security)]:.2f}x",
                  "/".join(map(str, r["per_host"])))
    console = Console(width=120)
    console.print(t)
    r0 = rows[0][3]
    gbit = 125e6  # bytes/s of 1 Gbit/s Ethernet
    console.print(f"frame size: raw {r0['raw_bytes'] / 1e6:.2f} MB, JPEG q80 "
                  f"{r0['jpeg_bytes'] / 1e3:.0f} kB ({r0['raw_bytes'] / r0['jpeg_bytes']:.0f}x "
                  f"smaller); a 1 Gbit/s link carries at most {gbit / r0['raw_bytes']:.0f} raw "
                  f"frames/s, {gbit / r0['jpeg_bytes']:.0f} JPEG frames/s. Ages in ms.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
