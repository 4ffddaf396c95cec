"""The rule contract and the helpers every rule kind shares (hold, cooldown, quality gate).

A rule reads observations of some groups **in event-time order** (the aligner guarantees it) and
returns TRIGs. It never sees wall time, so its output depends only on the observations: the same
file gives the same triggers whatever the machine's speed or the arrival order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..ipc.schema import Obs, QualityObs, Trig


class RulesError(ValueError):
    """A rules file is invalid; the message names the rule and, when known, the line."""


@dataclass
class RuleSpec:
    """Common rule settings (all durations in ns) plus the kind's own ``params``."""

    name: str
    kind: str
    hold_ns: int = 500_000_000
    cooldown_ns: int = 3_000_000_000
    pre_roll_ns: int = 2_000_000_000
    post_roll_ns: int = 3_000_000_000
    params: dict[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass
class GateState:
    """The quality gate as of the latest quality observation (open until one says otherwise).

    ``min_blur`` / ``min_brightness`` / ``max_brightness`` override the extractor's own gate
    flag when given.
    """

    min_blur: float | None = None
    min_brightness: float | None = None
    max_brightness: float | None = None
    open: bool = True
    t_ns: int | None = None
    seq: int | None = None

    def update(self, obs: QualityObs) -> None:
        ok = obs.gate
        if self.min_blur is not None:
            ok = obs.blur >= self.min_blur
            if self.min_brightness is not None:
                ok = ok and obs.brightness >= self.min_brightness
            if self.max_brightness is not None:
                ok = ok and obs.brightness <= self.max_brightness
        self.open, self.t_ns, self.seq = ok, obs.t_ns, obs.seq


class Rule:
    """Base of rule kinds. Subclasses set ``kind`` and ``inputs`` (the groups they read) and
    implement :meth:`observe`; :meth:`on_obs` adds the quality gate."""

    kind: ClassVar[str] = ""
    inputs: tuple[str, ...] = ()

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.gate: GateState | None = None
        self.gated_out = 0
        self.last_fire_ns: int | None = None

    def attach_gate(self, gate: GateState) -> None:
        """Fire only while ``gate`` is open; reads the ``quality`` group from now on."""
        self.gate = gate
        self._own_inputs = tuple(self.inputs)
        if "quality" not in self.inputs:
            self.inputs = (*self.inputs, "quality")

    def on_obs(self, obs: Obs) -> list[Trig]:
        """Consume one observation (event-time order across the rule's inputs)."""
        if self.gate is not None and isinstance(obs, QualityObs):
            self.gate.update(obs)
            if obs.group not in getattr(self, "_own_inputs", self.inputs):
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
                  evidence: list[dict[str, Any]], missing: list[str] | None = None) -> Trig:
        """A TRIG whose clip window is ``[onset - pre_roll, confirmation + post_roll]``; records
        the onset for the cooldown."""
        self.last_fire_ns = t_event_ns
        if self.gate is not None and self.gate.t_ns is not None:
            evidence = [*evidence, {"kind": "quality", "seq": self.gate.seq, "t_ns": self.gate.t_ns,
                                    "gate": self.gate.open}]
        return Trig(rule=self.name, rule_kind=self.kind, source_id=obs.source_id,
                    t_event_ns=t_event_ns,
                    t_start_ns=max(0, t_event_ns - self.spec.pre_roll_ns),
                    t_end_ns=t_confirm_ns + self.spec.post_roll_ns,
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
    onset_evidence: dict[str, Any] | None = None
    fired: bool = False

    def update(self, condition: bool, t_ns: int, evidence: dict[str, Any]) -> int | None:
        if not condition:
            self.onset_ns, self.onset_evidence, self.fired = None, None, False
            return None
        if self.onset_ns is None:
            self.onset_ns, self.onset_evidence = t_ns, evidence
        if not self.fired and t_ns - self.onset_ns >= self.hold_ns:
            self.fired = True
            return self.onset_ns
        return None


def obs_evidence(obs: Obs, **values: Any) -> dict[str, Any]:
    """An evidence item: the observation's kind, member, seq, t_ns and the values that mattered."""
    return {"kind": obs.OBS_KIND, "component": obs.component, "seq": obs.seq, "t_ns": obs.t_ns,
            **values}


def replace_trig(trig: Trig, **changes: Any) -> Trig:
    return dataclasses.replace(trig, **changes)
