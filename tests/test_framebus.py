"""The credit-based frame bus across real processes: `every` and `latest` semantics."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import msgspec
import numpy as np
import pytest

from momentbus.ipc.framebus import FrameBusServer
from momentbus.ipc.schema import Credit, Frame, Welcome

CLIENT = str(Path(__file__).with_name("bus_client.py"))
TB = Fraction(1, 30)  # 30 fps synthetic source
W, H = 64, 48
TIMEOUT_S = 30


def frame(seq: int) -> Frame:
    img = np.full((H, W, 3), seq % 256, np.uint8)
    return Frame(source_id="synthetic", seq=seq, pts=seq, time_base=TB,
                 t_ns=int(Fraction(seq) * TB * 1_000_000_000), capture_wall_ns=0,
                 width=W, height=H, data=img)


class Member:
    """A bus_client.py process and a thread turning its stdout lines into a queue."""

    def __init__(self, address: str, group: str, policy: str = "every", fps: str = "none",
                 credits: int = 2, mode: str = "fast", encoding: str = "raw",
                 instance: int = 1, credit_batch: int = 1) -> None:
        self.proc = subprocess.Popen([sys.executable, CLIENT, address, group, policy, fps,
                                      str(credits), mode, encoding, str(instance),
                                      str(credit_batch)],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.events: queue.Queue[dict] = queue.Queue()
        self.frames: list[dict] = []
        self.eof: dict | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def pump(self) -> list[dict]:
        got = []
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return got
            if ev["event"] == "frame":
                self.frames.append(ev)
            elif ev["event"] == "eof":
                self.eof = ev
            got.append(ev)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> int:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            return self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def serve_until(server: FrameBusServer, members: list[Member], predicate, timeout_s=TIMEOUT_S):
    """Poll the server and pump member events until ``predicate()``; fail on timeout."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("frame bus test timed out")
        server.poll(10)
        for m in members:
            m.pump()


def feed(server: FrameBusServer, members: list[Member], frames: list[Frame]) -> None:
    """Publish ``frames`` as the daemon does (waiting on backpressure), then end the stream."""
    for f in frames:
        serve_until(server, members, server.can_accept)
        server.publish(f)
    server.finish("video", frames[-1].seq, frames[-1].t_ns)


@pytest.fixture
def server(addr):
    welcome = Welcome(source_id="synthetic", width=W, height=H, time_base=TB, duration_ns=None,
                      live=False)
    records: list[tuple[str, dict]] = []
    srv = FrameBusServer(addr("frames"), welcome, queue_size=4,
                         trace=lambda record, **kw: records.append((record, kw)))
    srv.records = records  # type: ignore[attr-defined]
    yield srv
    srv.close()


def test_every_delivers_every_sampled_frame_once_in_order_to_each_group(server, addr):
    n = 60
    all_frames = Member(addr("frames"), "all")
    sampled = Member(addr("frames"), "sampled", fps="10")  # every 3rd frame of 30 fps
    pair = [Member(addr("frames"), "shared", instance=1),
            Member(addr("frames"), "shared", instance=2)]
    members = [all_frames, sampled, *pair]
    try:
        missing = server.wait_for_groups(["all", "sampled", "shared"], TIMEOUT_S)
        assert not missing
        serve_until(server, members, lambda: len(server.members) == 4)
        for seq in range(n):
            serve_until(server, members, server.can_accept)  # backpressure: never overrun
            server.publish(frame(seq))
        server.finish("video", n - 1, frame(n - 1).t_ns)
        serve_until(server, members, lambda: all(m.eof is not None for m in members))
    finally:
        codes = [m.stop() for m in members]
    assert codes == [0, 0, 0, 0]
    assert [f["seq"] for f in all_frames.frames] == list(range(n))
    assert all(f["pixels_ok"] for f in all_frames.frames)
    assert [f["seq"] for f in sampled.frames] == list(range(0, n, 3))
    # frames skipped by sampling are announced as gaps, not drops
    reasons = {g[2] for f in sampled.frames for g in f["gaps"]}
    assert reasons == {"sampled"}
    # one group, two members: load-balanced, each frame exactly once, each member in order
    shared = sorted(f["seq"] for m in pair for f in m.frames)
    assert shared == list(range(n))
    for m in pair:
        seqs = [f["seq"] for f in m.frames]
        assert seqs == sorted(seqs) and seqs, "each member sees its share in order"
    assert not [r for r in server.records if r[0] == "frame_drop"]
    # verbose tracing: one dispatch record per item sent, never past the member's credit
    dispatched = [kw for r, kw in server.records if r == "dispatch"]
    assert [d["seq"] for d in dispatched if d["group"] == "all"] == list(range(n))
    assert all(d["credit"] >= 0 for d in dispatched)


def test_every_backpressure_bounds_the_queue(server, addr):
    """With a member that does not return credit, the source must stop at queue_size."""
    slow = Member(addr("frames"), "slow", credits=1, mode="slow")
    try:
        assert not server.wait_for_groups(["slow"], TIMEOUT_S)
        server.publish(frame(0))
        serve_until(server, [slow], lambda: len(slow.frames) == 1)  # its one credit is used
        published = 1
        while server.can_accept() and published < 100:
            server.publish(frame(published))
            published += 1
        # 1 in flight (the member's single credit) + queue_size queued, then the source waits
        assert published == 1 + server.queue_size
        server.poll(50)
        assert not server.can_accept()
    finally:
        slow.proc.kill()
        slow.stop()


def test_latest_hands_a_slow_reader_the_newest_frame_and_reports_skipped_seqs(server, addr):
    slow = Member(addr("frames"), "live", policy="latest", credits=1, mode="slow")
    try:
        assert not server.wait_for_groups(["live"], TIMEOUT_S)
        server.publish(frame(0))
        serve_until(server, [slow], lambda: len(slow.frames) == 1)  # busy with frame 0
        for seq in range(1, 10):  # the source runs on while the reader is busy
            assert server.can_accept(), "latest never holds the source back"
            server.publish(frame(seq))
        slow.go()  # reader finishes frame 0 and returns its credit
        serve_until(server, [slow], lambda: len(slow.frames) == 2)
        slow.go()
        server.finish("video", 9, frame(9).t_ns)
        serve_until(server, [slow], lambda: slow.eof is not None)
    finally:
        slow.stop()
    assert [f["seq"] for f in slow.frames] == [0, 9]
    assert slow.frames[1]["gaps"] == [[1, 8, "latest"]]
    dropped = sorted(s for rec, kw in server.records if rec == "frame_drop"
                     for s in kw["seqs"])
    assert dropped == list(range(1, 9))
    assert all(kw["reason"] == "latest" for rec, kw in server.records if rec == "frame_drop")


def _virtual_server(addr, now, records, grace_s):
    welcome = Welcome(source_id="synthetic", width=W, height=H, time_base=TB, duration_ns=None,
                      live=False)
    return FrameBusServer(addr("frames"), welcome, queue_size=2, member_timeout_s=5.0,
                          rejoin_grace_s=grace_s, now=lambda: now[0],
                          trace=lambda r, **kw: records.append((r, kw)))


def test_dead_member_is_dropped_and_stops_holding_the_source(addr):
    now, records = [0.0], []
    server = _virtual_server(addr, now, records, grace_s=10.0)
    m = Member(addr("frames"), "face", credits=1, mode="slow")
    try:
        assert not server.wait_for_groups(["face"], TIMEOUT_S)
        server.publish(frame(0))
        serve_until(server, [m], lambda: len(m.frames) == 1)
        server.publish(frame(1))
        server.publish(frame(2))
        assert not server.can_accept()
        m.proc.kill()
        m.proc.wait(TIMEOUT_S)
        now[0] += 6.0  # virtual time passes beyond the liveness timeout
        server.poll(0)
        leave = [kw for r, kw in records if r == "member" and kw["event"] == "leave"]
        assert leave and leave[0]["reason"] in ("timeout", "unreachable")
        assert not server.can_accept(), "within the rejoin grace the frames are kept"
        now[0] += 10.0  # grace over: nobody came back
        assert server.can_accept(), "a group without members no longer applies backpressure"
        server.publish(frame(3))
        dropped = sorted(s for r, kw in records if r == "frame_drop"
                         and kw["reason"] == "no_member" for s in kw["seqs"])
        assert dropped == [0, 1, 2, 3], "kept frames and new ones are all accounted as drops"
    finally:
        m.stop()
        server.close()


def test_restarted_member_resumes_losslessly_within_the_grace(addr):
    now, records = [0.0], []
    server = _virtual_server(addr, now, records, grace_s=10.0)
    first = Member(addr("frames"), "face", credits=1, mode="slow")
    second = None
    try:
        assert not server.wait_for_groups(["face"], TIMEOUT_S)
        server.publish(frame(0))
        serve_until(server, [first], lambda: len(first.frames) == 1)
        server.publish(frame(1))
        first.proc.kill()  # dies while working on frame 0
        first.proc.wait(TIMEOUT_S)
        now[0] += 6.0
        server.poll(0)
        assert not server.groups["face"].members
        second = Member(addr("frames"), "face")  # the supervisor's restart
        serve_until(server, [second], lambda: len(second.frames) == 2)
        for seq in range(2, 6):
            serve_until(server, [second], server.can_accept)
            server.publish(frame(seq))
        server.finish("video", 5, frame(5).t_ns)
        serve_until(server, [second], lambda: second.eof is not None)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        server.close()
    assert [f["seq"] for f in second.frames] == [0, 1, 2, 3, 4, 5], "frame 0 is handed out again"


def test_shm_members_read_pixels_in_place_and_every_lease_comes_back(server, addr):
    n = 40
    shm_a = Member(addr("frames"), "a", encoding="shm")
    shm_b = Member(addr("frames"), "b", encoding="shm", fps="10")
    raw = Member(addr("frames"), "c")  # a raw member next to shm ones: pixels from the ring
    members = [shm_a, shm_b, raw]
    try:
        assert not server.wait_for_groups(["a", "b", "c"], TIMEOUT_S)
        serve_until(server, members, lambda: len(server.members) == 3)
        assert server.ring is not None
        for seq in range(n):
            serve_until(server, members, server.can_accept)
            server.publish(frame(seq))
        server.finish("video", n - 1, frame(n - 1).t_ns)
        serve_until(server, members, lambda: all(m.eof is not None for m in members))
        serve_until(server, members, server.drained)
        ring = server.ring
        assert ring.free == ring.n_slots and not any(ring.refs), "every slot released"
    finally:
        codes = [m.stop() for m in members]
    assert codes == [0, 0, 0]
    assert [f["seq"] for f in shm_a.frames] == list(range(n))
    assert {f["encoding"] for f in shm_a.frames} == {"shm"}
    assert {f["encoding"] for f in raw.frames} == {"raw"}
    assert [f["seq"] for f in shm_b.frames] == list(range(0, n, 3))
    assert all(f["pixels_ok"] for m in members for f in m.frames)


def test_lazy_frames_are_converted_only_when_a_group_samples_them(server, addr):
    n = 45
    sampled = Member(addr("frames"), "sampled", fps="10", encoding="shm")  # every 3rd frame
    members = [sampled]
    converted: list[int] = []

    def lazy(seq: int) -> Frame:
        def pixels() -> np.ndarray:
            converted.append(seq)
            return frame(seq).data
        return msgspec.structs.replace(frame(seq), data=pixels)

    try:
        assert not server.wait_for_groups(["sampled"], TIMEOUT_S)
        feed(server, members, [lazy(seq) for seq in range(n)])
        serve_until(server, members, lambda: sampled.eof is not None)
    finally:
        codes = [m.stop() for m in members]
    assert codes == [0]
    assert [f["seq"] for f in sampled.frames] == list(range(0, n, 3))
    assert all(f["pixels_ok"] for f in sampled.frames)
    assert converted == list(range(0, n, 3)), "the others never became pixels"
    gaps = [tuple(g) for f in sampled.frames for g in f["gaps"]] + \
        [tuple(g) for g in sampled.eof["gaps"]]
    assert {g[2] for g in gaps} == {"sampled"}
    skipped = sorted(s for first, last, _ in gaps for s in range(first, last + 1))
    assert skipped == [s for s in range(n) if s % 3], "every other frame is a sampled gap"


def test_sampler_due_answers_what_a_call_would_without_taking_the_slot():
    from momentbus.ipc.sampling import FpsSampler

    probe, reference = FpsSampler(10.0), FpsSampler(10.0)
    for t_ns in range(0, 3_000_000_000, 41_708_333):  # 23.976 fps
        assert probe.due(t_ns) == probe.due(t_ns) == reference(t_ns)
        probe(t_ns)


def test_credits_come_back_in_batches_and_every_one_by_the_end(server, addr):
    n = 63  # 15 batches of 4, and 3 owed when the Eof comes
    batched = Member(addr("frames"), "batched", credits=8, credit_batch=4, encoding="shm")
    members = [batched]
    credits: list[int] = []
    recv = server.inbox.recv

    def counting_recv(timeout_ms: int):
        msg = recv(timeout_ms)
        if isinstance(msg, Credit):
            credits.append(msg.n)
        return msg

    server.inbox.recv = counting_recv
    try:
        assert not server.wait_for_groups(["batched"], TIMEOUT_S)
        feed(server, members, [frame(seq) for seq in range(n)])
        serve_until(server, members, lambda: batched.eof is not None)
        serve_until(server, members, server.drained)
        assert server.ring is not None and server.ring.free == server.ring.n_slots
    finally:
        codes = [m.stop() for m in members]
    assert codes == [0]
    assert [f["seq"] for f in batched.frames] == list(range(n))
    assert all(f["pixels_ok"] for f in batched.frames)
    assert credits == [8] + [4] * 15 + [3]  # the window, then one message per 4 items


def test_a_crashed_shm_readers_leases_are_reclaimed(addr):
    now, records = [0.0], []
    server = _virtual_server(addr, now, records, grace_s=0.0)
    reader = Member(addr("frames"), "face", credits=2, mode="slow", encoding="shm")
    try:
        assert not server.wait_for_groups(["face"], TIMEOUT_S)
        server.publish(frame(0))
        serve_until(server, [reader], lambda: len(reader.frames) == 1)
        server.publish(frame(1))
        held = server.ring.n_slots - server.ring.free
        assert held == 2, "two frames leased to the reader"
        reader.proc.kill()
        reader.proc.wait(TIMEOUT_S)
        now[0] += 6.0
        server.poll(0)
        server.publish(frame(2))  # no member, no grace: dropped, and the ring is empty again
        assert server.ring.free == server.ring.n_slots
    finally:
        reader.stop()
        server.close()


def test_cross_host_path_over_tcp_with_raw_and_jpeg_payloads():
    import zmq

    welcome = Welcome(source_id="synthetic", width=W, height=H, time_base=TB, duration_ns=None,
                      live=False)
    server = FrameBusServer("tcp://127.0.0.1:*", welcome)
    address = server.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    raw, jpeg = Member(address, "raw"), Member(address, "jpeg", encoding="jpeg")
    members = [raw, jpeg]
    try:
        assert not server.wait_for_groups(["raw", "jpeg"], TIMEOUT_S)
        for seq in range(20):
            serve_until(server, members, server.can_accept)
            server.publish(frame(seq))
        server.finish("video", 19, frame(19).t_ns)
        serve_until(server, members, lambda: all(m.eof is not None for m in members))
    finally:
        codes = [m.stop() for m in members]
        server.close()
    assert codes == [0, 0]
    for m, enc in ((raw, "raw"), (jpeg, "jpeg")):
        assert [f["seq"] for f in m.frames] == list(range(20))
        assert {f["encoding"] for f in m.frames} == {enc}
        assert all(f["pixels_ok"] for f in m.frames)


def test_a_client_drops_frames_of_another_source(addr):
    """Frames and audio must be of the source the Welcome named: anything else is counted as a
    bad message and never handed to the extractor."""
    import zmq

    from momentbus.ipc import sockets
    from momentbus.ipc.framebus import FrameBusClient
    from momentbus.ipc.schema import Hello, Welcome

    with sockets.bind(zmq.ROUTER, addr("frames")) as router, \
            FrameBusClient(addr("frames"), Hello(component="c", group="g", pid=1)) as client:
        sockets.send(client.sock, client.hello)
        identity, hello = sockets.recv(router, router=True)
        assert isinstance(hello, Hello)
        welcome = Welcome(source_id="synthetic", width=W, height=H, time_base=TB,
                          duration_ns=None, live=False)
        sockets.send(router, welcome, identity=identity)
        client.welcome = welcome
        from msgspec.structs import replace

        sockets.send(router, replace(frame(1), source_id="impostor"), identity=identity)
        sockets.send(router, frame(2), identity=identity)
        got = client.recv(5000)
        assert got is not None and got.seq == 2
        assert client.bad_messages == 1
