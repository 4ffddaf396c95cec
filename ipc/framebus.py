"""The credit-based frame bus (ZeroMQ guide, "Credit-Based Flow Control"), with membership.

The daemon's :class:`FrameBusServer` is a ROUTER; each extractor process is a
:class:`FrameBusClient` (DEALER) that announces its **group**, instance, incarnation, wanted
sampling (fps), payload encoding and delivery **policy** with a :class:`~momentbus.ipc.schema.Hello`,
then grants credit. The server only ever sends a member as many items as it has credit for, so
nothing queues in ZeroMQ or kernel buffers and a slow reader never sees stale frames.

Policies, per group:

* ``every``: lossless and in order. The group's queue is bounded (:attr:`FrameBusServer.queue_size`)
  and :meth:`FrameBusServer.can_accept` is false while any such queue is full, so the source is
  read only as fast as the slowest ``every`` group consumes. Only the groups the daemon expects
  (``expected_groups``) may hold the source back: any other ``every`` Hello is served as
  ``latest`` (traced), so a stray or hostile peer cannot pause the source.
* ``latest``: the group holds at most one undelivered item; a newer one replaces it and the
  replaced seq is reported as a drop (trace ``frame_drop`` and the next item's ``gaps``).

Several members in one group share its items (round robin over members with credit); distinct
groups each see every sampled item.

Membership. A member is ``(group, instance, incarnation)``. A Hello starts a session afresh (the
client holds no item); a Hello of a newer incarnation of a live instance replaces it (the old
process died). When a member leaves without saying so (silent for ``member_timeout_s``, stalled
without returning credit for as long, or replaced), the items it held are **pinned** to its
instance for ``rejoin_grace_s``: only that instance (it coming back, or its restart) gets them,
first, so every member still sees its items in order and fusion sees nothing late. A message
from a peer the server does not know gets a :class:`~momentbus.ipc.schema.Rejoin`, and the peer
says Hello again. After the grace, a lost instance's items go to the rest of its group (or are
dropped as ``no_member`` if it has none) and ``on_member_lost`` tells the daemon, which tells
fusion.

Resuming (a restarted daemon): members report in their Hello the last seq they finished; an item
every current member of a group has passed is not sent to that group again, and
:meth:`FrameBusServer.resume_from` skips what a state file says every group acknowledged.

Cost. Each member costs the daemon one message out per item and one credit back per item, or
per ``credit_batch`` items (:class:`FrameBusClient`). Over ``ipc://`` a message is ~29 us of
CPU at each end and ~55 us of wall time on the project's 2-core machine even in bare pyzmq
(ZeroMQ's I/O threads and the wake-ups between them), on top of the one copy of the pixels into
shared memory (:meth:`~momentbus.ipc.shm.SlotRing.put`). With many members and small frames
that, not the bookkeeping here, is what bounds frames/s (``bench/transport.py``: at 720p with 3
readers, credits returned 4 at a time instead of one by one took the bus from 0.54-0.57x to
0.67-0.74x the bare shared-memory ring and its CPU from ~630 to ~535 us a frame).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import zmq
from msgspec.structs import replace
from numpy.typing import NDArray

from . import sockets
from .errors import DecodeError, PeerTimeoutError
from .curve import HandshakeWatch
from .linkclock import LinkClock
from .sampling import FpsSampler
from .schema import (AudioChunk, Credit, Eof, Frame, Gap, Heartbeat, Hello, Message, Packet,
                     Rejoin, ShmRef, StreamInfo, Welcome)
from .shm import DEFAULT_SLOTS, SlotRing
from .vocab import STREAMS, GapReason

#: Items an ``every`` group may have queued before the source pauses (backpressure). Eight frames
#: keep both cores busy across a model's per-frame jitter (measured: 4 -> 8 gave +6 % frames/s on
#: the sample video, 8 -> 32 nothing) at 8 x 2.7 MB for 720p.
DEFAULT_QUEUE_SIZE = 8
#: A member that sent nothing (or returned no credit while items wait) for this long leaves its
#: group. Longer than one frame of the slowest model here (~0.3 s for 1080p face detection).
DEFAULT_MEMBER_TIMEOUT_S = 5.0
#: How long a member's items stay pinned to its instance (and hold the source back) waiting for
#: it to come back: a restarted extractor (process start + model load: 2-3 s measured here) or a
#: stalled one resuming. Past it, the items go to the rest of the group.
DEFAULT_REJOIN_GRACE_S = 15.0
#: Heartbeat period both ways.
HEARTBEAT_INTERVAL_S = 0.5
#: A client that heard nothing from the daemon for this long says Hello again (the daemon may
#: have restarted): 3 missed heartbeats.
REJOIN_AFTER_S = 1.5
#: Bounds on what peers can make the server hold (each Hello can create a group or a member).
MAX_GROUPS = 64
MAX_MEMBERS = 256
#: A live source never waits for its readers: an ``every`` group (audio, the clip role's
#: packets) keeps at most this many items queued, then drops the oldest (traced). 1,000 packets
#: are 40 s of 25 fps video, far beyond a healthy reader's lag.
LIVE_QUEUE_LIMIT = 1000

Item = Frame | AudioChunk | Packet | StreamInfo
TraceFn = Callable[..., None]


def _stream_of(item: Item) -> str:
    if isinstance(item, Frame):
        return "video"
    if isinstance(item, AudioChunk):
        return "audio"
    return "packets"


@dataclass(eq=False)
class _Member:
    identity: bytes
    component: str
    group: str
    instance: int
    incarnation: int
    encoding: str
    last_seq: int = -1
    credit: int = 0
    last_seen: float = 0.0
    last_sent: float = 0.0
    last_credit: float = 0.0
    worked: bool = False  # returned at least one credit for an item
    in_flight: deque[Item] = field(default_factory=deque)
    eof_sent: bool = False
    #: the member's wall clock against ours, from the stamps on Hello/heartbeats (linkclock.py)
    clock: LinkClock = field(default_factory=LinkClock)
    address: str = ""  # its IP address (TCP)


@dataclass(eq=False)
class _Group:
    name: str
    stream: str
    policy: str
    fps: float | None
    members: list[_Member] = field(default_factory=list)
    queue: deque[Item] = field(default_factory=deque)
    #: instance -> items it held when it left, kept for it until the deadline
    pinned: dict[int, deque[Item]] = field(default_factory=dict)
    pinned_until: dict[int, float] = field(default_factory=dict)
    pinned_component: dict[int, str] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    rr: int = 0
    delivered: int = 0
    dropped: int = 0
    #: the highest seq below which every item this group was offered is acknowledged
    acked_below: int = 0
    outstanding: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.sampler = FpsSampler(self.fps)

    def add_gap(self, seq: int, reason: GapReason) -> None:
        last = self.gaps[-1] if self.gaps else None
        if last is not None and last.reason == reason and last.last == seq - 1:
            self.gaps[-1] = Gap(last.first, seq, reason)
        else:
            self.gaps.append(Gap(seq, seq, reason))

    def take_gaps(self) -> list[Gap]:
        gaps, self.gaps = self.gaps, []
        return gaps

    def sampled(self, t_ns: int) -> bool:
        """Whether the item at ``t_ns`` is due under the group's fps (audio: always)."""
        return self.stream != "video" or self.sampler(t_ns)

    def waiting(self) -> int:
        if not self.pinned:  # the usual case, asked several times a frame
            return len(self.queue)
        return len(self.queue) + sum(len(q) for q in self.pinned.values())

    def passed_by_all(self, seq: int) -> bool:
        """Every current member finished ``seq`` or later (a restarted daemon's resend)."""
        return bool(self.members) and all(m.last_seq >= seq for m in self.members)


class FrameBusServer:
    """ROUTER side of the frame bus, owned by the daemon's main loop (not thread-safe).

    Args:
        address: bind address (``ipc://...`` or ``tcp://...``).
        welcome: what the source is, sent to each member on join.
        trace: ``trace(record, **fields)`` callback (``member``, ``frame_drop``, ``dispatch``).
        on_bad_message: called with each malformed or unexpected message's error.
        on_member_lost: ``(component, group)`` of an instance whose grace ran out.
        on_member_joined: ``(group, stream)`` of each member that joined (or said Hello again):
            a live source re-sends what a newcomer needs first (its streams' description).
        expected_groups: the groups that may hold the source back (``every``); empty: all.
        queue_size: bound of each ``every`` group's queue (items).
        member_timeout_s, rejoin_grace_s: see the module doc.
        now: monotonic clock in seconds (injected for tests).
    """

    def __init__(self, address: str, welcome: Welcome, *, trace: TraceFn | None = None,
                 on_bad_message: Callable[[DecodeError], None] | None = None,
                 on_member_lost: Callable[[str, str], None] | None = None,
                 on_member_joined: Callable[[str, str], None] | None = None,
                 expected_groups: Iterable[str] = (),
                 queue_size: int = DEFAULT_QUEUE_SIZE,
                 member_timeout_s: float = DEFAULT_MEMBER_TIMEOUT_S,
                 rejoin_grace_s: float = DEFAULT_REJOIN_GRACE_S,
                 shm_slots: int = DEFAULT_SLOTS,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.welcome = welcome
        self.queue_size = queue_size
        self.member_timeout_s = member_timeout_s
        self.rejoin_grace_s = rejoin_grace_s
        self.expected = frozenset(expected_groups)
        self._trace = trace or (lambda record, **kw: None)
        self._on_lost = on_member_lost or (lambda component, group: None)
        self._on_joined = on_member_joined or (lambda group, stream: None)
        self._now = now
        self.sock = sockets.bind(zmq.ROUTER, address, hwm=0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.inbox: sockets.Receiver[Message] = sockets.Receiver(
            self.sock, (Hello, Credit, Heartbeat, Eof), on_bad=on_bad_message,
            where="the frame bus", router=True)
        self.members: dict[bytes, _Member] = {}
        self.groups: dict[str, _Group] = {}
        self.eof: dict[str, Eof] = {}  # per stream, once the source ended
        self._jpeg_cache: dict[int, bytes] = {}
        self.ring: SlotRing | None = None  # shared memory, once a member asks for it
        self.shm_slots = shm_slots
        self._skip_before: dict[str, int] = {}
        self._refused = 0

    # ------------------------------------------------------------------ membership

    def poll(self, timeout_ms: int = 0) -> None:
        """Handle every queued client message, waiting up to ``timeout_ms`` for the first."""
        wait = timeout_ms
        while (msg := self.inbox.recv(wait)) is not None:
            wait = 0
            assert self.inbox.identity is not None
            self._handle(self.inbox.identity, msg)
        self._check_liveness()
        self._expire_pins()
        self._dispatch_all()

    def _handle(self, identity: bytes, msg: Message) -> None:
        now = self._now()
        if isinstance(msg, Hello):
            self._hello(identity, msg, now)
            return
        member = self.members.get(identity)
        if member is None:  # a restarted daemon, or a member dropped after a silence
            if not isinstance(msg, Eof):
                self._send_to(identity, Rejoin(reason="unknown member"))
            return
        member.last_seen = now
        if isinstance(msg, Credit):
            member.credit += msg.n
            member.last_credit = now
            for _ in range(min(msg.n, len(member.in_flight))):
                member.worked = True
                item = member.in_flight.popleft()
                member.last_seq = max(member.last_seq, item.seq)
                self._acked(member.group, item.seq)
                self._release(item)
        elif isinstance(msg, Eof):  # the member leaves on purpose, its work done
            self._leave(member, "bye")
        elif isinstance(msg, Heartbeat) and msg.clock is not None:
            member.clock.receive(msg.clock)
            self._heartbeat(member)  # answered at once: the member gets a clock sample
            self._clock_report(member)

    def _hello(self, identity: bytes, hello: Hello, now: float) -> None:
        stream = hello.streams[0]
        member = self.members.get(identity)
        if member is not None and (member.group, member.instance) == (hello.group, hello.instance):
            # the same process starts its session afresh: it holds nothing we sent it
            self._unsend(member)
            member.credit = 0
            member.last_seen = member.last_credit = now
            member.last_seq = max(member.last_seq, hello.last_seq)
            member.clock.receive(hello.clock)
            self._welcome(member)
            self._on_joined(member.group, stream)
            return
        if member is not None:  # one socket changing identity: treat as leaving
            self._leave(member, "replaced")
        current = self._instance(hello.group, hello.instance)
        if current is not None:
            if hello.incarnation < current.incarnation:  # a replaced process woke up
                self._send_to(identity, Rejoin(reason="superseded"))
                self._trace("member", event="superseded", member=hello.component,
                            group=hello.group, incarnation=hello.incarnation)
                return
            self._leave(current, "replaced")
        group = self.groups.get(hello.group)
        if group is None:
            if len(self.groups) >= MAX_GROUPS or stream not in STREAMS:
                self._refuse(hello, "too many groups")
                return
            policy = hello.policy
            if policy == "auto":  # live video: the newest frame; anything else: lossless
                policy = "latest" if self.welcome.live and stream == "video" else "every"
            if policy == "every" and self.expected and hello.group not in self.expected \
                    and not self.welcome.live:
                policy = "latest"  # only expected groups may hold the source back
                self._trace("member", event="downgraded", member=hello.component,
                            group=hello.group, policy=policy,
                            reason="not an expected group")
            group = _Group(hello.group, stream, policy, hello.fps)
            self.groups[hello.group] = group
        if len(self.members) >= MAX_MEMBERS:
            self._refuse(hello, "too many members")
            return
        encoding = hello.encoding
        if encoding == "shm" and (stream != "video" or not self._ensure_ring()):
            encoding = "raw"  # audio, or no shared memory here: raw works everywhere
        member = _Member(identity, hello.component, hello.group, hello.instance,
                         hello.incarnation, encoding, last_seq=hello.last_seq,
                         last_seen=now, last_sent=now, last_credit=now,
                         address=self.inbox.peer_address)
        member.clock.receive(hello.clock)
        group.members.append(member)
        self.members[identity] = member
        self._welcome(member)
        pinned = len(group.pinned.get(hello.instance, ()))
        self._trace("member", event="join", member=hello.component, group=hello.group,
                    policy=group.policy, fps=group.fps, stream=stream, pid=hello.pid,
                    instance=hello.instance, incarnation=hello.incarnation,
                    last_seq=hello.last_seq, resumed_items=pinned, host=member.address or None)
        if stream in self.eof and not group.waiting():
            self._send_eof(member, group)
        self._on_joined(hello.group, stream)

    def _welcome(self, member: _Member) -> None:
        self._send(member, replace(self.welcome, clock=member.clock.stamps()))

    def _heartbeat(self, member: _Member) -> None:
        self._send(member, Heartbeat(component="daemon", wall_ns=time.time_ns(),
                                     clock=member.clock.stamps()))

    def _clock_report(self, member: _Member) -> None:
        est = member.clock.report_due()
        if est is not None:
            self._trace("member", event="clock", member=member.component, group=member.group,
                        peer=member.component, host=member.address or None, **est.fields())

    def _refuse(self, hello: Hello, reason: str) -> None:
        self._refused += 1
        if self._refused == 1 or self._refused % 100 == 0:
            self._trace("member", event="refused", member=hello.component, group=hello.group,
                        reason=reason, refused=self._refused)

    def _instance(self, group: str, instance: int) -> _Member | None:
        g = self.groups.get(group)
        return next((m for m in g.members if m.instance == instance), None) if g else None

    def _unsend(self, member: _Member) -> None:
        """Take back what ``member`` holds: pinned to its instance, first in line for it."""
        if not member.in_flight:
            return
        group = self.groups[member.group]
        if group.policy == "every":
            pins = group.pinned.setdefault(member.instance, deque())
            pins.extendleft(reversed(member.in_flight))
            group.pinned_component[member.instance] = member.component
            self._trace("member", event="requeued", member=member.component,
                        group=member.group, seqs=[i.seq for i in member.in_flight])
        else:
            group.dropped += len(member.in_flight)
            for item in member.in_flight:
                self._release(item)
            self._trace("frame_drop", group=member.group, member=member.component,
                        seqs=[i.seq for i in member.in_flight], reason="member_lost")
        member.in_flight.clear()

    def _leave(self, member: _Member, reason: str) -> None:
        self.members.pop(member.identity, None)
        group = self.groups[member.group]
        group.members.remove(member)
        self._trace("member", event="leave", member=member.component, group=member.group,
                    reason=reason, incarnation=member.incarnation)
        if reason == "bye":
            return
        held = bool(member.in_flight)
        self._unsend(member)
        if group.policy == "every" and (held or member.worked):
            # it held items or did work: keep its place for its return (a peer that never
            # returned a credit held nothing and has no place to keep)
            group.pinned.setdefault(member.instance, deque())
            group.pinned_until[member.instance] = self._now() + self.rejoin_grace_s
            group.pinned_component[member.instance] = member.component

    def _check_liveness(self) -> None:
        now = self._now()
        for member in list(self.members.values()):
            group = self.groups[member.group]
            starved = (member.credit == 0 and (member.in_flight or group.waiting())
                       and now - member.last_credit > self.member_timeout_s)
            if now - member.last_seen > self.member_timeout_s:
                self._leave(member, "timeout")
            elif starved:  # alive but returns no credit while items wait for it
                self._leave(member, "stalled")
            elif now - member.last_sent > HEARTBEAT_INTERVAL_S:
                self._heartbeat(member)

    def _expire_pins(self) -> None:
        groups = [g for g in self.groups.values() if g.pinned_until]
        if not groups:  # the usual case: checked several times a frame
            return
        now = self._now()
        for group in groups:
            for instance, until in list(group.pinned_until.items()):
                if self._instance(group.name, instance) is not None:
                    del group.pinned_until[instance]  # it came back: its items wait for it
                    continue
                if now < until:
                    continue
                del group.pinned_until[instance]
                items = group.pinned.pop(instance, deque())
                component = group.pinned_component.pop(instance, f"#{instance}")
                self._trace("member", event="lost", member=component, group=group.name,
                            items=[i.seq for i in items])
                group.queue.extendleft(reversed(items))  # to the rest of the group
                self._on_lost(component, group.name)

    def wait_for_groups(self, groups: Iterable[str], timeout_s: float,
                        should_stop: Callable[[], bool] = lambda: False) -> list[str]:
        """Serve joins until every named group has a member; returns the groups still missing."""
        wanted = set(groups)
        deadline = self._now() + timeout_s
        while True:
            missing = sorted(g for g in wanted if not (g in self.groups and self.groups[g].members))
            if not missing or self._now() >= deadline or should_stop():
                return missing
            self.poll(100)

    # ------------------------------------------------------------------ data path

    def can_accept(self) -> bool:
        """False while some ``every`` group that is served or waiting for a member has a full
        queue (backpressure). A live source does not ask: it cannot wait."""
        if self.ring is not None and self.ring.free == 0:
            return False  # every slot leased: wait for credits (readers finishing)
        self._expire_pins()
        return all(g.waiting() < self.queue_size for g in self.groups.values()
                   if g.policy == "every" and (g.members or g.pinned_until))

    def wants(self, stream: str) -> bool:
        """Whether any group subscribes to ``stream`` (the source may skip decoding it)."""
        return any(g.stream == stream for g in self.groups.values())

    def resume_from(self, stream: str, seq: int) -> None:
        """Items of ``stream`` before ``seq`` were acknowledged by every group before a restart:
        :meth:`publish` feeds them to the groups' samplers only (so sampling stays exactly as it
        was) and sends them to nobody."""
        self._skip_before[stream] = seq

    def acked_below(self) -> dict[str, int]:
        """``group -> seq``: every item before it was acknowledged (for a state file)."""
        return {g.name: g.acked_below for g in self.groups.values()}

    def publish(self, item: Item) -> None:
        """Offer one item (a frame or audio chunk) to every group of its stream.

        A frame whose ``data`` is a function (``FileSource.items(lazy=True)``) has its pixels
        made only if some group samples it; the others only advance the groups' sampling."""
        stream = _stream_of(item)
        if item.seq < self._skip_before.get(stream, 0):
            for group in self.groups.values():
                if group.stream == stream:
                    group.sampled(item.t_ns)
                    group.acked_below = max(group.acked_below, item.seq + 1)
            return
        if isinstance(item, Frame) and callable(item.data):
            if not any(g.stream == "video" and g.sampler.due(item.t_ns)
                       for g in self.groups.values()):
                self._publish(item, stream)  # gaps and sampling only: nobody queues it
                self._dispatch_all()
                return
            item = replace(item, data=item.data())
        if self.ring is not None and isinstance(item, Frame):
            leased = self.ring.put(item.image())
            if leased is None:  # only a `latest`-only (live) source gets here: drop, say so
                self._trace("frame_drop", group="*", seqs=[item.seq], reason="no_shm_slot")
                return
            slot, pixels = leased
            item = replace(item, data=pixels, encoding="shm",
                           shm=ShmRef(self.ring.name, self.ring.offset(slot)))
        self._publish(item, stream)
        self._release(item)  # the publisher's own lease (slot freed if no group took it)
        self._dispatch_all()

    def _ensure_ring(self) -> bool:
        if self.ring is None:
            size = self.welcome.width * self.welcome.height * 3
            if size <= 0:
                return False
            try:
                self.ring = SlotRing(size, self.shm_slots)
            except OSError as e:
                self._trace("error", where="shm", error=f"no shared memory: {e}")
                return False
        return True

    def _hold(self, item: Item) -> None:
        if isinstance(item, Frame) and item.shm is not None and self.ring is not None:
            self.ring.hold(item.shm.offset // self.ring.slot_bytes)

    def _release(self, item: Item) -> None:
        if isinstance(item, Frame) and item.shm is not None and self.ring is not None:
            self.ring.release(item.shm.offset // self.ring.slot_bytes)

    def _acked(self, group_name: str, seq: int) -> None:
        group = self.groups.get(group_name)
        if group is None:
            return
        group.outstanding.discard(seq)
        group.acked_below = min(group.outstanding) if group.outstanding else \
            max(group.acked_below, seq + 1)

    def _publish(self, item: Item, stream: str) -> None:
        for group in self.groups.values():
            if group.stream != stream:
                continue
            if not group.sampled(item.t_ns):
                group.add_gap(item.seq, "sampled")
                if not group.outstanding:
                    group.acked_below = max(group.acked_below, item.seq + 1)
                continue
            if not self.welcome.live and group.passed_by_all(item.seq):
                # a restarted daemon resending a file: already done (a live source never
                # resends; a restarted one counts from 0 again)
                if not group.outstanding:
                    group.acked_below = max(group.acked_below, item.seq + 1)
                continue
            if not group.members and group.policy == "every" and group.pinned_until:
                self._hold(item)  # waiting for its instance to come back
                group.queue.append(item)
                group.outstanding.add(item.seq)
                continue
            if not group.members:
                self._drop_unserved(group, item)
                continue
            if self.welcome.live and group.policy == "every" \
                    and len(group.queue) >= LIVE_QUEUE_LIMIT:
                old = group.queue.popleft()  # a live source cannot wait: the oldest goes
                group.dropped += 1
                group.outstanding.discard(old.seq)
                self._trace("frame_drop", group=group.name, seqs=[old.seq],
                            reason="queue_full", t_ns=old.t_ns)
                self._release(old)
            if group.policy == "latest" and group.queue:
                old = group.queue.pop()
                group.add_gap(old.seq, "latest")
                group.dropped += 1
                group.outstanding.discard(old.seq)
                self._trace("frame_drop", group=group.name, seqs=[old.seq], reason="latest",
                            t_ns=old.t_ns)
                self._release(old)
            self._hold(item)
            group.queue.append(item)
            group.outstanding.add(item.seq)

    def _drop_unserved(self, group: _Group, item: Item) -> None:
        for old in group.queue:  # nobody will ever take these
            group.add_gap(old.seq, "no_member")
            group.dropped += 1
            group.outstanding.discard(old.seq)
            self._trace("frame_drop", group=group.name, seqs=[old.seq], reason="no_member")
            self._release(old)
        group.queue.clear()
        group.add_gap(item.seq, "no_member")
        group.dropped += 1
        self._trace("frame_drop", group=group.name, seqs=[item.seq], reason="no_member")

    def _dispatch_all(self) -> None:
        for group in self.groups.values():
            for member in group.members:  # an instance's own pinned items first, in order
                pins = group.pinned.get(member.instance)
                while pins and member.credit > 0:
                    self._send_item(member, pins.popleft(), group.take_gaps())
                    group.delivered += 1
                if pins is not None and not pins:
                    del group.pinned[member.instance]
            while group.queue:
                taker = self._next_member(group, group.queue[0].seq)
                if taker is None:
                    break
                item = group.queue.popleft()
                self._send_item(taker, item, group.take_gaps())
                group.delivered += 1
            if not group.waiting():
                stream_eof = self.eof.get(group.stream)
                if stream_eof is not None:
                    for member in group.members:
                        if not member.eof_sent:
                            self._send_eof(member, group)
        if len(self._jpeg_cache) > 64:
            self._jpeg_cache.clear()

    def _next_member(self, group: _Group, seq: int) -> _Member | None:
        """Round robin over members with credit that have not passed ``seq`` (an item sent
        again after a restart goes only to a member still before it, so every member sees its
        items in order); ``None`` while those are busy."""
        n = len(group.members)
        eligible = [m for m in group.members if m.last_seq < seq] or group.members
        for i in range(n):
            member = group.members[(group.rr + i) % n]
            if member.credit > 0 and member in eligible and not group.pinned.get(member.instance):
                group.rr = (group.rr + i + 1) % n
                return member
        return None

    def _send_item(self, member: _Member, item: Item, gaps: list[Gap]) -> None:
        member.credit -= 1
        member.in_flight.append(item)  # the original: its lease is returned with the credit
        self._trace("dispatch", group=member.group, member=member.component, seq=item.seq,
                    credit=member.credit)
        if isinstance(item, Frame):
            if member.encoding == "jpeg":
                jpeg = self._jpeg_cache.get(item.seq)
                if jpeg is None:
                    jpeg = _encode_jpeg(item.image())
                    self._jpeg_cache[item.seq] = jpeg
                item = replace(item, encoding="jpeg", data=jpeg, gaps=gaps, shm=None)
            elif member.encoding == "shm" and item.shm is not None:
                item = replace(item, encoding="shm", data=None, gaps=gaps)
            else:  # raw: the pixels (from shared memory when there is a ring: still no copy)
                item = replace(item, encoding="raw", gaps=gaps, shm=None)
        self._send(member, item)

    def _send(self, member: _Member, msg: Message) -> None:
        try:
            sockets.send(self.sock, msg, identity=member.identity)
            member.last_sent = self._now()
        except zmq.ZMQError:  # EHOSTUNREACH: the peer is gone; liveness will remove it
            member.last_seen = -1e18

    def _send_to(self, identity: bytes, msg: Message) -> None:
        try:
            sockets.send(self.sock, msg, identity=identity, flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # the peer is gone already
            pass

    def finish(self, stream: str, last_seq: int, t_end_ns: int,
               reason: str = "end_of_stream") -> None:
        """Mark ``stream`` ended; each member gets :class:`Eof` once its group's queue is empty."""
        self.eof[stream] = Eof(source_id=self.welcome.source_id, component="daemon",
                               last_seq=last_seq, t_end_ns=t_end_ns, reason=reason)
        self._dispatch_all()

    def _send_eof(self, member: _Member, group: _Group) -> None:
        eof = replace(self.eof[group.stream], gaps=group.take_gaps())
        self._send(member, eof)
        member.eof_sent = True

    def all_eof_sent(self) -> bool:
        return all(m.eof_sent for m in self.members.values())

    def drained(self) -> bool:
        """Every member got its Eof and returned every credit (finished its last item), and no
        item waits for a member to come back."""
        return (all(m.eof_sent and not m.in_flight for m in self.members.values())
                and not any(g.pinned_until or (g.waiting() and g.policy == "every"
                                               and g.members)
                            for g in self.groups.values()))

    def __enter__(self) -> FrameBusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket, remove its ipc file and unlink the shared memory (idempotent)."""
        self.sock.close(0)
        sockets.remove_ipc_file(self.address)
        if self.ring is not None:
            for group in self.groups.values():
                group.queue.clear()
                group.pinned.clear()
            for member in self.members.values():
                member.in_flight.clear()
            self.ring.close()
            self.ring = None


def _encode_jpeg(img: NDArray[np.uint8], quality: int = 80) -> bytes:
    """JPEG q80: ~20x smaller than raw at 720p for 1.9 ms encode and 2.3 ms decode (measured
    on a 2-core machine of this project with OpenCV 4.11)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - cv2 only fails on empty images
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())


class SupersededError(PeerTimeoutError):
    """A newer incarnation of this member joined the daemon: this process must stop."""


class FrameBusClient:
    """DEALER side: one per extractor process.

    It never ends because the daemon went quiet: it says Hello again (with the last seq it
    finished) every :data:`REJOIN_AFTER_S` while it hears nothing, and when the daemon answers
    :class:`~momentbus.ipc.schema.Rejoin`; only ``daemon_timeout_s`` of silence, or being
    superseded by a newer incarnation, ends it (an exception: that is not the end of the stream).

    Args:
        address: the daemon's frame bus address.
        hello: this member's announcement (group, instance, incarnation, policy, fps, ...).
        credits: items in flight at most (1 = strict request/reply; 2 overlaps transfer and work).
        credit_batch: credits returned in one message (see :meth:`done`): 1, the default, returns
            each at once; a reader after throughput sets e.g. ``credits=8, credit_batch=4``.
        daemon_timeout_s: give up after this long without a word from the daemon.
    """

    def __init__(self, address: str, hello: Hello, *, credits: int = 2,
                 credit_batch: int = 1,
                 daemon_timeout_s: float = 300.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.hello = hello
        self.credits = credits
        self.credit_batch = min(max(1, credit_batch), credits)
        self._owed = 0  # credits earned by done() and not yet sent
        self.daemon_timeout_s = daemon_timeout_s
        self._now = now
        # tells a daemon refusing our handshake from one not there yet
        self._handshake = HandshakeWatch("the daemon", address)
        self.sock = sockets.connect(zmq.DEALER, address, hwm=0,
                                    before_connect=self._handshake.attach)
        self.inbox: sockets.Receiver[Message] = sockets.Receiver(
            self.sock, (Welcome, Frame, AudioChunk, Packet, StreamInfo, Eof, Heartbeat, Rejoin),
            where="the frame bus client")
        self.welcome: Welcome | None = None
        self.last_seq = hello.last_seq
        self.rejoins = 0
        self._holding: list[int] = []
        self._hello_pending = False
        self._last_heard = now()
        self._last_sent = now()
        self._last_hello = now()
        self._last_beat = now()
        #: the daemon's wall clock against ours (stamps on Hello/Welcome/heartbeats)
        self.clock = LinkClock()

    def join(self, timeout_s: float = 30.0,
             should_stop: Callable[[], bool] = lambda: False) -> Welcome:
        """Send Hello, wait for Welcome, grant the initial credit.

        Raises:
            PeerTimeoutError: no Welcome within ``timeout_s`` (or ``should_stop()`` said so).
        """
        self._say_hello()
        deadline = self._now() + timeout_s
        while self.welcome is None:
            self._check_handshake()
            remaining = deadline - self._now()
            if remaining <= 0 or should_stop():
                raise PeerTimeoutError(f"no answer from the daemon at {self.address} "
                                       f"within {timeout_s:.0f} s")
            msg = self.inbox.recv(int(min(remaining, 0.1) * 1000))
            if isinstance(msg, Welcome):
                self.clock.receive(msg.clock)
                self._welcomed(msg)
            elif self._now() - self._last_hello > 1.0:
                self._say_hello()  # the daemon may not have been listening yet
        return self.welcome

    def _say_hello(self) -> None:
        self._send(replace(self.hello, last_seq=self.last_seq, clock=self.clock.stamps()))
        self._hello_pending = True
        self._last_hello = self._now()

    def _check_handshake(self) -> None:
        """Raise when the daemon keeps refusing our CURVE handshake (reasons: ipc/curve.py)."""
        self._handshake.check(sockets.security().curve)

    def _close_monitor(self) -> None:
        self._handshake.close()

    def _welcomed(self, welcome: Welcome) -> None:
        self._close_monitor()
        self.welcome = welcome
        self._hello_pending = False
        self._last_heard = self._now()
        self._owed = 0  # a new session: the window starts whole
        self._send(Credit(n=self.credits))

    def _send(self, msg: Message) -> None:
        try:  # never block: with no connection (refused, or the daemon gone) nothing is queued
            sockets.send(self.sock, msg, flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        self._last_sent = self._now()

    @property
    def bad_messages(self) -> int:
        """Malformed or unexpected messages received and skipped."""
        return self.inbox.bad_total

    def recv(self, timeout_ms: int = 100) -> Item | Eof | None:
        """The next item, an :class:`Eof` (end of stream), or ``None`` if nothing came within
        ``timeout_ms``. Call :meth:`done` after each item to return its credit.

        Raises:
            PeerTimeoutError: nothing from the daemon for ``daemon_timeout_s``.
            SupersededError: a newer incarnation of this member took its place.
        """
        self.heartbeat()
        deadline = self._now() + timeout_ms / 1000
        while True:
            wait = max(0, int((deadline - self._now()) * 1000))
            msg = self.inbox.recv(wait)
            if msg is None:
                self._check_silence()
                return None
            self._last_heard = self._now()
            if isinstance(msg, Rejoin):
                if msg.reason == "superseded":
                    raise SupersededError("a newer incarnation of this member joined the daemon")
                if not self._hello_pending and not self._holding:
                    self.rejoins += 1
                    self._say_hello()
                continue
            if isinstance(msg, Welcome):
                self.clock.receive(msg.clock)
                if self._hello_pending:
                    self._welcomed(msg)
                continue
            if isinstance(msg, (Frame, AudioChunk, Packet, StreamInfo)):
                if self.welcome is not None and msg.source_id != self.welcome.source_id:
                    self.inbox._count(DecodeError(f"{type(msg).__name__} of source "
                                                  f"{msg.source_id[:64]!r}, not "
                                                  f"{self.welcome.source_id!r}"))
                    continue
                self._holding.append(msg.seq)
                return msg
            if isinstance(msg, Eof):
                self._send_credit()  # what is owed for the last items
                return msg
            if isinstance(msg, Heartbeat):  # liveness, and a clock sample
                self.clock.receive(msg.clock)

    def _check_silence(self) -> None:
        silent = self._now() - self._last_heard
        if silent > self.daemon_timeout_s:
            raise PeerTimeoutError(f"nothing from the daemon at {self.address} for "
                                   f"{silent:.0f} s")
        if silent > REJOIN_AFTER_S and not self._holding \
                and self._now() - self._last_hello > 1.0:
            self.rejoins += 1
            self._say_hello()  # the daemon may have restarted: start a new session

    def done(self, n: int = 1) -> None:
        """Return ``n`` credits: the oldest items handed out are processed, send more.

        Credits go back in batches of :attr:`credit_batch` (and what is owed when :class:`Eof`
        arrives or the member leaves): one message for several items. At most ``credit_batch - 1``
        are owed at any time, so at least ``credits - credit_batch + 1`` items are queued here,
        on their way, or free for the daemon to send: the member never waits on a credit it
        owes."""
        for _ in range(min(n, len(self._holding))):
            self.last_seq = max(self.last_seq, self._holding.pop(0))
        self._owed += n
        if self._owed >= self.credit_batch:
            self._send_credit()

    def _send_credit(self) -> None:
        """Send what is owed (nothing when nothing is)."""
        owed, self._owed = self._owed, 0
        if owed:
            self._send(Credit(n=owed))

    def heartbeat(self) -> None:
        """Every :data:`HEARTBEAT_INTERVAL_S`, whatever else flows: liveness, and clock stamps
        the daemon answers at once (so both ends keep sampling the offset)."""
        if self._now() - self._last_beat >= HEARTBEAT_INTERVAL_S:
            self._last_beat = self._now()
            self._send(Heartbeat(component=self.hello.component, wall_ns=time.time_ns(),
                                 clock=self.clock.stamps()))

    def leave(self) -> None:
        """Tell the server this member leaves on purpose (its in-flight items are not drops)."""
        try:
            self._send_credit()
            self._send(Eof(source_id="", component=self.hello.component, last_seq=-1,
                           t_end_ns=0, reason="bye"))
        except zmq.ZMQError:
            pass

    def __enter__(self) -> FrameBusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._close_monitor()
        self.sock.close(0)

