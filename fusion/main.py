"""The fusion process: ``momentbus fusion --bind ADDR [--clip ADDR] --out DIR [--resume]``.

Receives Hello/Obs/Watermark/Heartbeat/Eof from extractor members and the daemon's Welcome/Eof
and member-lost notices on a ROUTER, over reliable links (:mod:`momentbus.ipc.reliable`). Every
message it accepts is first written to its log (``OUT/fusion.wal``, :mod:`.wal`), then handed to
the pure :class:`~momentbus.fusion.aligner.Aligner`, then acknowledged. Each TRIG is appended to
``triggers.jsonl`` and sent to the clip role over a reliable link, which acknowledges it once the
clip is written. Traces ``trigger``, ``late_obs``, ``sync_delay`` and ``member`` records.

Ends by itself once the source ended and every member ended or was lost, after flushing every
rule and after the clip role acknowledged every TRIG.

Restart (``--resume``): the log is replayed through a fresh aligner with the same rules, which
rebuilds the rule state and the triggers exactly; ``triggers.jsonl`` is only appended to (the
triggers it already holds are recognised, never written twice); the senders then resend what this
process had not acknowledged, and every TRIG goes to the clip role again (it skips clips it has).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zmq
from msgspec.structs import replace

from ..ipc import sockets
from ..ipc.errors import DecodeError
from ..ipc.linkclock import LinkClock
from ..ipc.reliable import Delivery, ReliableReceiver, ReliableSender, incarnation_now
from ..ipc.schema import (Eof, Heartbeat, Hello, Message, Obs, Trig, Watermark, Welcome, decode,
                          encode, to_json_dict)
from ..ipc.vocab import MEMBER_LOST, group_of_component
from ..lifecycle import ExitCode, StopFlag
from ..traces.tracer import Tracer
from .aligner import (DEFAULT_IDLE_TIMEOUT_NS, DEFAULT_JOIN_TIMEOUT_NS, NEG_INF, POS_INF, Aligner,
                      Output)
from .rules import RuleSpec, build_rules
from .wal import TICK, WriteAheadLog

#: How long fusion waits at the end for the clip role to acknowledge every TRIG (cutting a clip
#: of a file takes 15-400 ms measured here; a clip role being restarted takes a few seconds).
CLIP_DRAIN_TIMEOUT_S = 120.0
#: How often fusion traces each group's watermark (``watermark`` records, verbose enough for a
#: metrics gauge, a tenth of the ``timing`` records of one 10 fps extractor).
WATERMARK_TRACE_INTERVAL_NS = 1_000_000_000
START = b"start"


@dataclass(frozen=True)
class FusionConfig:
    bind: str
    out_dir: str
    clip: str | None = None
    expected_groups: tuple[str, ...] = ()
    idle_timeout_ns: int = DEFAULT_IDLE_TIMEOUT_NS
    join_timeout_ns: int = DEFAULT_JOIN_TIMEOUT_NS
    save_obs: bool = False
    resume: bool = False


def watermark_records(aligner: Aligner, newest_t_ns: int) -> list[dict[str, Any]]:
    """One ``watermark`` record's fields per group fusion knows (expected or joined).

    ``watermark_ns``: the group's watermark (event time, ns; ``None`` while nobody joined, or
    once every member ended or went absent). ``lag_ms``: how far it is behind the newest event
    time of any observation accepted (ms, ``None`` when either is unknown): the wait a rule
    reading this group adds.
    """
    groups = set(aligner.expected) | {m.group for m in aligner.members.values()}
    records = []
    for group in sorted(groups):
        wm = aligner.group_watermark(group)
        known = NEG_INF < wm < POS_INF
        records.append({"group": group, "watermark_ns": wm if known else None,
                        "lag_ms": round(max(newest_t_ns - wm, 0) / 1e6, 3)
                        if known and newest_t_ns > NEG_INF else None})
    return records


def monotonic_now() -> Callable[[], int]:
    """A wall-clock reader for liveness that never goes backwards (CLOCK_MONOTONIC, ns)."""
    last = 0

    def now() -> int:
        nonlocal last
        last = max(last, time.monotonic_ns())
        return last

    return now


ACCEPTED = (Obs, Watermark, Heartbeat, Hello, Eof, Welcome)


class Fusion:
    """Fusion's state: the aligner and what it fired, fed one message at a time (live or from
    the log), so replay and live handling are the same code."""

    def __init__(self, cfg: FusionConfig, specs: list[RuleSpec], tracer: Tracer,
                 start_ns: int) -> None:
        self.cfg = cfg
        self.tracer = tracer
        disabled: list[tuple[str, list[str]]] = []
        rules = build_rules(specs, list(cfg.expected_groups) or None, disabled)
        self.disabled = disabled
        self.aligner = Aligner(rules, list(cfg.expected_groups),
                               idle_timeout_ns=cfg.idle_timeout_ns,
                               join_timeout_ns=cfg.join_timeout_ns, start_ns=start_ns)
        self.fired: list[Trig] = []
        self.source_id = ""
        #: the daemon said the source is live: event time is this host's CLOCK_MONOTONIC
        self.live = False

    def apply(self, msg: Message, now_ns: int) -> Output:
        """Hand one accepted message to the aligner."""
        al = self.aligner
        if isinstance(msg, Obs):
            if not self.source_id:
                self.source_id = msg.source_id
            return al.on_obs(msg, now_ns)
        if isinstance(msg, Watermark):
            return al.on_watermark(msg.component, msg.group, msg.t_ns, now_ns)
        if isinstance(msg, Heartbeat):
            return al.on_heartbeat(msg.component, now_ns)
        if isinstance(msg, Hello):
            return al.on_join(msg.component, msg.group, now_ns)
        if isinstance(msg, Welcome):
            self.source_id = msg.source_id
            self.live = msg.live
            return al.on_source(msg.live, now_ns)
        if isinstance(msg, Eof):
            if msg.component == "daemon":
                return al.on_source_eof(now_ns)
            member = al.members.get(msg.component)
            group = member.group if member else group_of_component(msg.component)
            if group is None:
                return Output()
            if msg.reason == MEMBER_LOST:
                return al.on_lost(msg.component, group, now_ns)
            return al.on_eof(msg.component, group, now_ns)
        return Output()

    def number(self, out: Output) -> list[Trig]:
        """Give each new TRIG its ordinal and keep it."""
        new = []
        for trig in out.trigs:
            trig = replace(trig, index=len(self.fired) + 1)
            self.fired.append(trig)
            new.append(trig)
        return new


def run(cfg: FusionConfig, specs: list[RuleSpec], tracer: Tracer, stop: StopFlag,
        now: Callable[[], int] | None = None) -> int:
    now = now or monotonic_now()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wal = WriteAheadLog(out_dir / "fusion.wal", resume=cfg.resume)
    replayed = list(wal.replay()) if cfg.resume else []
    start_ns = replayed[0].now_ns if replayed and replayed[0].kind == START else now()
    fusion = Fusion(cfg, specs, tracer, start_ns)
    for name, missing in fusion.disabled:
        tracer.emit("member", event="rule_disabled", rule=name, needs=missing)
        tracer.log.warning("rule_disabled", rule=name, needs=missing)
    if not replayed:
        wal.append(start_ns, START, b"")
    triggers = _TriggerFile(out_dir / "triggers.jsonl", resume=cfg.resume, tracer=tracer)
    state = _replay(fusion, replayed, triggers)
    if replayed:
        tracer.emit("member", event="resumed", log_entries=len(replayed),
                    triggers=len(fusion.fired), torn_bytes=wal.torn_bytes)
    incarnation = incarnation_now()
    router = sockets.bind(zmq.ROUTER, cfg.bind, hwm=100_000)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    inbox: ReliableReceiver[Message] = ReliableReceiver(
        router, ACCEPTED, incarnation, on_bad=tracer.bad_message, where="fusion", state=state)
    clip_sock = sockets.connect(zmq.DEALER, cfg.clip, hwm=0, linger_ms=0) if cfg.clip else None
    clip = ReliableSender(clip_sock, "fusion", incarnation) if clip_sock is not None else None
    obs_log: IO[str] | None = (open(out_dir / "obs.jsonl", "a" if cfg.resume else "w",
                                    encoding="utf-8") if cfg.save_obs else None)
    if clip is not None:
        for trig in fusion.fired:  # the clip role skips clips it already wrote
            clip.send(trig)
    clocks = _MemberClocks(router, tracer)
    newest_t_ns = [NEG_INF]  # the newest event time of any observation accepted

    def handle(out: Output) -> None:
        for trig in fusion.number(out):
            record = triggers.write(trig)
            # emitted_ns: fusion's CLOCK_MONOTONIC when the TRIG left; on a live source of this
            # host it is on the clock of t_ns, so it minus the evidence's t_ns is the latency
            tracer.emit("trigger", emitted_ns=now(),
                        **{k: v for k, v in record.items() if k != "source_id"})
            if clip is not None:
                clip.send(trig)
        for late in out.late:
            tracer.emit("late_obs", **late)
        for rejected in out.rejected:
            tracer.emit("future_obs", **rejected)
        for delay in out.sync_delays:
            tracer.emit("sync_delay", **delay)
        for member in out.members:
            tracer.emit("member", **member)

    def accept(delivery: Delivery[Message]) -> None:
        msg = delivery.msg
        if not _from_its_sender(delivery):
            tracer.bad_message(DecodeError(f"{type(msg).__name__} of "
                                           f"{getattr(msg, 'component', '?')!r} not sent by it "
                                           f"over a reliable link (from {delivery.sender!r})"))
            inbox.done(delivery)
            return
        t = now()
        kind, header = encode(msg)[:2]  # what was accepted, as the log keeps it
        wal.append(t, bytes(kind), bytes(header), delivery.sender, delivery.incarnation,
                   delivery.rseq)
        if obs_log is not None and isinstance(msg, Obs):
            obs_log.write(json.dumps(to_json_dict(msg), separators=(",", ":")) + "\n")
        if isinstance(msg, Heartbeat) and msg.clock is not None:
            clocks.answer(delivery, msg)
        elif isinstance(msg, Obs) and msg.sent_wall_ns:
            # capture -> here: the extractor's capture -> send (on its clock, the capture stamp
            # moved to it by its offset to the daemon) plus send -> here (its send stamp moved
            # to our clock by our offset to it): right whatever the hosts' clocks say
            sent = clocks.to_local_ns(msg.component, msg.sent_wall_ns)
            transit = None if sent is None else time.time_ns() - sent
            tracer.emit("timing", stage="fusion_in", member=msg.component, seq=msg.seq,
                        t_ns=msg.t_ns,  # None: no clock sample from that member yet
                        transit_ms=None if transit is None else round(transit / 1e6, 3),
                        capture_to_fusion_ms=None if transit is None
                        else round((msg.latency_ns + transit) / 1e6, 3))
        if isinstance(msg, Obs) and msg.t_ns > newest_t_ns[0]:
            newest_t_ns[0] = msg.t_ns
        handle(fusion.apply(msg, t))
        inbox.done(delivery)

    code: int = ExitCode.OK
    next_watermark_ns = now()
    try:
        while not stop.is_set():
            delivery = inbox.recv(100)
            if delivery is not None:
                accept(delivery)
            inbox.flush_acks()
            if clip is not None:
                clip.pump()
            t = now()
            if t >= next_watermark_ns:
                next_watermark_ns = t + WATERMARK_TRACE_INTERVAL_NS
                for record in watermark_records(fusion.aligner, newest_t_ns[0]):
                    tracer.emit("watermark", **record)
            out = fusion.aligner.on_tick(t)
            if out.members:
                wal.append_tick(t)
                handle(out)
            if fusion.aligner.done():
                break
        if not stop.is_set():
            handle(fusion.aligner.finish(now()))
            if clip is not None:
                clip.send(Eof(source_id=fusion.source_id, component="fusion", last_seq=-1,
                              t_end_ns=0, reason="end_of_stream"))
                if not _drain(clip, inbox, stop):
                    tracer.error("clip", f"{clip.unacked} TRIG(s) or the end were never "
                                 f"acknowledged by the clip role within "
                                 f"{CLIP_DRAIN_TIMEOUT_S:.0f} s")
                    code = ExitCode.ERROR
        al = fusion.aligner
        tracer.emit("summary", role="fusion", observations=al.obs_count,
                    triggers=len(fusion.fired),
                    late=al.late_count, duplicates=al.duplicate_count,
                    rejected_future=al.rejected_count, replayed=len(replayed),
                    gated_out={r.name: r.gated_out for r in al.rules if r.gated_out},
                    bad_messages=tracer.bad_message_counts,
                    resent_to_clip=clip.resends if clip is not None else 0)
    finally:
        inbox.flush_acks(force=True)
        triggers.close()
        wal.close()
        if obs_log is not None:
            obs_log.close()
        router.close(0)
        sockets.remove_ipc_file(cfg.bind)
        if clip_sock is not None:
            clip_sock.close(0)
    return code


#: Members whose clocks fusion keeps (more are answered, not kept: a flood of made-up
#: components cannot grow fusion's memory).
MAX_CLOCKS = 1024


class _MemberClocks:
    """Fusion's end of each extractor's heartbeat link: it answers every stamped heartbeat
    (so the extractor samples our clock) and keeps the member's offset (linkclock.py)."""

    def __init__(self, router: zmq.Socket[Any], tracer: Tracer) -> None:
        self.router = router
        self.tracer = tracer
        self.clocks: dict[str, LinkClock] = {}

    def answer(self, delivery: Delivery[Message], beat: Heartbeat) -> None:
        clock = self.clocks.get(beat.component)
        if clock is None:
            clock = LinkClock()
            if len(self.clocks) < MAX_CLOCKS:
                self.clocks[beat.component] = clock
        clock.receive(beat.clock)
        reply = Heartbeat(component="fusion", wall_ns=time.time_ns(), clock=clock.stamps())
        try:
            sockets.send(self.router, reply, identity=delivery.identity, flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the heartbeat socket is gone (the member stopped): nothing to answer
        est = clock.report_due()
        if est is not None:
            self.tracer.emit("member", event="clock", member=beat.component,
                             peer=beat.component, host=delivery.peer_address or None,
                             **est.fields())

    def to_local_ns(self, component: str, wall_ns: int) -> int | None:
        """A member's wall-clock stamp on our clock; ``None`` before its first clock sample."""
        clock = self.clocks.get(component)
        est = clock.estimate() if clock is not None else None
        return None if est is None else est.to_local_ns(wall_ns)


def _from_its_sender(delivery: Delivery[Message]) -> bool:
    """Only heartbeats may come plain; a member's data comes over its own reliable link, and
    the daemon speaks for the source and for members it gave up on."""
    msg, sender = delivery.msg, delivery.sender
    if isinstance(msg, Heartbeat):
        return True
    if sender is None:
        return False
    if sender == "daemon":
        return isinstance(msg, Welcome) or (isinstance(msg, Eof) and (
            msg.component == "daemon" or msg.reason == MEMBER_LOST))
    return getattr(msg, "component", None) == sender


def _drain(clip: ReliableSender, inbox: ReliableReceiver[Message], stop: StopFlag) -> bool:
    """Wait until the clip role acknowledged everything, still acknowledging what members
    resend meanwhile (they wait for it to end)."""
    def serve() -> None:
        delivery = inbox.recv(0)
        if delivery is not None:
            inbox.done(delivery)
        inbox.flush_acks()

    return clip.wait(lambda: clip.all_acked() or stop.is_set(), CLIP_DRAIN_TIMEOUT_S,
                     idle=serve)


def _replay(fusion: Fusion, entries: list[Any],
            triggers: _TriggerFile) -> dict[str, tuple[int, int]]:
    """Feed the logged inputs through ``fusion`` again; returns the reliable receiver's state
    (per sender: incarnation and last rseq handled)."""
    state: dict[str, tuple[int, int]] = {}
    for entry in entries:
        if entry.kind == START:
            continue
        if entry.kind == TICK:
            out = fusion.aligner.on_tick(entry.now_ns)
        else:
            try:
                msg = decode([entry.kind, entry.header])
            except DecodeError:
                continue  # cannot happen for what was accepted; never fatal
            out = fusion.apply(msg, entry.now_ns)
        for trig in fusion.number(out):
            triggers.replayed(trig)
        if entry.sender is not None:
            state[entry.sender] = (entry.incarnation, entry.rseq)
    return state


class _TriggerFile:
    """``triggers.jsonl``: appended to, never rewritten; on resume the lines already there are
    matched against the replayed TRIGs (a torn last line is cut and written again)."""

    def __init__(self, path: Path, *, resume: bool, tracer: Tracer) -> None:
        self.path = path
        self.tracer = tracer
        self.existing: list[dict[str, Any]] = []
        if resume and path.exists():
            data = path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) < len(data):
                with open(path, "r+b") as f:
                    f.truncate(len(whole))
            self.existing = [json.loads(line) for line in whole.splitlines() if line.strip()]
        self._file = open(path, "a" if resume else "w", encoding="utf-8", buffering=1)
        self._replayed = 0

    def replayed(self, trig: Trig) -> None:
        """A TRIG rebuilt from the log: it is either the next line already written, or new."""
        if self._replayed < len(self.existing):
            line = self.existing[self._replayed]
            if (line.get("rule"), line.get("t_event_ns")) != (trig.rule, trig.t_event_ns):
                self.tracer.error("resume", f"replayed trigger {trig.rule} at "
                                  f"{trig.t_event_ns} differs from triggers.jsonl line "
                                  f"{self._replayed + 1}")
            self._replayed += 1
            return
        self.write(trig)

    def write(self, trig: Trig) -> dict[str, Any]:
        record = to_json_dict(trig)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        return record

    def close(self) -> None:
        self._file.close()
