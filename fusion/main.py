"""The fusion process: ``momentbus fusion --bind ADDR [--clip ADDR] --out DIR``.

Receives Hello/Obs/Watermark/Heartbeat/Eof from extractor members (PULL, bound) and the daemon's
Eof, drives the pure :class:`~momentbus.fusion.aligner.Aligner`, writes ``triggers.jsonl``,
forwards each TRIG to the clip extractor (PUSH) and traces ``trigger``, ``late_obs``,
``sync_delay`` and ``member`` records. Ends by itself once the source ended and every member
ended or went absent, after flushing every rule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
from msgspec.structs import replace

from ..ipc import sockets
from ..ipc.schema import Eof, Heartbeat, Hello, Message, Obs, Watermark, to_json_dict
from ..ipc.vocab import group_of_component
from ..lifecycle import ExitCode, StopFlag
from ..traces.tracer import Tracer
from .aligner import DEFAULT_IDLE_TIMEOUT_NS, DEFAULT_JOIN_TIMEOUT_NS, Aligner, Output
from .rules import RuleSpec, build_rules


@dataclass(frozen=True)
class FusionConfig:
    bind: str
    out_dir: str
    clip: str | None = None
    expected_groups: tuple[str, ...] = ()
    idle_timeout_ns: int = DEFAULT_IDLE_TIMEOUT_NS
    join_timeout_ns: int = DEFAULT_JOIN_TIMEOUT_NS
    save_obs: bool = False


def monotonic_now() -> Callable[[], int]:
    """A wall-clock reader for liveness that never goes backwards (CLOCK_MONOTONIC, ns)."""
    last = 0

    def now() -> int:
        nonlocal last
        last = max(last, time.monotonic_ns())
        return last

    return now


def run(cfg: FusionConfig, specs: list[RuleSpec], tracer: Tracer, stop: StopFlag,
        now: Callable[[], int] | None = None) -> int:
    now = now or monotonic_now()
    disabled: list[tuple[str, list[str]]] = []
    rules = build_rules(specs, list(cfg.expected_groups) or None, disabled)
    for name, missing in disabled:
        tracer.emit("member", event="rule_disabled", rule=name, needs=missing)
        tracer.log.warning("rule_disabled", rule=name, needs=missing)
    aligner = Aligner(rules, list(cfg.expected_groups),
                      idle_timeout_ns=cfg.idle_timeout_ns, join_timeout_ns=cfg.join_timeout_ns,
                      start_ns=now())
    pull = sockets.bind(zmq.PULL, cfg.bind, hwm=100_000)
    inbox: sockets.Receiver[Message] = sockets.Receiver(
        pull, (Obs, Watermark, Heartbeat, Hello, Eof), on_bad=tracer.bad_message, where="fusion")
    clip = sockets.connect(zmq.PUSH, cfg.clip, linger_ms=5000) if cfg.clip else None
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    triggers = open(out_dir / "triggers.jsonl", "w", encoding="utf-8", buffering=1)
    obs_log = open(out_dir / "obs.jsonl", "w", encoding="utf-8") if cfg.save_obs else None
    source_id = ""
    fired = 0

    def handle(out: Output) -> None:
        nonlocal fired
        for trig in out.trigs:
            fired += 1
            trig = replace(trig, index=fired)
            record = to_json_dict(trig)
            triggers.write(json.dumps(record, separators=(",", ":")) + "\n")
            tracer.emit("trigger", **{k: v for k, v in record.items() if k != "source_id"})
            if clip is not None:
                sockets.send(clip, trig)
        for late in out.late:
            tracer.emit("late_obs", **late)
        for rejected in out.rejected:
            tracer.emit("future_obs", **rejected)
        for delay in out.sync_delays:
            tracer.emit("sync_delay", **delay)
        for member in out.members:
            tracer.emit("member", **member)

    try:
        while not stop.is_set():
            msg = inbox.recv(100)
            if msg is not None:
                t = now()
                if isinstance(msg, Obs):
                    if obs_log is not None:
                        obs_log.write(json.dumps(to_json_dict(msg), separators=(",", ":")) + "\n")
                    if not source_id:
                        source_id = tracer.source_id = msg.source_id
                    handle(aligner.on_obs(msg, t))
                elif isinstance(msg, Watermark):
                    handle(aligner.on_watermark(msg.component, msg.group, msg.t_ns, t))
                elif isinstance(msg, Heartbeat):
                    handle(aligner.on_heartbeat(msg.component, t))
                elif isinstance(msg, Hello):
                    handle(aligner.on_join(msg.component, msg.group, t))
                elif isinstance(msg, Eof):
                    if msg.component == "daemon":
                        handle(aligner.on_source_eof(t))
                    else:
                        member = aligner.members.get(msg.component)
                        group = member.group if member else group_of_component(msg.component)
                        if group is not None:
                            handle(aligner.on_eof(msg.component, group, t))
            handle(aligner.on_tick(now()))
            if aligner.done():
                break
        handle(aligner.finish(now()))
        tracer.emit("summary", role="fusion", observations=aligner.obs_count, triggers=fired,
                    late=aligner.late_count, rejected_future=aligner.rejected_count,
                    gated_out={r.name: r.gated_out for r in aligner.rules if r.gated_out},
                    bad_messages=tracer.bad_message_counts)
        if clip is not None:
            sockets.send(clip, Eof(source_id=source_id, component="fusion", last_seq=-1,
                                   t_end_ns=0, reason="stopped" if stop.is_set() else "end_of_stream"))
    finally:
        triggers.close()
        if obs_log is not None:
            obs_log.close()
        pull.close(0)
        sockets.remove_ipc_file(cfg.bind)
        if clip is not None:
            clip.close(5000)
    return ExitCode.OK


