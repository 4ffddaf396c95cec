"""Frame-bus membership: stalls, restarts, supersession, a restarted daemon, stray peers.

Members are real processes (tests/bus_client.py); the server runs on virtual time where the test
needs time to pass, and every wait has a deadline.
"""

from __future__ import annotations

import time

import zmq

from momentbus.ipc import sockets
from momentbus.ipc.framebus import FrameBusServer
from momentbus.ipc.schema import Credit, Heartbeat, Hello, Rejoin, Welcome

from test_framebus import TB, TIMEOUT_S, H, W, Member, frame, serve_until

WELCOME = Welcome(source_id="synthetic", width=W, height=H, time_base=TB, duration_ns=None,
                  live=False)


def virtual(addr, now, records, **kw) -> FrameBusServer:
    kw.setdefault("rejoin_grace_s", 10.0)
    return FrameBusServer(addr("frames"), WELCOME, queue_size=2, member_timeout_s=5.0,
                          now=lambda: now[0], trace=lambda r, **k: records.append((r, k)), **kw)


def events(records, name):
    return [k for r, k in records if r == "member" and k.get("event") == name]


def test_a_stalled_member_rejoins_and_gets_its_own_items_back_first(addr):
    """SIGSTOP for longer than the member timeout, then SIGCONT: the server dropped the member
    and pinned what it held; the member's next credit is from a stranger, so it is asked to
    rejoin, and its items come back to it before anything newer, nothing to another member."""
    now, records = [0.0], []
    server = virtual(addr, now, records)
    m = Member(addr("frames"), "face", credits=1, mode="slow")
    try:
        assert not server.wait_for_groups(["face"], TIMEOUT_S)
        server.publish(frame(0))
        serve_until(server, [m], lambda: len(m.frames) == 1)  # holds 0, "stopped"
        server.publish(frame(1))
        now[0] += 6.0
        server.poll(0)
        assert [e["reason"] for e in events(records, "leave")] == ["timeout"]
        assert not server.can_accept(), "its items are kept for it, the source waits"
        m.go()  # "SIGCONT": it finishes frame 0 and returns the credit
        serve_until(server, [m], lambda: len(m.frames) == 2)
        m.go()
        serve_until(server, [m], lambda: len(m.frames) == 3)
        m.go()
        server.finish("video", 1, frame(1).t_ns)
        serve_until(server, [m], lambda: m.eof is not None)
    finally:
        m.stop()
        server.close()
    assert [f["seq"] for f in m.frames] == [0, 0, 1], "its own item again first, then the rest"
    assert len(events(records, "join")) == 2


def test_a_newer_incarnation_replaces_the_old_one_which_is_told_to_stop(addr):
    records = []
    server = FrameBusServer(addr("frames"), WELCOME, queue_size=2,
                            trace=lambda r, **k: records.append((r, k)))
    old = Member(addr("frames"), "face", credits=1, mode="slow")
    new = None
    try:
        assert not server.wait_for_groups(["face"], TIMEOUT_S)
        server.publish(frame(0))
        serve_until(server, [old], lambda: len(old.frames) == 1)
        new = Member(addr("frames"), "face")  # same group and instance, started later
        serve_until(server, [old, new], lambda: len(new.frames) == 1)
        old.go()  # the old process goes on: its credit is from a stranger now
        deadline = time.monotonic() + TIMEOUT_S
        while old.proc.poll() is None:
            assert time.monotonic() < deadline, "the superseded member kept running"
            server.poll(50)
        server.finish("video", 0, frame(0).t_ns)
        serve_until(server, [new], lambda: new.eof is not None)
    finally:
        old.stop()
        if new is not None:
            new.stop()
        server.close()
    assert old.proc.returncode != 0
    assert [f["seq"] for f in new.frames] == [0], "the new incarnation got the old one's item"
    assert [e["reason"] for e in events(records, "leave") if e["reason"] != "bye"] == ["replaced"]
    assert events(records, "superseded")


def test_clients_rejoin_a_restarted_daemon_and_get_only_what_they_have_not_done(addr):
    m = Member(addr("frames"), "face")
    first = FrameBusServer(addr("frames"), WELCOME, queue_size=4)
    try:
        assert not first.wait_for_groups(["face"], TIMEOUT_S)
        for seq in range(6):
            serve_until(first, [m], first.can_accept)
            first.publish(frame(seq))
        serve_until(first, [m], lambda: len(m.frames) == 6)
        first.close()  # the daemon dies
        records = []
        second = FrameBusServer(addr("frames"), WELCOME, queue_size=4,
                                trace=lambda r, **k: records.append((r, k)))
        started = time.monotonic()
        assert not second.wait_for_groups(["face"], TIMEOUT_S)
        rejoined_s = time.monotonic() - started
        for seq in range(10):  # re-reading the file from the start
            serve_until(second, [m], second.can_accept)
            second.publish(frame(seq))
        second.finish("video", 9, frame(9).t_ns)
        serve_until(second, [m], lambda: m.eof is not None)
        second.close()
    finally:
        m.stop()
    assert [f["seq"] for f in m.frames] == list(range(10)), "nothing twice, nothing missed"
    assert events(records, "join")[0]["last_seq"] == 5
    assert rejoined_s < 3.0, f"rejoined in {rejoined_s:.1f} s"


def test_a_group_nobody_expects_cannot_hold_the_source_back(addr):
    records = []
    server = FrameBusServer(addr("frames"), WELCOME, queue_size=2, expected_groups=["face"],
                            trace=lambda r, **k: records.append((r, k)))
    rogue = Member(addr("frames"), "rogue", credits=1, mode="slow")  # asks for `every`
    try:
        assert not server.wait_for_groups(["rogue"], TIMEOUT_S)
        for seq in range(20):
            assert server.can_accept(), f"held back at {seq}"
            server.publish(frame(seq))
            server.poll(0)
        serve_until(server, [rogue], lambda: bool(rogue.frames))  # served, as `latest`
    finally:
        rogue.stop()
        server.close()
    assert events(records, "downgraded")[0]["policy"] == "latest"


def test_a_peer_that_never_grants_credit_stops_holding_the_source_within_the_timeout(addr):
    now, records = [0.0], []
    server = virtual(addr, now, records, expected_groups=["face"])
    with sockets.connect(zmq.DEALER, addr("frames")) as peer:
        sockets.send(peer, Hello(component="x", group="face", pid=1))
        serve_until(server, [], lambda: peer.poll(0))
        assert isinstance(sockets.recv(peer)[1], Welcome)
        for seq in range(2):
            server.publish(frame(seq))
        assert not server.can_accept()
        for _ in range(12):  # alive (heartbeats), but never a credit
            sockets.send(peer, Heartbeat(component="x", wall_ns=1))
            now[0] += 0.5
            server.poll(20)
        assert server.can_accept(), "no longer holds the source"
        assert [e["reason"] for e in events(records, "leave")] == ["stalled"]


def test_a_stranger_is_asked_to_rejoin(addr):
    server = FrameBusServer(addr("frames"), WELCOME)
    with sockets.connect(zmq.DEALER, addr("frames")) as peer:
        sockets.send(peer, Credit(n=3))
        serve_until(server, [], lambda: peer.poll(0))
        _, msg = sockets.recv(peer)
        assert isinstance(msg, Rejoin) and msg.reason == "unknown member"
    server.close()


def test_a_lost_instance_items_go_to_the_rest_of_its_group_after_the_grace(addr):
    now, records, lost = [0.0], [], []
    server = virtual(addr, now, records, on_member_lost=lambda c, g: lost.append((c, g)))
    a = Member(addr("frames"), "shared", credits=1, mode="slow", instance=1)
    b = Member(addr("frames"), "shared", credits=1, mode="slow", instance=2)
    try:
        assert not server.wait_for_groups(["shared"], TIMEOUT_S)
        serve_until(server, [a, b], lambda: len(server.groups["shared"].members) == 2)
        server.publish(frame(0))
        serve_until(server, [a, b], lambda: len(a.frames) + len(b.frames) == 1)
        holder, other = (a, b) if a.frames else (b, a)
        holder.proc.kill()  # dies holding frame 0
        holder.proc.wait(TIMEOUT_S)
        now[0] += 6.0
        server.poll(0)
        other.pump()
        assert not other.frames, "pinned to the dead instance during the grace"
        now[0] += 11.0
        serve_until(server, [other], lambda: len(other.frames) == 1)
    finally:
        a.stop()
        b.stop()
        server.close()
    assert [f["seq"] for f in other.frames] == [0]
    assert lost == [(f"test:shared#{1 if holder is a else 2}", "shared")]


def test_fusion_heartbeat_stops_at_once_not_at_its_next_beat(addr, monkeypatch):
    """An extractor joins its fusion-heartbeat thread on the way out: stop() must wake the
    thread from its wait, or every extractor outlives its work by up to a beat interval (made
    an hour here, so only the wake-up can end the thread within the join's deadline)."""
    from momentbus.extractors import runner

    monkeypatch.setattr(runner, "HEARTBEAT_INTERVAL_S", 3600.0)
    fusion = sockets.bind(zmq.ROUTER, addr("obs"), hwm=0)
    try:
        beat = runner._FusionHeartbeat(addr("obs"), "extractor:test#1")
        beat.start()
        assert fusion.poll(int(TIMEOUT_S * 1000)), "no heartbeat reached fusion"
        _, msg = sockets.recv(fusion, router=True)
        assert isinstance(msg, Heartbeat)  # the thread is in its hour-long wait now
        beat.stop()
        beat.join(TIMEOUT_S)
        assert not beat.is_alive()
        beat.stop()  # idempotent
    finally:
        fusion.close(0)

