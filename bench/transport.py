"""Frame transport on one host: the momentbus frame bus against public baselines and the
shared-memory limit, and what a slow subscriber sees.

    uv run python bench/transport.py [--quick] [--json FILE] [--systems shm,ring] [--no-slow]
                                     [--credits N] [--credit-batch N] [--repeat N]
                                     [--frames N]

Throughput: for 720p and 1080p BGR frames and 1 and 3 subscribers (each in its own process,
doing no work but touching the first and last byte of each frame), frames/s delivered per
subscriber (median over subscribers) and latency p50/p99 (send -> receive, wall clock) for

* ``momentbus shm``: the real FrameBusServer/FrameBusClient code, ``every`` policy, a group per
  subscriber, pixels in the shared-memory slot ring (same host); each reader keeps
  ``--credits`` frames in flight and returns credit ``--credit-batch`` at a time (8 and 4; 2
  and 1 is what an extractor does),
* ``momentbus raw``: the same with raw pixels over ZeroMQ (what crosses hosts),
* ``pyzmq pubsub``: raw pyzmq PUB/SUB, multipart, ``copy=False``,
* ``imagezmq pubsub``: imagezmq 1.2.0 ImageSender/ImageHub with ``REQ_REP=False``,
* ``shm ring``: a bare ``multiprocessing.shared_memory`` ring with in-place readers: the physical
  limit here (no protocol at all).

All ZeroMQ paths use ``ipc://``. Slow subscriber: a publisher at 30 fps, one subscriber taking
50 ms a frame for ``--slow-seconds``: the age of each frame it picks up (p50, max) and the growth
of publisher + subscriber RSS, for momentbus ``latest`` and PUB/SUB with default HWM and HWM=1.
Numbers are noisy on 2 cores: compare within one run (the ratio table at the end).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from fractions import Fraction
from functools import partial
from typing import Any

import numpy as np

from momentbus.traces.summary import percentile

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
#: ``--systems`` keys -> the system names in the tables
SYSTEMS = {"shm": "momentbus shm", "raw": "momentbus raw", "pubsub": "pyzmq pubsub",
           "imagezmq": "imagezmq pubsub", "ring": "shm ring"}
TB = Fraction(1, 30)
#: momentbus readers' window and credit batch (``--credits``; ``--credit-batch``): a reader after
#: throughput keeps 8 frames in flight and returns credit 4 at a time
CREDITS, CREDIT_BATCH = 8, 4


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def frames_for(size: tuple[int, int], n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    w, h = size
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def pct(values: list[float], q: float) -> float:
    p = percentile(values, q)
    return float("nan") if p is None else p


# ---------------------------------------------------------------------------- subscribers


def _result(conn: Any, got: int, t_first: float, t_last: float, lat: list[float]) -> None:
    fps = (got - 1) / (t_last - t_first) if got > 1 and t_last > t_first else 0.0
    conn.send({"frames": got, "fps": fps, "lat": lat})


def sub_momentbus(address: str, group: str, encoding: str, n: int, work_s: float = 0.0,
                  policy: str = "every", duration_s: float = 0.0, credits: int = CREDITS,
                  credit_batch: int = CREDIT_BATCH, *, conn: Any) -> None:
    from momentbus.ipc.framebus import FrameBusClient
    from momentbus.ipc.schema import Eof, Hello

    client = FrameBusClient(address, Hello(component=f"bench:{group}", group=group,
                                           pid=os.getpid(), policy=policy, encoding=encoding),
                            credits=1 if work_s else credits,
                            credit_batch=1 if work_s else credit_batch, daemon_timeout_s=30)
    client.join(30)
    conn.send("ready")
    got, lat = 0, []
    t_first = t_last = 0.0
    deadline = None
    while True:
        item = client.recv(1000)
        if item is None:
            continue
        if isinstance(item, Eof):
            break
        now = time.time_ns()
        img = item.image()
        _ = int(img[0, 0, 0]) + int(img[-1, -1, -1])
        got += 1
        t_last = time.perf_counter()
        if got == 1:
            t_first = t_last
            deadline = t_last + duration_s
        lat.append((now - item.capture_wall_ns) / 1e6)
        if work_s:
            time.sleep(work_s)  # the slow subscriber's "processing"
        client.done()
        if duration_s and deadline is not None and t_last >= deadline:
            break
    client.leave()
    client.close()
    _result(conn, got, t_first, t_last, lat)


def sub_pubsub(address: str, hwm: int | None, n: int, work_s: float = 0.0,
               duration_s: float = 0.0, *, conn: Any) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.SUB)
    if hwm is not None:
        sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(address)
    conn.send("ready")
    got, lat = 0, []
    t_first = t_last = 0.0
    deadline = None
    while True:
        if not sock.poll(3000):
            break
        header, payload = sock.recv_multipart(copy=False)
        now = time.time_ns()
        sent = int(header.bytes)
        if sent < 0:
            break
        buf = payload.buffer
        _ = buf[0] + buf[-1]
        got += 1
        t_last = time.perf_counter()
        if got == 1:
            t_first = t_last
            deadline = t_last + duration_s
        lat.append((now - sent) / 1e6)
        if work_s:
            time.sleep(work_s)
        if duration_s and deadline is not None and t_last >= deadline:
            break
    sock.close(0)
    _result(conn, got, t_first, t_last, lat)


def sub_imagezmq(address: str, n: int, *, conn: Any) -> None:
    import imagezmq

    hub = imagezmq.ImageHub(open_port=address, REQ_REP=False)
    conn.send("ready")
    got, lat = 0, []
    t_first = t_last = 0.0
    import zmq

    hub.zmq_socket.setsockopt(zmq.RCVTIMEO, 3000)
    while True:
        try:
            msg, img = hub.recv_image()
        except Exception:  # timeout: the publisher is done
            break
        now = time.time_ns()
        if msg == "end":
            break
        _ = int(img[0, 0, 0]) + int(img[-1, -1, -1])
        got += 1
        t_last = time.perf_counter()
        if got == 1:
            t_first = t_last
        lat.append((now - int(msg)) / 1e6)
    _result(conn, got, t_first, t_last, lat)


def sub_shm_ring(name: str, index: int, n_slots: int, shape: tuple[int, int, int], n: int,
                 *, conn: Any) -> None:
    from momentbus.ipc.shm import open_untracked

    shm = open_untracked(name)
    frame_bytes = int(np.prod(shape))
    ctrl = np.frombuffer(shm.buf, np.int64, count=2 + 8 + n_slots)  # write_seq, readers, stamps
    conn.send("ready")
    got, lat = 0, []
    t_first = t_last = 0.0
    pos = 0
    while pos < n:
        while ctrl[0] <= pos:
            time.sleep(0)
        slot = pos % n_slots
        now = time.time_ns()
        offset = 8 * (2 + 8 + n_slots) + slot * frame_bytes
        view = np.frombuffer(shm.buf, np.uint8, count=frame_bytes, offset=offset)
        _ = int(view[0]) + int(view[-1])
        lat.append((now - int(ctrl[10 + slot])) / 1e6)
        del view
        got += 1
        t_last = time.perf_counter()
        if got == 1:
            t_first = t_last
        pos += 1
        ctrl[2 + index] = pos
    del ctrl
    shm.close()
    _result(conn, got, t_first, t_last, lat)


# ---------------------------------------------------------------------------- publishers


CTX = mp.get_context("spawn")  # fresh interpreters: no ZeroMQ state inherited through fork


def spawn_subs(target: Any, args_list: list[tuple]) -> tuple[list[Any], list[Any]]:
    procs, conns = [], []
    for args in args_list:
        parent, child = CTX.Pipe()
        p = CTX.Process(target=target, args=args, kwargs={"conn": child}, daemon=True)
        p.start()
        procs.append(p)
        conns.append(parent)
    return procs, conns


def wait_ready(conns: list[Any], serve: Any = None) -> None:
    deadline = time.monotonic() + 60
    for c in conns:
        while not c.poll(0.01):
            if serve is not None:
                serve()
            if time.monotonic() > deadline:
                raise RuntimeError("subscriber did not start")
        assert c.recv() == "ready"


def start_subs(target: Any, args_list: list[tuple]) -> tuple[list[Any], list[Any]]:
    procs, conns = spawn_subs(target, args_list)
    wait_ready(conns)
    return procs, conns


def collect(procs: list[Any], conns: list[Any]) -> list[dict[str, Any]]:
    out = []
    for p, c in zip(procs, conns):
        if c.poll(60):
            out.append(c.recv())
        p.join(30)
        if p.is_alive():
            p.kill()
    return out


def run_momentbus(size: tuple[int, int], subs: int, n: int, encoding: str, tmp: str,
                  credits: int = CREDITS, credit_batch: int = CREDIT_BATCH
                  ) -> list[dict[str, Any]]:
    from momentbus.ipc.framebus import FrameBusServer
    from momentbus.ipc.schema import Frame, Welcome

    address = f"ipc://{tmp}/mb-{encoding}-{subs}-{size[0]}"
    w, h = size
    procs, conns = spawn_subs(sub_momentbus, [(address, f"g{i}", encoding, n, 0.0, "every", 0.0,
                                               credits, credit_batch) for i in range(subs)])
    server = FrameBusServer(address, Welcome(source_id="bench", width=w, height=h, time_base=TB,
                                             duration_ns=None, live=False))
    try:
        wait_ready(conns, lambda: server.poll(10))
        missing = server.wait_for_groups([f"g{i}" for i in range(subs)], 60)
        assert not missing
        imgs = frames_for(size)
        for seq in range(n):
            while not server.can_accept():
                server.poll(1)
            server.publish(Frame(source_id="bench", seq=seq, pts=seq, time_base=TB, t_ns=seq,
                                 capture_wall_ns=time.time_ns(), width=w, height=h,
                                 data=imgs[seq % len(imgs)]))
            server.poll(0)
        server.finish("video", n - 1, n - 1)
        deadline = time.monotonic() + 60
        while not server.drained() and time.monotonic() < deadline:
            server.poll(10)
        return collect(procs, conns)
    finally:
        server.close()


def run_pubsub(size: tuple[int, int], subs: int, n: int, tmp: str) -> list[dict[str, Any]]:
    import zmq

    address = f"ipc://{tmp}/ps-{subs}-{size[0]}"
    sock = zmq.Context.instance().socket(zmq.PUB)
    # no drops: queued messages reference the same 4 source arrays (copy=False), so an
    # unbounded queue costs no memory here; subscribers receive as fast as they can
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(address)
    procs, conns = start_subs(sub_pubsub, [(address, 0, n) for _ in range(subs)])
    time.sleep(0.5)  # PUB/SUB slow joiner: subscriptions must arrive (ZeroMQ guide)
    imgs = frames_for(size)
    for seq in range(n):
        sock.send_multipart([str(time.time_ns()).encode(), imgs[seq % len(imgs)]], copy=False)
    for _ in range(20):
        sock.send_multipart([b"-1", b"x"])
    out = collect(procs, conns)
    sock.close(0)
    return out


def run_imagezmq(size: tuple[int, int], subs: int, n: int, tmp: str) -> list[dict[str, Any]]:
    import imagezmq

    address = f"ipc://{tmp}/iz-{subs}-{size[0]}"
    sender = imagezmq.ImageSender(connect_to=address, REQ_REP=False)
    procs, conns = start_subs(sub_imagezmq, [(address, n) for _ in range(subs)])
    time.sleep(0.5)  # PUB/SUB slow joiner
    imgs = frames_for(size)
    for seq in range(n):
        sender.send_image(str(time.time_ns()), imgs[seq % len(imgs)])
    for _ in range(20):
        sender.send_image("end", imgs[0][:2, :2])
    out = collect(procs, conns)
    sender.zmq_socket.close(0)
    return out


def run_shm_ring(size: tuple[int, int], subs: int, n: int) -> list[dict[str, Any]]:
    from multiprocessing import shared_memory

    w, h = size
    shape = (h, w, 3)
    n_slots = 8
    frame_bytes = h * w * 3
    header = 8 * (2 + 8 + n_slots)
    shm = shared_memory.SharedMemory(create=True, size=header + n_slots * frame_bytes)
    ctrl = np.frombuffer(shm.buf, np.int64, count=2 + 8 + n_slots)
    ctrl[:] = 0
    procs, conns = start_subs(sub_shm_ring, [(shm.name, i, n_slots, shape, n)
                                             for i in range(subs)])
    imgs = frames_for(size)
    for seq in range(n):
        while seq - min(int(ctrl[2 + i]) for i in range(subs)) >= n_slots:
            time.sleep(0)  # every reader must have passed the slot we overwrite
        slot = seq % n_slots
        view = np.frombuffer(shm.buf, np.uint8, count=frame_bytes, offset=header + slot * frame_bytes)
        view[:] = imgs[seq % len(imgs)].reshape(-1)
        del view
        ctrl[10 + slot] = time.time_ns()
        ctrl[0] = seq + 1
    out = collect(procs, conns)
    del ctrl
    shm.close()
    shm.unlink()
    return out


# ---------------------------------------------------------------------------- slow subscriber


def slow_momentbus(seconds: float, tmp: str) -> dict[str, Any]:
    from momentbus.ipc.framebus import FrameBusServer
    from momentbus.ipc.schema import Frame, Welcome

    w, h = SIZES["720p"]
    address = f"ipc://{tmp}/slow-mb"
    procs, conns = spawn_subs(sub_momentbus, [(address, "slow", "raw", 0, 0.05, "latest",
                                               seconds)])
    server = FrameBusServer(address, Welcome(source_id="bench", width=w, height=h, time_base=TB,
                                             duration_ns=None, live=True))
    try:
        wait_ready(conns, lambda: server.poll(10))
        assert not server.wait_for_groups(["slow"], 60)
        imgs = frames_for((w, h))
        rss0 = rss_mb(os.getpid()) + rss_mb(procs[0].pid)
        t0 = time.perf_counter()
        seq = 0
        while procs[0].is_alive() and not conns[0].poll(0):
            due = t0 + seq / 30
            while time.perf_counter() < due:
                server.poll(max(0, int((due - time.perf_counter()) * 1000)))
            server.publish(Frame(source_id="bench", seq=seq, pts=seq, time_base=TB, t_ns=seq,
                                 capture_wall_ns=time.time_ns(), width=w, height=h,
                                 data=imgs[seq % len(imgs)]))
            seq += 1
            if seq == 30:
                rss0 = rss_mb(os.getpid()) + rss_mb(procs[0].pid)
        rss1 = rss_mb(os.getpid()) + (rss_mb(procs[0].pid) if procs[0].is_alive() else 0)
        res = collect(procs, conns)[0]
    finally:
        server.close()
    return {"lat": res["lat"], "rss_growth_mb": rss1 - rss0, "frames": res["frames"]}


def slow_pubsub(seconds: float, hwm: int | None, tmp: str) -> dict[str, Any]:
    import zmq

    w, h = SIZES["720p"]
    address = f"ipc://{tmp}/slow-ps-{hwm}"
    sock = zmq.Context.instance().socket(zmq.PUB)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
    sock.bind(address)
    procs, conns = start_subs(sub_pubsub, [(address, hwm, 0, 0.05, seconds)])
    time.sleep(0.5)  # slow joiner
    imgs = frames_for((w, h))
    t0 = time.perf_counter()
    seq = 0
    rss0 = rss_mb(os.getpid()) + rss_mb(procs[0].pid)
    while procs[0].is_alive() and not conns[0].poll(0):
        due = t0 + seq / 30
        time.sleep(max(0.0, due - time.perf_counter()))
        sock.send_multipart([str(time.time_ns()).encode(), imgs[seq % len(imgs)]], copy=False)
        seq += 1
        if seq == 30:
            rss0 = rss_mb(os.getpid()) + rss_mb(procs[0].pid)
    rss1 = rss_mb(os.getpid()) + (rss_mb(procs[0].pid) if procs[0].is_alive() else 0)
    res = collect(procs, conns)[0]
    sock.close(0)
    return {"lat": res["lat"], "rss_growth_mb": rss1 - rss0, "frames": res["frames"]}


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames (under 5 minutes)")
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--slow-seconds", type=float, default=None)
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)} (throughput table)")
    ap.add_argument("--no-slow", action="store_true", help="skip the slow-subscriber runs")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each throughput row, systems alternating; the median is shown "
                         "(3 or more on a busy or virtual machine)")
    ap.add_argument("--credits", type=int, default=CREDITS,
                    help="momentbus readers' credit window (frames in flight)")
    ap.add_argument("--credit-batch", type=int, default=CREDIT_BATCH,
                    help="credits a momentbus reader returns in one message (1: one per frame)")
    ap.add_argument("--frames", type=int, default=None,
                    help="frames per throughput run, both sizes (--quick: 300 and 200, which "
                         "the shared-memory rows deliver in ~0.1 s: noisy on a busy machine)")
    args = ap.parse_args()
    chosen = [SYSTEMS[k] for k in args.systems.split(",")]
    n = {"720p": 300, "1080p": 200} if args.quick else {"720p": 1000, "1080p": 600}
    if args.frames:
        n = dict.fromkeys(n, args.frames)
    slow_s = args.slow_seconds or (5.0 if args.quick else 10.0)
    records: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="mbbench-")
    print(f"{'system':18} {'size':6} {'subs':>4} {'fps/sub':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for size_name, size in SIZES.items():
        for subs in (1, 3):
            count = n[size_name]
            runs = {
                "momentbus shm": partial(run_momentbus, size, subs, count, "shm", tmp,
                                         args.credits, args.credit_batch),
                "momentbus raw": partial(run_momentbus, size, subs, count, "raw", tmp,
                                         args.credits, args.credit_batch),
                "pyzmq pubsub": partial(run_pubsub, size, subs, count, tmp),
                "imagezmq pubsub": partial(run_imagezmq, size, subs, count, tmp),
                "shm ring": partial(run_shm_ring, size, subs, count),
            }
            results: dict[str, list[list[dict[str, Any]]]] = {}
            for _ in range(args.repeat):  # systems alternate, so a slow spell hits them alike
                for system, fn in runs.items():
                    if system in chosen:
                        results.setdefault(system, []).append(fn())
            for system, reps in results.items():
                # each repetition's median subscriber, then the median repetition
                rep_fps = [statistics.median(r["fps"] for r in res) for res in reps]
                fps = statistics.median(rep_fps)
                res = [r for rep in reps for r in rep]
                lat = [x for r in res for x in r["lat"]]
                rec = {"system": system, "size": size_name, "subscribers": subs,
                       "fps_per_sub": round(fps, 1), "fps_min": round(min(r["fps"] for r in res), 1),
                       "fps_max": round(max(r["fps"] for r in res), 1),
                       "fps_repetitions": [round(f, 1) for f in rep_fps],
                       "delivered_frac": round(min(r["frames"] for r in res) / n[size_name], 3),
                       "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2)}
                records.append(rec)
                print(f"{system:18} {size_name:6} {subs:4d} {fps:9.1f} {rec['p50_ms']:8.2f} "
                      f"{rec['p99_ms']:8.2f}" + ("" if rec["delivered_frac"] >= 0.999 else
                                                 f"  (received {rec['delivered_frac']:.0%})"))
    if args.no_slow:
        _print_ratios(records)
        _write_json(args.json, records)
        return
    print(f"\nslow subscriber: 720p, publisher 30 fps, 50 ms a frame, {slow_s:g} s")
    print(f"{'system':26} {'age p50 ms':>10} {'age max ms':>10} {'RSS growth MB':>14}")
    for system, fn in [("momentbus latest", lambda: slow_momentbus(slow_s, tmp)),
                       ("pubsub default HWM", lambda: slow_pubsub(slow_s, None, tmp)),
                       ("pubsub HWM=1", lambda: slow_pubsub(slow_s, 1, tmp))]:
        res = fn()
        rec = {"system": system, "size": "720p", "subscribers": 1, "slow_sub": True,
               "fps_per_sub": round(res["frames"] / slow_s, 1),
               "p50_ms": round(pct(res["lat"], 50), 1), "p99_ms": round(pct(res["lat"], 99), 1),
               "slow_sub_age_p50_ms": round(pct(res["lat"], 50), 1),
               "slow_sub_age_max_ms": round(max(res["lat"]), 1),
               "rss_growth_mb": round(res["rss_growth_mb"], 1)}
        records.append(rec)
        print(f"{system:26} {rec['slow_sub_age_p50_ms']:10.1f} {rec['slow_sub_age_max_ms']:10.1f} "
              f"{rec['rss_growth_mb']:14.1f}")
    _print_ratios(records)
    _write_json(args.json, records)


def _print_ratios(records: list[dict[str, Any]]) -> None:
    """Ratios of frames/s per subscriber within this run (nan where a system was not run)."""
    print("\nratios (frames/s per subscriber, same run)")
    print(f"{'size':6} {'subs':>4} {'shm/imagezmq':>13} {'shm/shm-limit':>14} "
          f"{'raw/imagezmq':>13}")
    fps = {(r["system"], r["size"], r["subscribers"]): r["fps_per_sub"] for r in records
           if not r.get("slow_sub")}
    for size_name in SIZES:
        for subs in (1, 3):
            shm, raw, iz, limit = (fps.get((system, size_name, subs)) or float("nan")
                                   for system in ("momentbus shm", "momentbus raw",
                                                  "imagezmq pubsub", "shm ring"))
            print(f"{size_name:6} {subs:4d} {shm / iz:13.2f} {shm / limit:14.2f} {raw / iz:13.2f}")


def _write_json(path: str | None, records: list[dict[str, Any]]) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
