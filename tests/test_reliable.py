"""Reliable links: in order, at least once, across a receiver restart; duplicates and gaps."""

from __future__ import annotations

import msgspec
import zmq

from momentbus.ipc import sockets
from momentbus.ipc.reliable import (ENVELOPE, Envelope, ReliableReceiver, ReliableSender)
from momentbus.ipc.schema import Ack, Heartbeat, Watermark, encode


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def wm(i: int) -> Watermark:
    return Watermark(source_id="s", group="g", component="extractor:g#1", t_ns=i)


def drain(receiver: ReliableReceiver, n: int, timeout_ms: int = 2000) -> list[int]:
    """Receive, mark durable and acknowledge until ``n`` reliable messages were handed on."""
    got: list[int] = []
    while len(got) < n:
        d = receiver.recv(timeout_ms)
        assert d is not None, f"only {len(got)} of {n} messages came"
        got.append(d.msg.t_ns)
        receiver.done(d)
    receiver.flush_acks(force=True)
    return got


def exchange(sender: ReliableSender, receiver: ReliableReceiver, clock: Clock, n: int,
             timeout_s: float = 10.0) -> list[int]:
    """Run both ends as their processes would (the sender pumping, its clock advancing by half
    a second whenever nothing arrives) until ``n`` messages were handed on; returns them."""
    import time

    got: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {got} arrived"
        d = receiver.recv(50)
        if d is None:
            clock.t += 0.5
        else:
            got.append(d.msg.t_ns)
            receiver.done(d)
        receiver.flush_acks(force=True)
        sender.pump()
    return got


def settle(sender: ReliableSender, timeout_s: float = 5.0) -> None:
    assert sender.wait(sender.all_acked, timeout_s), f"{sender.unacked} never acknowledged"


def test_messages_arrive_once_in_order_and_are_acknowledged(addr):
    with sockets.bind(zmq.ROUTER, addr("r")) as router, \
            sockets.connect(zmq.DEALER, addr("r")) as dealer:
        receiver = ReliableReceiver(router, (Watermark,), incarnation=1)
        sender = ReliableSender(dealer, "extractor:g#1", incarnation=7)
        for i in range(200):
            sender.send(wm(i))
        assert drain(receiver, 200) == list(range(200))
        settle(sender)
        assert sender.acked == 200 and sender.receiver_incarnation == 1
        assert receiver.state() == {"extractor:g#1": (7, 200)}


def test_a_restarted_receiver_gets_everything_not_acknowledged_in_order(addr):
    clock = Clock()
    with sockets.connect(zmq.DEALER, addr("r")) as dealer:
        sender = ReliableSender(dealer, "fusion", incarnation=7, now=clock)
        with sockets.bind(zmq.ROUTER, addr("r")) as router:
            first = ReliableReceiver(router, (Watermark,), incarnation=1)
            for i in range(10):
                sender.send(wm(i))
            assert drain(first, 4) == [0, 1, 2, 3]  # only these became durable...
            first.flush_acks(force=True)
            settle_until = sender.wait(lambda: sender.acked == 4, 5)
            assert settle_until
            for _ in range(6):  # ...the rest were handed on, but the process dies before done()
                assert first.recv(2000) is not None
        # a new process binds the same address, with no memory of the sender
        with sockets.bind(zmq.ROUTER, addr("r")) as router:
            second = ReliableReceiver(router, (Watermark,), incarnation=2)
            sender.send(wm(10))  # its envelope says acked=4: the new receiver starts there
            got = exchange(sender, second, clock, 7)
            assert got == list(range(4, 11)), "nothing lost, nothing twice, in order"
            settle(sender)
    assert sender.resends >= 1


def test_duplicates_are_skipped_and_acknowledged_again(addr):
    clock = Clock()
    with sockets.bind(zmq.ROUTER, addr("r")) as router, \
            sockets.connect(zmq.DEALER, addr("r")) as dealer:
        receiver = ReliableReceiver(router, (Watermark,), incarnation=1)
        sender = ReliableSender(dealer, "daemon", incarnation=3, now=clock)
        for i in range(5):
            sender.send(wm(i))
        assert drain(receiver, 5) == list(range(5))
        sender.resend_all()  # as after a lost ack
        assert receiver.recv(300) is None, "the copies are not handed on"
        assert receiver.duplicates == 5
        receiver.flush_acks()
        settle(sender)


def raw(dealer, sender: str, incarnation: int, rseq: int, acked: int, msg) -> None:
    env = msgspec.msgpack.encode(Envelope(sender, incarnation, rseq, acked))
    dealer.send_multipart([ENVELOPE, env, *encode(msg)])


def test_a_gap_is_never_handed_on_out_of_order(addr):
    with sockets.bind(zmq.ROUTER, addr("r")) as router, \
            sockets.connect(zmq.DEALER, addr("r")) as dealer:
        receiver = ReliableReceiver(router, (Watermark,), incarnation=1)
        raw(dealer, "x", 1, 1, 0, wm(1))
        raw(dealer, "x", 1, 3, 0, wm(3))  # 2 was lost in transit
        raw(dealer, "x", 1, 2, 0, wm(2))
        raw(dealer, "x", 1, 3, 0, wm(3))  # the resend
        assert drain(receiver, 3) == [1, 2, 3]
        assert receiver.out_of_order == 1


def test_restored_state_skips_what_the_log_already_holds(addr):
    with sockets.bind(zmq.ROUTER, addr("r")) as router, \
            sockets.connect(zmq.DEALER, addr("r")) as dealer:
        receiver = ReliableReceiver(router, (Watermark,), incarnation=2, state={"x": (5, 3)})
        for rseq in (1, 2, 3, 4):
            raw(dealer, "x", 5, rseq, 0, wm(rseq))
        assert drain(receiver, 1) == [4]
        raw(dealer, "x", 4, 5, 0, wm(99))  # an older incarnation of the sender: stale
        raw(dealer, "x", 6, 1, 0, wm(100))  # a newer one starts over from its own acked
        assert drain(receiver, 1) == [100]


def test_malformed_input_is_counted_and_the_link_goes_on(addr):
    with sockets.bind(zmq.ROUTER, addr("r")) as router, \
            sockets.connect(zmq.DEALER, addr("r")) as dealer:
        bad = []
        receiver = ReliableReceiver(router, (Watermark, Heartbeat), incarnation=1,
                                    on_bad=bad.append)
        dealer.send_multipart([ENVELOPE, b"\xc1junk", *encode(wm(0))])
        dealer.send_multipart([ENVELOPE, msgspec.msgpack.encode(Envelope("x", 1, 1, 0)),
                               b"wm", b"\xc1"])  # rseq 1 never decodes: skipped, not blocking
        raw(dealer, "x", 1, 2, 0, wm(2))
        raw(dealer, "x", 1, 3, 0, Ack(rseq=1, incarnation=1))  # decodes, but not accepted here
        raw(dealer, "x", 1, 4, 0, wm(4))
        dealer.send_multipart(encode(Heartbeat(component="c", wall_ns=1)))  # plain: passes
        got = []
        while len(got) < 3:
            d = receiver.recv(2000)
            assert d is not None
            got.append(type(d.msg).__name__ + str(d.rseq))
            receiver.done(d)
        assert got == ["Watermark2", "Watermark4", "Heartbeat0"]
        assert receiver.bad_total == 3 and len(bad) == 3


def test_a_fresh_receiver_moves_on_to_what_the_sender_learned_was_acknowledged(addr):
    """A new receiver based itself on an old ``acked``; the sender then learned (from the old
    receiver's last ack) that more was durable and dropped those messages: the receiver must
    not wait for them."""
    with sockets.bind(zmq.ROUTER, addr("r")) as router, \
            sockets.connect(zmq.DEALER, addr("r")) as dealer:
        receiver = ReliableReceiver(router, (Watermark,), incarnation=2)
        raw(dealer, "x", 1, 11, 4, wm(11))   # base 4: rseq 11 is after a gap, dropped
        raw(dealer, "x", 1, 11, 10, wm(11))  # the resend knows 10 were acknowledged
        assert drain(receiver, 1) == [11]
