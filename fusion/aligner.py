"""The watermark aligner: a pure, I/O-free state machine (Bytewax ``ClockLogic`` shape).

Inputs are the messages extractor members send: :meth:`Aligner.on_join` (Hello),
:meth:`Aligner.on_obs`, :meth:`Aligner.on_watermark`, :meth:`Aligner.on_eof`, plus
:meth:`Aligner.on_tick` with the injected wall clock (liveness only). Each returns an
:class:`Output` with what became final: fired TRIGs, late observations, sync delays and membership
changes. No sockets, no clocks inside: the fusion process does the I/O.

Semantics (README, "Fusion semantics"):

* A **member** (one extractor process) promises with its watermark that nothing more will come
  from it at or before ``t_ns``; every Obs carries the member's watermark. A **group**'s watermark
  is the minimum over its active members; a group whose members all ended or went absent stops
  holding anything back; an expected group nobody has joined yet holds everything back (until it
  is marked absent after ``join_timeout`` of wall time).
* A rule's input is **complete** up to the minimum watermark over the groups it reads. As soon as
  that passes an observation's ``t_ns``, the observation is released to the rule, in
  ``(t_ns, group, component, seq)`` order: the order, and so the TRIGs, do not depend on arrival
  order or speed. There is no window and no waiting on groups the rule does not read.
* An observation at or before its member's watermark, or at or before what its rules already
  consumed, is **late**: reported, counted, never reordered into emitted results.
* Watermarks never regress (a lower one is ignored).
* An observation that repeats one already received for the group (same seq and ``t_ns``: a frame
  processed again after a restart or a rejoin) is a **duplicate**: counted, dropped, never late.
* A member silent for ``idle_timeout`` (wall clock) is traced ``idle``. On a live source it is
  also **absent**: it stops holding back watermarks, and returns when it speaks again. On a file
  (:meth:`Aligner.on_source` with ``live=False``) it keeps holding its group back, since nothing
  is lost by waiting, until it speaks again or is declared **lost** (:meth:`Aligner.on_lost`:
  its frames went to others or nobody); a lost member's group is listed as missing.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from msgspec.structs import replace

from ..ipc.schema import Obs, Trig
from ..tracking import GroupTracks
from .rules import Rule

NEG_INF = -(1 << 62)
POS_INF = 1 << 62

#: Default idleness timeout (ns of wall time): 4 missed heartbeats of 0.5 s.
DEFAULT_IDLE_TIMEOUT_NS = 2_000_000_000
#: A timestamp more than this far ahead of every other live member's watermark (or of the
#: member's own previous one) is rejected: one bad clock must not make everyone else late.
#: `every` delivery keeps members within a few frames of each other; live sources within
#: their latency, seconds. 60 s is far outside both.
DEFAULT_FUTURE_GUARD_NS = 60_000_000_000
#: An expected group that no member joined within this long is marked absent (model loading
#: takes 1-3 s here; 60 s leaves room for a slow disk or a first import).
DEFAULT_JOIN_TIMEOUT_NS = 60_000_000_000
#: On a file, a silent member holds its group back at most this long before it counts as lost:
#: longer than the frame bus's member timeout plus rejoin grace (5 + 15 s) plus a restart, so a
#: member that is coming back is waited for, and one that never will (a process that said
#: Hello and died, a peer that is not an extractor) cannot stall the job for good.
DEFAULT_HOLD_TIMEOUT_NS = 60_000_000_000
#: Observations remembered per group to recognise a duplicate: a repeat comes at most a rejoin
#: grace after the original (15 s: 375 frames at 25 fps); 8192 is 5 min of 25 fps.
DEDUP_WINDOW = 8192


@dataclass
class Output:
    """What one call made final."""

    trigs: list[Trig] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)
    sync_delays: list[dict[str, Any]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: "Output") -> None:
        self.trigs += other.trigs
        self.late += other.late
        self.rejected += other.rejected
        self.sync_delays += other.sync_delays
        self.members += other.members


@dataclass
class _Member:
    component: str
    group: str
    watermark: int = NEG_INF
    last_seen_ns: int = 0
    absent: bool = False
    ended: bool = False
    silent: bool = False  # traced idle (on a file it still holds its group back)
    lost: bool = False  # declared lost by the daemon: its frames went to others
    latest_ns: int = NEG_INF  # the latest event time this member has shown (obs or watermark)


@dataclass(order=True)
class _Pending:
    key: tuple[int, str, str, int]
    obs: Obs = field(compare=False)
    arrived_ns: int = field(compare=False, default=0)
    waiting_for: list[str] = field(compare=False, default_factory=list)
    readers: int = field(compare=False, default=0)  # rules still to receive it


class Aligner:
    """Event-time alignment of observations for a set of rules.

    Args:
        rules: the rules to feed.
        expected_groups: groups that must be heard from (all groups the rules read, at least).
        idle_timeout_ns, join_timeout_ns: liveness timeouts on the wall clock (ns).
        start_ns: the wall clock when fusion started (join timeouts count from it).
    """

    def __init__(self, rules: list[Rule], expected_groups: list[str] | None = None, *,
                 idle_timeout_ns: int = DEFAULT_IDLE_TIMEOUT_NS,
                 join_timeout_ns: int = DEFAULT_JOIN_TIMEOUT_NS, start_ns: int = 0,
                 future_guard_ns: int = DEFAULT_FUTURE_GUARD_NS,
                 hold_timeout_ns: int = DEFAULT_HOLD_TIMEOUT_NS) -> None:
        self.rules = rules
        self.future_guard_ns = future_guard_ns
        self.rejected_count = 0
        self.idle_timeout_ns = idle_timeout_ns
        self.hold_timeout_ns = hold_timeout_ns
        self.join_timeout_ns = join_timeout_ns
        self.start_ns = start_ns
        groups = set(expected_groups or [])
        for rule in rules:
            groups.update(rule.inputs)
        self.expected = sorted(groups)
        self.members: dict[str, _Member] = {}
        self.never_joined_absent: set[str] = set()
        self.pending: dict[str, list[_Pending]] = {g: [] for g in self.expected}
        self.released: dict[str, int] = {r.name: NEG_INF for r in rules}
        self.late_count = 0
        self.obs_count = 0
        self.trig_count = 0
        self.source_ended = False
        self.duplicate_count = 0
        #: a silent member keeps holding its group back (files) instead of going absent (live)
        self.hold_silent = False
        self._received: dict[str, OrderedDict[tuple[int, int], None]] = {}
        self._readers_cache: dict[str, tuple[frozenset[str], int]] = {}
        #: face tracks per group, over every member's observations in event time (tracking.py)
        self.tracks = GroupTracks()
        #: pending face observations not yet re-tracked, per group, in key order
        self._untracked: dict[str, list[_Pending]] = {}

    # ------------------------------------------------------------------ watermarks

    def group_watermark(self, group: str) -> int:
        """Min watermark over the group's active members (see module doc for the edge cases)."""
        members = [m for m in self.members.values() if m.group == group]
        active = [m for m in members if not m.absent and not m.ended]
        if active:
            return min(m.watermark for m in active)
        if members or group in self.never_joined_absent:
            return POS_INF  # everyone ended or is absent: hold nothing back
        return NEG_INF  # expected, nobody joined yet

    def complete_until(self, rule: Rule) -> int:
        return min((self.group_watermark(g) for g in rule.inputs), default=POS_INF)

    # ------------------------------------------------------------------ inputs

    def on_join(self, component: str, group: str, now_ns: int) -> Output:
        out = Output()
        member = self.members.get(component)
        if member is None:
            self.members[component] = _Member(component, group, last_seen_ns=now_ns)
            self.pending.setdefault(group, [])
            self.never_joined_absent.discard(group)
            out.members.append({"event": "join", "member": component, "group": group})
        else:
            out.extend(self._seen(member, now_ns))
        return out

    def _member(self, component: str, group: str, now_ns: int) -> tuple[_Member, Output]:
        member = self.members.get(component)
        if member is None:  # an Obs before its Hello (e.g. fusion restarted): implicit join
            out = self.on_join(component, group, now_ns)
            return self.members[component], out
        return member, self._seen(member, now_ns)

    def _seen(self, member: _Member, now_ns: int) -> Output:
        out = Output()
        member.last_seen_ns = max(member.last_seen_ns, now_ns)
        if (member.absent or member.silent) and not member.ended:
            member.absent = member.silent = False
            out.members.append({"event": "rejoin", "member": member.component,
                                "group": member.group})
        return out

    def on_source(self, live: bool, now_ns: int) -> Output:
        """What the source is (the daemon's Welcome): on a file a silent member keeps holding
        its group back; on a live source it goes absent after the idle timeout."""
        self.hold_silent = not live
        return Output()

    def on_lost(self, component: str, group: str, now_ns: int) -> Output:
        """The daemon gave up waiting for this member (its frames went to others or nobody):
        it holds nothing back any more and its group is missing while it has no other member."""
        member = self.members.get(component)
        if member is None:
            member = _Member(component, group, last_seen_ns=now_ns)
            self.members[component] = member
        out = Output()
        if member.ended or member.lost:
            return out
        member.lost = member.absent = True
        out.members.append({"event": "lost", "member": component, "group": group})
        out.extend(self._release(now_ns))
        return out

    def _duplicate(self, obs: Obs) -> bool:
        """Seen this (seq, t_ns) of the group before? Remember it if not."""
        seen = self._received.setdefault(obs.group, OrderedDict())
        key = (obs.seq, obs.t_ns)
        if key in seen:
            return True
        seen[key] = None
        if len(seen) > DEDUP_WINDOW:
            seen.popitem(last=False)
        return False

    def on_heartbeat(self, component: str, now_ns: int) -> Output:
        member = self.members.get(component)
        return self._seen(member, now_ns) if member is not None else Output()

    def _in_future(self, member: _Member, t_ns: int) -> int | None:
        """The reference ``t_ns`` is judged against, if it is beyond the future guard."""
        refs = [m.latest_ns for m in self.members.values() if m is not member
                and not m.absent and not m.ended and m.latest_ns > NEG_INF]
        if member.latest_ns > NEG_INF:
            refs.append(member.latest_ns)
        if refs and t_ns > max(refs) + self.future_guard_ns:
            return max(refs)
        return None

    def _reject(self, member: _Member, what: str, t_ns: int, ref: int, seq: int | None) -> Output:
        self.rejected_count += 1
        out = Output()
        out.rejected.append({"member": member.component, "group": member.group, "what": what,
                             "seq": seq, "t_ns": t_ns, "reference_ns": ref,
                             "ahead_s": round((t_ns - ref) / 1e9, 3)})
        return out

    def _readers_of(self, group: str) -> tuple[frozenset[str], int]:
        """(the other groups read by rules that read ``group``, how many rules read it);
        rules are fixed after construction, so this is computed once per group."""
        cached = self._readers_cache.get(group)
        if cached is None:
            reading = [r for r in self.rules if group in r.inputs]
            cached = (frozenset(g for r in reading for g in r.inputs) - {group}, len(reading))
            self._readers_cache[group] = cached
        return cached

    def on_obs(self, obs: Obs, now_ns: int) -> Output:
        member, out = self._member(obs.component, obs.group, now_ns)
        self.obs_count += 1
        if self._duplicate(obs):
            self.duplicate_count += 1
            self._advance(member, obs.watermark_ns)
            out.extend(self._release(now_ns))
            return out
        ref = self._in_future(member, max(obs.t_ns, obs.watermark_ns))
        if ref is not None:
            out.extend(self._reject(member, "obs", max(obs.t_ns, obs.watermark_ns), ref, obs.seq))
            return out
        consumed = max((self.released[r.name] for r in self.rules if obs.group in r.inputs),
                       default=NEG_INF)
        if obs.t_ns <= member.watermark or obs.t_ns <= consumed or member.ended:
            self.late_count += 1
            out.late.append({"member": obs.component, "group": obs.group, "seq": obs.seq,
                             "t_ns": obs.t_ns, "watermark_ns": max(member.watermark, consumed),
                             "behind_ms": round((max(member.watermark, consumed) - obs.t_ns) / 1e6, 3)})
        else:
            peers, readers = self._readers_of(obs.group)
            waiting = sorted(g for g in peers if self.group_watermark(g) < obs.t_ns)
            pend = _Pending((obs.t_ns, obs.group, obs.component, obs.seq), obs, now_ns, waiting,
                            readers)
            bisect.insort(self.pending.setdefault(obs.group, []), pend)
            if self.tracks.wants(obs):
                bisect.insort(self._untracked.setdefault(obs.group, []), pend)
            member.latest_ns = max(member.latest_ns, obs.t_ns)
        self._advance(member, obs.watermark_ns)
        out.extend(self._release(now_ns))
        return out

    def on_watermark(self, component: str, group: str, t_ns: int, now_ns: int) -> Output:
        member, out = self._member(component, group, now_ns)
        ref = self._in_future(member, t_ns)
        if ref is not None:
            out.extend(self._reject(member, "watermark", t_ns, ref, None))
            return out
        self._advance(member, t_ns)
        out.extend(self._release(now_ns))
        return out

    def _advance(self, member: _Member, t_ns: int) -> None:
        if t_ns > member.watermark:  # never regresses
            member.watermark = t_ns
        if NEG_INF // 2 < t_ns > member.latest_ns:
            member.latest_ns = t_ns

    def on_eof(self, component: str, group: str, now_ns: int) -> Output:
        """A member ended its stream: it holds nothing back any more."""
        member, out = self._member(component, group, now_ns)
        member.ended = True
        out.members.append({"event": "end", "member": component, "group": group})
        out.extend(self._release(now_ns))
        return out

    def on_source_eof(self, now_ns: int) -> Output:
        """The source itself ended (the daemon's EOF)."""
        self.source_ended = True
        return self._release(now_ns)

    def on_tick(self, now_ns: int) -> Output:
        """Liveness: mark silent members absent, expected groups nobody joined absent."""
        out = Output()
        for member in self.members.values():
            if (not member.absent and not member.silent and not member.ended
                    and now_ns - member.last_seen_ns > self.idle_timeout_ns):
                member.silent = True
                member.absent = not self.hold_silent
                out.members.append({"event": "idle", "member": member.component,
                                    "group": member.group, "holding": self.hold_silent,
                                    "silent_ms": round((now_ns - member.last_seen_ns) / 1e6)})
            elif (member.silent and not member.absent and not member.ended
                    and now_ns - member.last_seen_ns > self.hold_timeout_ns):
                member.lost = member.absent = True  # waited long enough: it is not coming back
                out.members.append({"event": "lost", "member": member.component,
                                    "group": member.group, "reason": "silent",
                                    "silent_ms": round((now_ns - member.last_seen_ns) / 1e6)})
        if now_ns - self.start_ns > self.join_timeout_ns:
            for group in self.expected:
                if group not in self.never_joined_absent and not any(
                        m.group == group for m in self.members.values()):
                    self.never_joined_absent.add(group)
                    out.members.append({"event": "never_joined", "group": group})
        if out.members:
            out.extend(self._release(now_ns))
        return out

    def finish(self, now_ns: int) -> Output:
        """End of everything: release all that is pending and flush every rule."""
        for member in self.members.values():
            member.ended = True
        self.never_joined_absent.update(self.expected)
        out = self._release(now_ns)
        for rule in self.rules:
            trigs = rule.on_eof()
            self.trig_count += len(trigs)
            out.trigs += trigs
        return out

    def done(self) -> bool:
        """The source ended and no member can still send anything that matters."""
        if not self.source_ended:
            return False
        return all(m.ended or m.absent for m in self.members.values())

    # ------------------------------------------------------------------ release

    def missing_groups(self, rule: Rule) -> list[str]:
        out = []
        for g in rule.inputs:
            members = [m for m in self.members.values() if m.group == g]
            if g in self.never_joined_absent and not members:
                out.append(g)
            elif members and all(m.absent for m in members if not m.ended) and \
                    not all(m.ended for m in members):
                out.append(g)
        return out

    def _retrack(self) -> None:
        """Give the face observations each group's watermark has passed the group's track ids,
        in event-time order, before any rule reads them (a rule is complete only up to the
        watermarks of the groups it reads)."""
        for group, items in self._untracked.items():
            if not items:
                continue
            hi = bisect.bisect_right(items, self.group_watermark(group), key=lambda p: p.key[0])
            for pend in items[:hi]:
                pend.obs = self.tracks.retrack(pend.obs)
            del items[:hi]

    def _release(self, now_ns: int) -> Output:
        out = Output()
        self._retrack()
        for rule in self.rules:
            complete = self.complete_until(rule)
            start = self.released[rule.name]
            if complete <= start:
                continue
            batch: list[_Pending] = []
            for group in rule.inputs:
                items = self.pending.get(group, [])
                lo = bisect.bisect_right(items, start, key=lambda p: p.key[0])
                hi = bisect.bisect_right(items, complete, key=lambda p: p.key[0])
                batch += items[lo:hi]
            batch.sort()
            missing = self.missing_groups(rule)
            for pend in batch:
                pend.readers -= 1
                if pend.readers == 0:  # released to its last rule: how long it waited
                    if pend.waiting_for:
                        out.sync_delays.append({
                            "member": pend.obs.component, "group": pend.obs.group,
                            "seq": pend.obs.seq, "t_ns": pend.obs.t_ns,
                            "delay_ms": round((now_ns - pend.arrived_ns) / 1e6, 3),
                            "waiting_for": pend.waiting_for})
                for trig in rule.on_obs(pend.obs):
                    if missing:
                        trig = replace(trig, missing=missing)
                    out.trigs.append(trig)
                    self.trig_count += 1
            if complete >= POS_INF:
                # every input ended or went absent: consumed only what was actually there, so a
                # member that comes back is not late for the rest of the run
                complete = max([start] + [p.key[0] for p in batch])
            self.released[rule.name] = complete
        self._collect_garbage()
        return out

    def _collect_garbage(self) -> None:
        for group, items in self.pending.items():
            readers = [self.released[r.name] for r in self.rules if group in r.inputs]
            floor = min(readers) if readers else POS_INF
            cut = bisect.bisect_right(items, floor, key=lambda p: p.key[0])
            if cut:
                del items[:cut]

