"""Reliable links: at-least-once, in-order delivery over DEALER -> ROUTER, with acks and resends.

A killed receiver loses what sat in its socket buffers; PUSH/PULL would then drop observations,
watermarks or triggers without a trace (and a later watermark would hide the hole). So the links
whose messages must not be lost (extractor -> fusion, daemon -> fusion, fusion -> clip) follow the
ZeroMQ guide's reliable request-reply idea, one way:

* The sender (:class:`ReliableSender`, a DEALER) numbers each message (``rseq`` = 1, 2, ...
  per incarnation of the sender), keeps it until acknowledged, and sends it in an envelope:
  ``[b"rel", Envelope(sender, incarnation, rseq, acked), kind, header, *payload]``.
* The receiver (:class:`ReliableReceiver`, a ROUTER) hands a message on only in order: the next
  ``rseq`` of that sender incarnation. A duplicate is re-acknowledged and skipped; a message
  after a gap is dropped (the sender will resend from the gap). Once the application has made a
  message durable (fusion: written to its log; clip: the clip written) it calls :meth:`done`,
  and :meth:`flush_acks` sends each sender one cumulative :class:`~momentbus.ipc.schema.Ack`
  carrying the receiver's own incarnation.
* The sender resends everything unacknowledged, in order, when an Ack shows a new receiver
  incarnation (the receiver restarted) or when nothing was acknowledged for ``resend_s`` while
  messages wait (the receiver is down, or an ack was lost).
* A receiver with no state for a sender (a fresh clip role) starts from the envelope's
  ``acked``: what the sender knows was durably handled before.

The guarantee is at-least-once in order per sender; receivers make handling idempotent (fusion
drops duplicate observations per group, a clip named from its TRIG is not cut twice).
Plain (un-enveloped) messages also pass through a receiver, for traffic that may be lost
(heartbeats).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import msgspec
import zmq
from msgspec import Meta, Struct

from . import sockets
from .errors import DecodeError
from .schema import Ack, Message, decode, encode

ENVELOPE: bytes = b"rel"
M = TypeVar("M", bound=Message)

#: A sender with no acknowledgement for this long while messages wait resends them. Acks come
#: back within one receiver poll (0.1 s) when the receiver is up; 1 s is ten of those.
DEFAULT_RESEND_S = 1.0
#: Unacknowledged messages a sender keeps before it refuses more (the caller waits: that is the
#: backpressure that pauses the pipeline while the receiver is down). 20,000 observations are
#: ~30 min of 10 fps.
DEFAULT_MAX_UNACKED = 20_000
#: A receiver sends cumulative acks at most this often per sender.
ACK_INTERVAL_S = 0.05


class Envelope(Struct, array_like=True, frozen=True, gc=False):
    """Who sent a reliable message and its place in the sender's stream."""

    sender: Annotated[str, Meta(min_length=1, max_length=128)]
    incarnation: Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]
    rseq: Annotated[int, Meta(ge=1, le=(1 << 62))]
    acked: Annotated[int, Meta(ge=0, le=(1 << 62))]


_ENV_DECODER = msgspec.msgpack.Decoder(Envelope)
_ENV_ENCODER = msgspec.msgpack.Encoder()


def incarnation_now() -> int:
    """A new incarnation number: the wall clock in ns at process start (increases across
    restarts of one process while the clock does; only compared for equality and order)."""
    return time.time_ns()


class ReliableSender:
    """The sending end of a reliable link (one per process and peer; not thread-safe).

    Args:
        sock: a DEALER connected to the receiver.
        sender: this end's stable name (``extractor:face#1``, ``daemon``, ``fusion``).
        incarnation: this process's incarnation.
        resend_s: resend what waits unacknowledged after this long without progress.
        max_unacked: :meth:`has_room` turns false past this many unacknowledged messages.
        now: monotonic clock, seconds (injected for tests).
    """

    def __init__(self, sock: zmq.Socket[Any], sender: str, incarnation: int, *,
                 resend_s: float = DEFAULT_RESEND_S, max_unacked: int = DEFAULT_MAX_UNACKED,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        self.sender = sender
        self.incarnation = incarnation
        self.resend_s = resend_s
        self.max_unacked = max_unacked
        self._now = now
        self.next_rseq = 1
        self.acked = 0
        self.receiver_incarnation: int | None = None
        self.resends = 0
        self.bad_messages = 0
        self._unacked: deque[tuple[int, list[Any]]] = deque()
        self._last_progress = now()

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def has_room(self) -> bool:
        return len(self._unacked) < self.max_unacked

    def send(self, msg: Message) -> int:
        """Send ``msg`` and keep it until acknowledged; returns its ``rseq``."""
        rseq = self.next_rseq
        self.next_rseq += 1
        parts = encode(msg)
        self._unacked.append((rseq, parts))
        if len(self._unacked) == 1:
            self._last_progress = self._now()
        self._transmit(rseq, parts)
        return rseq

    def _transmit(self, rseq: int, parts: list[Any]) -> None:
        env = _ENV_ENCODER.encode(Envelope(self.sender, self.incarnation, rseq, self.acked))
        try:
            self.sock.send_multipart([ENVELOPE, env, *parts], copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:  # the pipe is full (receiver gone): the resend timer covers it
            pass

    def pump(self) -> None:
        """Handle the acks that arrived (non-blocking), and resend if due."""
        while self.sock.poll(0):
            try:
                _, msg = sockets.recv(self.sock, flags=zmq.NOBLOCK)
            except zmq.Again:  # pragma: no cover - poll said readable
                break
            except DecodeError:
                self.bad_messages += 1
                continue
            if isinstance(msg, Ack):
                self._on_ack(msg)
            else:
                self.bad_messages += 1
        if self._unacked and self._now() - self._last_progress >= self.resend_s:
            self.resend_all()

    def _on_ack(self, ack: Ack) -> None:
        fresh_receiver = (self.receiver_incarnation is not None
                          and ack.incarnation != self.receiver_incarnation)
        self.receiver_incarnation = ack.incarnation
        if ack.rseq > self.acked:
            self.acked = ack.rseq
            while self._unacked and self._unacked[0][0] <= ack.rseq:
                self._unacked.popleft()
            self._last_progress = self._now()
        if fresh_receiver and self._unacked:
            self.resend_all()

    def resend_all(self) -> None:
        """Send every unacknowledged message again, in order."""
        self.resends += 1
        self._last_progress = self._now()
        for rseq, parts in list(self._unacked):
            self._transmit(rseq, parts)

    def wait(self, until: Callable[[], bool], timeout_s: float,
             idle: Callable[[], None] = lambda: None) -> bool:
        """Pump (calling ``idle`` between polls) until ``until()`` or ``timeout_s``; returns
        ``until()``."""
        deadline = self._now() + timeout_s
        while not until():
            left = deadline - self._now()
            if left <= 0:
                return False
            self.sock.poll(int(min(left, 0.05) * 1000))
            self.pump()
            idle()
        return True

    def all_acked(self) -> bool:
        return not self._unacked


@dataclass
class Delivery(Generic[M]):
    """A message a receiver hands on. For a reliable one ``sender``/``rseq`` are set and the
    application calls :meth:`ReliableReceiver.done` once it is durable."""

    msg: M
    identity: bytes
    sender: str | None = None
    incarnation: int = 0
    rseq: int = 0
    #: the IP address it came from (TCP; "" for ipc)
    peer_address: str = ""


@dataclass
class _Peer:
    incarnation: int
    handled: int  # highest rseq handed on (in order)
    durable: int  # highest rseq the application marked done
    acked_sent: int = -1
    identity: bytes = b""
    last_ack_at: float = 0.0


class ReliableReceiver(Generic[M]):
    """The receiving end: a bound ROUTER. Hands on plain messages and in-order reliable ones.

    Args:
        sock: a bound ROUTER.
        accept: message types this end takes (anything else is counted as bad).
        incarnation: this process's incarnation (carried in every Ack).
        on_bad: called with each malformed or unexpected message's error.
        where: names this end in error texts.
        state: ``sender -> (incarnation, last durable rseq)`` restored from a log (fusion), so
            a restarted receiver neither repeats nor skips.
    """

    def __init__(self, sock: zmq.Socket[Any], accept: tuple[type[M], ...], incarnation: int, *,
                 on_bad: Callable[[DecodeError], None] | None = None, where: str = "",
                 state: dict[str, tuple[int, int]] | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        self.accept = accept
        self.incarnation = incarnation
        self.where = where or "this end"
        self._on_bad = on_bad or (lambda e: None)
        self._now = now
        self.bad: dict[str, int] = {}
        self.duplicates = 0
        self.out_of_order = 0
        self.peers: dict[str, _Peer] = {
            name: _Peer(inc, rseq, rseq) for name, (inc, rseq) in (state or {}).items()}

    def _count(self, err: DecodeError) -> None:
        name = type(err).__name__
        self.bad[name] = self.bad.get(name, 0) + 1
        self._on_bad(err)

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def recv(self, timeout_ms: int) -> Delivery[M] | None:
        """The next message to handle, or ``None`` after ``timeout_ms``."""
        deadline = self._now() + timeout_ms / 1000
        wait = timeout_ms
        while self.sock.poll(wait):
            wait = max(0, int((deadline - self._now()) * 1000))
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:  # pragma: no cover - poll said readable
                return None
            delivery = self._parse(frames)
            if delivery is not None:
                return delivery
        return None

    def _parse(self, frames: list[Any]) -> Delivery[M] | None:
        if len(frames) < 3:
            self._count(DecodeError(f"{self.where}: message without identity or body"))
            return None
        identity = frames[0].bytes
        env: Envelope | None = None
        body = frames[1:]
        if body[0].bytes == ENVELOPE:
            if len(body) < 4:
                self._count(DecodeError(f"{self.where}: envelope without a message"))
                return None
            try:
                env = _ENV_DECODER.decode(body[1].buffer)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as e:
                self._count(DecodeError(f"{self.where}: bad envelope: {e}"))
                return None
            body = body[2:]
        try:
            msg = decode(body)
        except DecodeError as e:
            self._count(e)
            if env is not None:  # a message that never decodes must not block the link
                self._skip_bad(env, identity)
            return None
        if not isinstance(msg, self.accept):
            self._count(DecodeError(f"unexpected {type(msg).__name__} at {self.where}"))
            if env is not None:
                self._skip_bad(env, identity)
            return None
        if env is None:
            return Delivery(msg, identity, peer_address=sockets.peer_address(frames[0]))
        return self._order(env, identity, msg, sockets.peer_address(frames[0]))

    def _peer_for(self, env: Envelope, identity: bytes) -> _Peer | None:
        peer = self.peers.get(env.sender)
        if peer is None or env.incarnation > peer.incarnation:
            # a sender we have no state for (or a newer incarnation of it): start from what it
            # says was durably handled
            peer = _Peer(env.incarnation, env.acked, env.acked)
            self.peers[env.sender] = peer
        elif env.incarnation < peer.incarnation:
            return None  # a message from a process that has been replaced: stale
        if env.acked > peer.handled:
            # an earlier incarnation of this receiver made these durable (the sender has the
            # acks): never wait for messages the sender no longer keeps
            peer.handled = peer.durable = env.acked
        peer.identity = identity
        return peer

    def _order(self, env: Envelope, identity: bytes, msg: M,
               address: str = "") -> Delivery[M] | None:
        peer = self._peer_for(env, identity)
        if peer is None:
            self.duplicates += 1
            return None
        if env.rseq <= peer.handled:
            self.duplicates += 1
            peer.acked_sent = -1  # acknowledge again: the sender may have missed the ack
            return None
        if env.rseq != peer.handled + 1:
            self.out_of_order += 1  # a gap: wait for the resend from it
            return None
        peer.handled = env.rseq
        return Delivery(msg, identity, env.sender, env.incarnation, env.rseq, address)

    def _skip_bad(self, env: Envelope, identity: bytes) -> None:
        """A reliable message that can never be handled is acknowledged as handled (it was
        counted as bad), so the link goes on."""
        peer = self._peer_for(env, identity)
        if peer is not None and env.rseq == peer.handled + 1:
            peer.handled = env.rseq
            peer.durable = max(peer.durable, env.rseq)

    def done(self, delivery: Delivery[M]) -> None:
        """The application made ``delivery`` durable: it may be acknowledged."""
        if delivery.sender is None:
            return
        peer = self.peers.get(delivery.sender)
        if peer is not None and peer.incarnation == delivery.incarnation:
            peer.durable = max(peer.durable, delivery.rseq)

    def state(self) -> dict[str, tuple[int, int]]:
        """``sender -> (incarnation, durable rseq)``: what a log must keep to restart."""
        return {name: (p.incarnation, p.durable) for name, p in self.peers.items()}

    def flush_acks(self, force: bool = False) -> None:
        """Send each sender a cumulative Ack for what became durable (at most every
        :data:`ACK_INTERVAL_S` per sender unless ``force``)."""
        now = self._now()
        for peer in self.peers.values():
            if not peer.identity or peer.durable == peer.acked_sent:
                continue
            if not force and now - peer.last_ack_at < ACK_INTERVAL_S and peer.acked_sent >= 0:
                continue
            try:
                sockets.send(self.sock, Ack(rseq=peer.durable, incarnation=self.incarnation),
                             identity=peer.identity, flags=zmq.NOBLOCK)
            except zmq.ZMQError:  # the sender is gone (EHOSTUNREACH) or slow: it will resend
                continue
            peer.acked_sent = peer.durable
            peer.last_ack_at = now
