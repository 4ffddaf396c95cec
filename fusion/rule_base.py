"""The rule contract and the helpers every rule kind shares (typed parameters, hold, cooldown,
quality gate, evidence).

A rule reads observations of some groups **in event-time order** (the aligner guarantees it) and
returns TRIGs. It never sees wall time, so its output depends only on the observations: the same
file gives the same triggers whatever the machine's speed or the arrival order.

Each kind declares its parameters as a :class:`RuleParams` Struct (types, units, ranges, unknown
keys forbidden); the loader validates a rules file against it and names the file, line, rule and
key of any mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgspec

from ..ipc.payloads import QualityReading
from ..ipc.schema import Evidence, EvidenceValue, Obs, Trig
from ..ipc.timebase import NS_PER_S, parse_duration_ns

#: The longest duration a rule takes (hold, cooldown, pre-/post-roll, windows): one hour. A
#: live ring buffer must hold the largest pre-roll, so this also bounds its memory.
MAX_DURATION_NS = 3600 * NS_PER_S


class RulesError(ValueError):
    """A rules file is invalid; the message names the file, the line, the rule and the key."""


class Duration(int):
    """A duration in ns, written in rules files as ``"0.5s"``, ``"250ms"``, ``"2us"`` or a number
    of seconds; 0 to :data:`MAX_DURATION_NS`."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError("expected a duration like '0.5s' or '250ms'")
        ns = parse_duration_ns(value)
        if ns > MAX_DURATION_NS:
            raise ValueError("expected a duration of at most 1 hour")
        return cls(ns)


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Duration:
        return Duration.parse(obj)
    raise NotImplementedError(f"no conversion to {tp!r}")


class RuleParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every kind's parameters (none)."""


RuleParamsT = TypeVar("RuleParamsT", bound=msgspec.Struct)


def convert_params(cls: type[RuleParamsT],
                   values: Mapping[str, Any] | RuleParams) -> RuleParamsT:
    """``values`` checked and converted to the Struct ``cls``.

    Raises:
        msgspec.ValidationError: a missing, unknown, mistyped or out-of-range key (the loader
            turns it into a :class:`RulesError` naming the key and its line).
    """
    if isinstance(values, msgspec.Struct):
        if isinstance(values, cls):
            return values
        values = msgspec.structs.asdict(values)
    out: RuleParamsT = msgspec.convert(dict(values), type=cls, dec_hook=_dec_hook,
                                       str_keys=True)
    return out


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The keys every rule takes, with their defaults."""

    name: str
    kind: str
    #: How long the condition must hold before it counts (event time).
    hold: Duration = Duration(500_000_000)
    #: The least time between two triggers' onsets.
    cooldown: Duration = Duration(3 * NS_PER_S)
    #: Clip time before the onset.
    pre_roll: Duration = Duration(2 * NS_PER_S)
    #: Clip time after the confirmation.
    post_roll: Duration = Duration(3 * NS_PER_S)
    #: Fire only while the quality gate is open (when a ``quality_gate`` rule exists).
    gated: bool = True


COMMON_KEYS: tuple[str, ...] = Settings.__struct_fields__


@dataclass
class RuleSpec:
    """One rule as loaded: common settings (durations in ns) plus the kind's own ``params``
    (a dict, checked against the kind's :class:`RuleParams` when the rule is built, or the
    Struct itself); ``line``/``origin`` say where it was written."""

    name: str
    kind: str
    hold_ns: int = 500_000_000
    cooldown_ns: int = 3 * NS_PER_S
    pre_roll_ns: int = 2 * NS_PER_S
    post_roll_ns: int = 3 * NS_PER_S
    gated: bool = True
    params: Mapping[str, Any] | RuleParams = field(default_factory=dict)
    line: int | None = None
    origin: str = "<rules>"


@dataclass
class GateState:
    """The quality gate as of the latest quality reading (open until one says otherwise).

    Each threshold given (``min_blur``, ``min_brightness``, ``max_brightness``) applies on its own;
    with none given, the extractor's own ``gate`` flag decides.
    """

    min_blur: float | None = None
    min_brightness: float | None = None
    max_brightness: float | None = None
    open: bool = True
    t_ns: int | None = None
    seq: int | None = None

    def update(self, reading: QualityReading, t_ns: int, seq: int) -> None:
        thresholds = (self.min_blur, self.min_brightness, self.max_brightness)
        if all(v is None for v in thresholds):
            ok = reading.gate
        else:
            ok = ((self.min_blur is None or reading.blur >= self.min_blur)
                  and (self.min_brightness is None or reading.brightness >= self.min_brightness)
                  and (self.max_brightness is None or reading.brightness <= self.max_brightness))
        self.open, self.t_ns, self.seq = ok, t_ns, seq


class Rule:
    """Base of rule kinds. Subclasses set ``kind``, ``inputs`` (the groups they read) and
    ``Params`` (their parameters), and implement :meth:`observe`; :meth:`on_obs` adds the
    quality gate.

    Raises (constructor):
        msgspec.ValidationError: ``spec.params`` do not fit ``Params``.
        ValueError: a parameter combination the kind rejects.
    """

    kind: ClassVar[str] = ""
    Params: ClassVar[type[RuleParams]] = RuleParams
    inputs: tuple[str, ...] = ()

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.params = convert_params(self.Params, spec.params)
        self.gate: GateState | None = None
        self.gated_out = 0
        self.last_fire_ns: int | None = None
        self._own_inputs = tuple(self.inputs)

    def attach_gate(self, gate: GateState) -> None:
        """Fire only while ``gate`` is open; reads the ``quality`` group from now on."""
        self.gate = gate
        self._own_inputs = tuple(self.inputs)
        if "quality" not in self.inputs:
            self.inputs = (*self.inputs, "quality")

    def on_obs(self, obs: Obs) -> list[Trig]:
        """Consume one observation (event-time order across the rule's inputs)."""
        if self.gate is not None and isinstance(obs.payload, QualityReading):
            self.gate.update(obs.payload, obs.t_ns, obs.seq)
            if obs.group not in self._own_inputs:
                return []
        trigs = self.observe(obs)
        if self.gate is not None and not self.gate.open and trigs:
            self.gated_out += len(trigs)
            return []
        return trigs

    def observe(self, obs: Obs) -> list[Trig]:
        """The kind's logic: consume one observation, return what fired."""
        return []

    def on_eof(self) -> list[Trig]:
        """End of stream: fire what is pending. Default: nothing."""
        return []

    def cooled_down(self, t_event_ns: int) -> bool:
        """Whether a trigger with onset ``t_event_ns`` respects the rule's cooldown."""
        return self.last_fire_ns is None or t_event_ns - self.last_fire_ns >= self.spec.cooldown_ns

    def make_trig(self, obs: Obs, t_event_ns: int, t_confirm_ns: int, score: float,
                  evidence: list[Evidence], missing: list[str] | None = None) -> Trig:
        """A TRIG whose clip window is ``[onset - pre_roll, confirmation + post_roll]``; records
        the onset for the cooldown."""
        self.last_fire_ns = t_event_ns
        if self.gate is not None and self.gate.t_ns is not None:
            seq = -1 if self.gate.seq is None else self.gate.seq
            evidence = [*evidence, Evidence(kind="quality", seq=seq, t_ns=self.gate.t_ns,
                                            values={"gate": self.gate.open})]
        return Trig(rule=self.name, rule_kind=self.kind, source_id=obs.source_id,
                    t_event_ns=t_event_ns,
                    t_start_ns=max(0, t_event_ns - self.spec.pre_roll_ns),
                    t_end_ns=max(t_confirm_ns + self.spec.post_roll_ns,
                                 max(0, t_event_ns - self.spec.pre_roll_ns)),
                    score=round(float(score), 4), evidence=evidence, missing=missing or [])


@dataclass
class Held:
    """A condition that must hold for ``hold_ns`` of event time before it counts.

    :meth:`update` returns the onset (the first time it became true, looked back) once the hold
    has elapsed, once per episode; the condition must turn false before it can count again
    (the rule's hysteresis decides when it is false).
    """

    hold_ns: int
    onset_ns: int | None = None
    onset_evidence: Evidence | None = None
    fired: bool = False

    def update(self, condition: bool, t_ns: int, evidence: Evidence) -> int | None:
        if not condition:
            self.onset_ns, self.onset_evidence, self.fired = None, None, False
            return None
        if self.onset_ns is None:
            self.onset_ns, self.onset_evidence = t_ns, evidence
        if not self.fired and t_ns - self.onset_ns >= self.hold_ns:
            self.fired = True
            return self.onset_ns
        return None


def obs_evidence(obs: Obs, **values: EvidenceValue) -> Evidence:
    """An evidence item: the observation's kind, member, seq, t_ns and the values that mattered."""
    return Evidence(kind=obs.kind, component=obs.component, seq=obs.seq, t_ns=obs.t_ns,
                    values=values)
