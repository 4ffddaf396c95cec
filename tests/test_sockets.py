"""Typed sends: a message goes out whole, part by part, or not at all."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import zmq

from momentbus.ipc import sockets
from momentbus.ipc.schema import Credit, Frame

TB = Fraction(1, 30)


def test_a_frame_with_a_zero_copy_payload_arrives_whole(addr):
    img = np.arange(480 * 640 * 3, dtype=np.uint32).astype(np.uint8).reshape(480, 640, 3)
    assert img.nbytes >= sockets.COPY_THRESHOLD  # the payload goes zero-copy, the header not
    frame = Frame(source_id="s", seq=3, pts=3, time_base=TB, t_ns=100, capture_wall_ns=0,
                  width=640, height=480, data=img)
    with sockets.bind(zmq.PULL, addr("a")) as pull, sockets.connect(zmq.PUSH, addr("a")) as push:
        sockets.send(push, frame)
        sockets.send(push, Credit(n=2))
        inbox = sockets.Receiver(pull, (Frame, Credit))
        got = inbox.recv(5000)
        assert isinstance(got, Frame) and got == frame
        assert np.array_equal(got.image(), img)
        assert inbox.recv(5000) == Credit(n=2)  # the next message starts where it should
        assert inbox.bad_total == 0


def test_a_send_that_would_block_sends_nothing(addr):
    with sockets.bind(zmq.DEALER, addr("alone")) as dealer:  # no peer yet: nowhere to queue
        with pytest.raises(zmq.Again):
            sockets.send(dealer, Credit(n=1), flags=zmq.NOBLOCK)
        with sockets.connect(zmq.DEALER, addr("alone")) as peer:
            sockets.send(dealer, Credit(n=2))  # blocks until the peer is there
            assert sockets.Receiver(peer, (Credit,)).recv(5000) == Credit(n=2)
            assert not peer.poll(0)  # nothing of the refused message went out
