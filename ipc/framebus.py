"""The credit-based frame bus (ZeroMQ guide, "Credit-Based Flow Control").

The daemon's :class:`FrameBusServer` is a ROUTER; each extractor process is a
:class:`FrameBusClient` (DEALER) that announces its **group**, wanted sampling (fps), payload
encoding and delivery **policy** with a :class:`~momentbus.ipc.schema.Hello`, then grants credit.
The server only ever sends a member as many items as it has credit for, so nothing queues in
ZeroMQ or kernel buffers and a slow reader never sees stale frames.

Policies, per group:

* ``every``: lossless and in order. The group's queue is bounded (:attr:`FrameBusServer.queue_size`)
  and :meth:`FrameBusServer.can_accept` is false while any such queue is full, so the source is read
  only as fast as the slowest ``every`` group consumes.
* ``latest``: the group holds at most one undelivered item; a newer one replaces it and the
  replaced seq is reported as a drop (trace ``frame_drop`` and the next item's ``gaps``).

Several members in one group share its items (round robin over members with credit); distinct
groups each see every sampled item. A member silent for ``member_timeout_s`` is removed (its
in-flight seqs traced as drops); a group without members stops holding the source back.
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
from .sampling import FpsSampler
from .schema import (AudioChunk, Credit, Eof, Frame, Gap, Heartbeat, Hello, Message, ShmRef,
                     Welcome)
from .shm import DEFAULT_SLOTS, SlotRing
from .vocab import GapReason

#: Items an ``every`` group may have queued before the source pauses (backpressure). Eight frames
#: keep both cores busy across a model's per-frame jitter (measured: 4 -> 8 gave +6 % frames/s on
#: the sample video, 8 -> 32 nothing) at 8 x 2.7 MB for 720p.
DEFAULT_QUEUE_SIZE = 8
#: A member that sent nothing for this long is dropped from its group. Longer than one frame of
#: the slowest model here (~0.3 s for 1080p face detection) with a wide margin.
DEFAULT_MEMBER_TIMEOUT_S = 5.0
#: An ``every`` group whose last member died keeps its frames and holds the source back this long,
#: so a restarted extractor (process start + model load: 2-3 s measured here) resumes losslessly.
DEFAULT_REJOIN_GRACE_S = 15.0
#: Heartbeat period both ways.
HEARTBEAT_INTERVAL_S = 0.5

Item = Frame | AudioChunk
TraceFn = Callable[..., None]


def _stream_of(item: Item) -> str:
    return "video" if isinstance(item, Frame) else "audio"


@dataclass(eq=False)
class _Member:
    identity: bytes
    component: str
    group: str
    encoding: str
    credit: int = 0
    last_seen: float = 0.0
    last_sent: float = 0.0
    in_flight: deque[Item] = field(default_factory=deque)
    eof_sent: bool = False


@dataclass(eq=False)
class _Group:
    name: str
    stream: str
    policy: str
    fps: float | None
    members: list[_Member] = field(default_factory=list)
    queue: deque[Item] = field(default_factory=deque)
    gaps: list[Gap] = field(default_factory=list)
    rr: int = 0
    delivered: int = 0
    dropped: int = 0
    orphaned_at: float | None = None  # when the last member died (None: has members, or never)

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


class FrameBusServer:
    """ROUTER side of the frame bus, owned by the daemon's main loop (not thread-safe).

    Args:
        address: bind address (``ipc://...`` or ``tcp://...``).
        welcome: what the source is, sent to each member on join.
        trace: ``trace(record, **fields)`` callback for ``member``/``frame_drop``/``bad_message``.
        queue_size: bound of each ``every`` group's queue (items).
        member_timeout_s: liveness timeout.
        now: monotonic clock in seconds (injected for tests).
    """

    def __init__(self, address: str, welcome: Welcome, *, trace: TraceFn | None = None,
                 on_bad_message: Callable[[DecodeError], None] | None = None,
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
        self._trace = trace or (lambda record, **kw: None)
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

    # ------------------------------------------------------------------ membership

    def poll(self, timeout_ms: int = 0) -> None:
        """Handle every queued client message, waiting up to ``timeout_ms`` for the first."""
        wait = timeout_ms
        while (msg := self.inbox.recv(wait)) is not None:
            wait = 0
            assert self.inbox.identity is not None
            self._handle(self.inbox.identity, msg)
        self._check_liveness()
        self._dispatch_all()

    def _handle(self, identity: bytes, msg: Message) -> None:
        now = self._now()
        member = self.members.get(identity)
        if isinstance(msg, Hello):
            if member is not None:
                return
            self._join(identity, msg, now)
            return
        if member is None:  # a member we dropped (timeout) speaks again
            self.inbox._count(DecodeError(f"{type(msg).__name__} from unknown peer {identity!r}"))
            return
        member.last_seen = now
        if isinstance(msg, Credit):
            member.credit += msg.n
            for _ in range(min(msg.n, len(member.in_flight))):
                self._release(member.in_flight.popleft())
        elif isinstance(msg, Heartbeat):
            pass
        elif isinstance(msg, Eof):  # the member leaves on purpose
            self._leave(member, "bye")

    def _join(self, identity: bytes, hello: Hello, now: float) -> None:
        stream = hello.streams[0]
        group = self.groups.get(hello.group)
        if group is None:
            group = _Group(hello.group, stream, hello.policy, hello.fps)
            self.groups[hello.group] = group
        encoding = hello.encoding
        if encoding == "shm" and (stream != "video" or not self._ensure_ring()):
            encoding = "raw"  # audio, or no shared memory here: raw works everywhere
        member = _Member(identity, hello.component, hello.group, encoding,
                         last_seen=now, last_sent=now)
        group.members.append(member)
        group.orphaned_at = None
        self.members[identity] = member
        sockets.send(self.sock, self.welcome, identity=identity)
        self._trace("member", event="join", member=hello.component, group=hello.group,
                    policy=group.policy, fps=group.fps, stream=stream, pid=hello.pid)
        if stream in self.eof and not group.queue:
            self._send_eof(member, group)

    def _leave(self, member: _Member, reason: str) -> None:
        self.members.pop(member.identity, None)
        group = self.groups[member.group]
        group.members.remove(member)
        self._trace("member", event="leave", member=member.component, group=member.group,
                    reason=reason)
        if reason == "bye":
            return
        if not group.members:
            group.orphaned_at = self._now()
        if not member.in_flight:
            return
        lost = list(member.in_flight)
        member.in_flight.clear()
        if group.policy == "every":
            # lossless: hand the dead member's unfinished items to the group again (a result it
            # did send arrives twice at fusion, which rejects the copy as late)
            group.queue.extendleft(reversed(lost))
            self._trace("frame_drop", group=member.group, member=member.component,
                        seqs=[i.seq for i in lost], reason="member_lost_requeued", lost=False)
        else:
            group.dropped += len(lost)
            for item in lost:
                self._release(item)
            self._trace("frame_drop", group=member.group, member=member.component,
                        seqs=[i.seq for i in lost], reason="member_lost")

    def _check_liveness(self) -> None:
        now = self._now()
        for member in list(self.members.values()):
            if now - member.last_seen > self.member_timeout_s:
                self._leave(member, "timeout")
            elif now - member.last_sent > HEARTBEAT_INTERVAL_S:
                self._send(member, Heartbeat(component="daemon", wall_ns=time.time_ns()))

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
        """False while some ``every`` group with members has a full queue (backpressure)."""
        if self.ring is not None and self.ring.free == 0:
            return False  # every slot leased: wait for credits (readers finishing)
        return all(len(g.queue) < self.queue_size for g in self.groups.values()
                   if g.policy == "every" and (g.members or self._in_grace(g)))

    def _in_grace(self, group: _Group) -> bool:
        """An orphaned group still waiting for a restarted member (frames kept, source held)."""
        return group.orphaned_at is not None and \
            self._now() - group.orphaned_at < self.rejoin_grace_s

    def wants(self, stream: str) -> bool:
        """Whether any group subscribes to ``stream`` (the source may skip decoding it)."""
        return any(g.stream == stream for g in self.groups.values())

    def publish(self, item: Item) -> None:
        """Offer one item (a frame or audio chunk) to every group of its stream."""
        stream = _stream_of(item)
        if self.ring is not None and isinstance(item, Frame):
            img = item.image()
            slot = self.ring.put(img)
            if slot is None:  # only a `latest`-only (live) source gets here: drop, say so
                self._trace("frame_drop", group="*", seqs=[item.seq], reason="no_shm_slot")
                return
            item = replace(item, data=self.ring.view(slot, img.shape), encoding="shm",
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

    def _publish(self, item: Item, stream: str) -> None:
        for group in self.groups.values():
            if group.stream != stream:
                continue
            if not group.sampled(item.t_ns):
                group.add_gap(item.seq, "sampled")
                continue
            if not group.members and group.policy == "every" and self._in_grace(group):
                self._hold(item)
                group.queue.append(item)
                continue
            if not group.members:
                for old in group.queue:  # grace over: what was kept for a restart is lost
                    group.add_gap(old.seq, "no_member")
                    group.dropped += 1
                    self._trace("frame_drop", group=group.name, seqs=[old.seq], reason="no_member")
                    self._release(old)
                group.queue.clear()
                group.add_gap(item.seq, "no_member")
                group.dropped += 1
                self._trace("frame_drop", group=group.name, seqs=[item.seq], reason="no_member")
                continue
            if group.policy == "latest" and group.queue:
                old = group.queue.pop()
                group.add_gap(old.seq, "latest")
                group.dropped += 1
                self._trace("frame_drop", group=group.name, seqs=[old.seq], reason="latest",
                            t_ns=old.t_ns)
                self._release(old)
            self._hold(item)
            group.queue.append(item)

    def _dispatch_all(self) -> None:
        for group in self.groups.values():
            while group.queue:
                member = self._next_member(group)
                if member is None:
                    break
                item = group.queue.popleft()
                gaps = group.take_gaps()
                self._send_item(member, item, gaps)
                group.delivered += 1
            if not group.queue:
                stream_eof = self.eof.get(group.stream)
                if stream_eof is not None:
                    for member in group.members:
                        if not member.eof_sent:
                            self._send_eof(member, group)
        if len(self._jpeg_cache) > 64:
            self._jpeg_cache.clear()

    def _next_member(self, group: _Group) -> _Member | None:
        n = len(group.members)
        for i in range(n):
            member = group.members[(group.rr + i) % n]
            if member.credit > 0:
                group.rr = (group.rr + i + 1) % n
                return member
        return None

    def _send_item(self, member: _Member, item: Item, gaps: list[Gap]) -> None:
        member.credit -= 1
        self._trace("dispatch", group=member.group, member=member.component, seq=item.seq,
                    credit=member.credit)
        member.in_flight.append(item)  # the original: its lease is returned with the credit
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

    def finish(self, stream: str, last_seq: int, t_end_ns: int, reason: str = "end_of_stream") -> None:
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
        """Every member got its Eof and returned every credit (finished its last item)."""
        return (all(m.eof_sent and not m.in_flight for m in self.members.values())
                and not any(g.queue and self._in_grace(g) for g in self.groups.values()))

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
    return buf.tobytes()


class FrameBusClient:
    """DEALER side: one per extractor process.

    Args:
        address: the daemon's frame bus address.
        hello: this member's announcement (group, policy, fps, encoding, stream).
        credits: items in flight at most (1 = strict request/reply; 2 overlaps transfer and work).
        server_timeout_s: with no message from the daemon for this long, :meth:`recv` returns an
            :class:`Eof` with reason ``"source_lost"``.
    """

    def __init__(self, address: str, hello: Hello, *, credits: int = 2,
                 server_timeout_s: float = DEFAULT_MEMBER_TIMEOUT_S,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.hello = hello
        self.credits = credits
        self.server_timeout_s = server_timeout_s
        self._now = now
        self.sock = sockets.connect(zmq.DEALER, address, hwm=0)
        self.inbox: sockets.Receiver[Message] = sockets.Receiver(
            self.sock, (Welcome, Frame, AudioChunk, Eof, Heartbeat), where="the frame bus client")
        self.welcome: Welcome | None = None
        self._last_heard = now()
        self._last_sent = now()

    def join(self, timeout_s: float = 30.0,
             should_stop: Callable[[], bool] = lambda: False) -> Welcome:
        """Send Hello, wait for Welcome, grant the initial credit.

        Raises:
            PeerTimeoutError: no Welcome within ``timeout_s`` (or ``should_stop()`` said so).
        """
        sockets.send(self.sock, self.hello)
        deadline = self._now() + timeout_s
        while self.welcome is None:
            remaining = deadline - self._now()
            if remaining <= 0 or should_stop():
                raise PeerTimeoutError(f"no answer from the daemon at {self.address} "
                                       f"within {timeout_s:.0f} s")
            msg = self.inbox.recv(int(min(remaining, 0.1) * 1000))
            if isinstance(msg, Welcome):
                self.welcome = msg
        self._last_heard = self._now()
        self._send(Credit(n=self.credits))
        return self.welcome

    def _send(self, msg: Message) -> None:
        sockets.send(self.sock, msg)
        self._last_sent = self._now()

    @property
    def bad_messages(self) -> int:
        """Malformed or unexpected messages received and skipped."""
        return self.inbox.bad_total

    def recv(self, timeout_ms: int = 100) -> Frame | AudioChunk | Eof | None:
        """The next item, an :class:`Eof`, or ``None`` if nothing came within ``timeout_ms``.

        Malformed messages are counted in :attr:`bad_messages` and skipped.
        Call :meth:`done` after each item is processed to return its credit.
        """
        self.heartbeat()
        deadline = self._now() + timeout_ms / 1000
        while True:
            wait = max(0, int((deadline - self._now()) * 1000))
            msg = self.inbox.recv(wait)
            if msg is None:
                if self._now() - self._last_heard > self.server_timeout_s:
                    return Eof(source_id=self.welcome.source_id if self.welcome else "",
                               component="daemon", last_seq=-1, t_end_ns=0, reason="source_lost")
                return None
            self._last_heard = self._now()
            if isinstance(msg, (Frame, AudioChunk)):
                if self.welcome is not None and msg.source_id != self.welcome.source_id:
                    self.inbox._count(DecodeError(f"{type(msg).__name__} of source "
                                                  f"{msg.source_id[:64]!r}, not "
                                                  f"{self.welcome.source_id!r}"))
                    continue
                return msg
            if isinstance(msg, Eof):
                return msg
            # Heartbeat / duplicate Welcome: liveness only

    def done(self, n: int = 1) -> None:
        """Return ``n`` credits: the items are processed, send more."""
        self._send(Credit(n=n))

    def heartbeat(self) -> None:
        if self._now() - self._last_sent >= HEARTBEAT_INTERVAL_S:
            self._send(Heartbeat(component=self.hello.component, wall_ns=time.time_ns()))

    def leave(self) -> None:
        """Tell the server this member leaves on purpose (its in-flight items are not drops)."""
        try:
            self._send(Eof(source_id="", component=self.hello.component, last_seq=-1,
                           t_end_ns=0, reason="bye"))
        except zmq.ZMQError:
            pass

    def __enter__(self) -> FrameBusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close(0)
