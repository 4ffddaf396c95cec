"""Trigger rules: the contract, the built-in kinds, and the TOML loader.

A rule reads observations of some groups **in event-time order** (the aligner guarantees it) and
returns TRIGs. It never sees wall time, so its output depends only on the observations: the same
file gives the same triggers whatever the machine's speed.
"""

from __future__ import annotations

import math
import tomllib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from ..ipc.schema import FaceObs, Obs, Trig
from ..ipc.timebase import parse_duration_ns


class RulesError(ValueError):
    """A rules file is invalid; the message names the rule and, when known, the line."""


@dataclass
class RuleSpec:
    """Common rule settings (all durations in ns)."""

    name: str
    kind: str
    hold_ns: int = 500_000_000
    cooldown_ns: int = 3_000_000_000
    pre_roll_ns: int = 2_000_000_000
    post_roll_ns: int = 3_000_000_000
    params: dict[str, Any] = field(default_factory=dict)
    line: int | None = None


class Rule(ABC):
    """Base of rule kinds. ``inputs`` are the extractor groups the rule reads."""

    kind: ClassVar[str]
    inputs: tuple[str, ...]

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        self.name = spec.name

    @abstractmethod
    def on_obs(self, obs: Obs) -> list[Trig]:
        """Consume one observation (event-time order across the rule's inputs)."""

    def on_eof(self) -> list[Trig]:
        """End of stream: fire what is pending. Default: nothing."""
        return []

    def make_trig(self, obs: Obs, t_event_ns: int, t_confirm_ns: int, score: float,
                  evidence: list[dict[str, Any]], missing: list[str] | None = None) -> Trig:
        """A TRIG whose clip window is ``[onset - pre_roll, confirmation + post_roll]``."""
        return Trig(rule=self.name, rule_kind=self.kind, source_id=obs.source_id,
                    t_event_ns=t_event_ns,
                    t_start_ns=max(0, t_event_ns - self.spec.pre_roll_ns),
                    t_end_ns=t_confirm_ns + self.spec.post_roll_ns,
                    score=round(float(score), 4), evidence=evidence, missing=missing or [])


@dataclass
class _TrackState:
    baseline: float
    recent: float
    first_t_ns: int
    last_t_ns: int
    onset_ns: int | None = None
    onset_evidence: dict[str, Any] | None = None
    armed: bool = True


class ExpressionSpike(Rule):
    """An emotion's score rising well above the same face's own baseline, and holding.

    Per face track: ``recent`` is an exponential moving average of the emotion score with time
    constant ``tau_recent`` (0.25 s: a few frames, to ride over one misclassified frame), the
    ``baseline`` one with ``tau_baseline`` (5 s), frozen while the condition holds so a long smile
    does not become its own baseline. The condition is ``recent >= threshold`` and
    ``recent - baseline >= min_rise``; it must hold for ``hold``; ``t_event`` is its onset. The
    rule re-arms when ``recent`` falls below ``threshold - hysteresis``; ``cooldown`` separates
    two triggers of the rule. A track must be watched for ``warmup`` (2 s) before it can fire:
    a face that arrives smiling has no baseline yet.

    Defaults are from the sample video (happy score: 0.0-0.2 while crying except a 1 s burst of
    crying-laughter at the very start, 0.85-1.0 once she smiles), with margins on both sides.
    """

    kind: ClassVar[str] = "expression_spike"
    inputs = ("face",)

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        p = spec.params
        self.emotion = str(p.get("emotion", "happy"))
        self.threshold = float(p.get("threshold", 0.5))
        self.min_rise = float(p.get("min_rise", 0.3))
        self.hysteresis = float(p.get("hysteresis", 0.15))
        self.tau_recent_ns = parse_duration_ns(p.get("tau_recent", "0.25s"))
        self.tau_baseline_ns = parse_duration_ns(p.get("tau_baseline", "5s"))
        self.warmup_ns = parse_duration_ns(p.get("warmup", "2s"))
        self.tracks: dict[int, _TrackState] = {}
        self.last_fire_ns: int | None = None

    def on_obs(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs, FaceObs):
            return []
        out: list[Trig] = []
        for face in obs.faces:
            score = face.get("expression", {}).get(self.emotion)
            track_id = face.get("track_id")
            if not isinstance(score, (int, float)) or not isinstance(track_id, int):
                continue
            trig = self._update(obs, track_id, float(score))
            if trig is not None:
                out.append(trig)
        return out

    def _update(self, obs: Obs, track_id: int, score: float) -> Trig | None:
        st = self.tracks.get(track_id)
        t = obs.t_ns
        if st is None or t - st.last_t_ns > self.warmup_ns:  # new face, or one lost for long
            self.tracks[track_id] = _TrackState(score, score, t, t)
            return None
        dt = t - st.last_t_ns
        st.last_t_ns = t
        st.recent += (score - st.recent) * (1 - math.exp(-dt / self.tau_recent_ns))
        condition = (st.recent >= self.threshold and st.recent - st.baseline >= self.min_rise
                     and t - st.first_t_ns >= self.warmup_ns)
        if not condition:
            st.baseline += (score - st.baseline) * (1 - math.exp(-dt / self.tau_baseline_ns))
            st.onset_ns = None
            if st.recent < self.threshold - self.hysteresis:
                st.armed = True
            return None
        if st.onset_ns is None:
            st.onset_ns = t
            st.onset_evidence = self._evidence(obs, track_id, score, st)
        if not st.armed or t - st.onset_ns < self.spec.hold_ns:
            return None
        if self.last_fire_ns is not None and st.onset_ns - self.last_fire_ns < self.spec.cooldown_ns:
            return None
        st.armed = False
        self.last_fire_ns = st.onset_ns
        evidence = [st.onset_evidence or {}, self._evidence(obs, track_id, score, st)]
        return self.make_trig(obs, st.onset_ns, t, st.recent - st.baseline, evidence)

    def _evidence(self, obs: Obs, track_id: int, score: float, st: _TrackState) -> dict[str, Any]:
        return {"kind": "face", "component": obs.component, "seq": obs.seq, "t_ns": obs.t_ns,
                "track_id": track_id, "emotion": self.emotion, "score": round(score, 4),
                "recent": round(st.recent, 4), "baseline": round(st.baseline, 4)}


#: Built-in rule kinds (explicit registration).
RULE_KINDS: dict[str, type[Rule]] = {ExpressionSpike.kind: ExpressionSpike}

_COMMON_KEYS = {"name", "kind", "hold", "cooldown", "pre_roll", "post_roll"}


def _line_of(text: str, name: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if line.split("#")[0].replace(" ", "").strip() in (f'name="{name}"', f"name='{name}'"):
            return i
    return None


def parse_rules(text: str, origin: str = "<rules>") -> list[RuleSpec]:
    """Parse and validate a rules TOML document.

    Raises:
        RulesError: TOML syntax error (with its line), a missing/duplicate name, an unknown
            kind, or a bad duration; the message names the rule and its line.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{origin}: {e}") from None
    rules = doc.get("rule")
    if not isinstance(rules, list) or not rules:
        raise RulesError(f"{origin}: no [[rule]] tables")
    specs: list[RuleSpec] = []
    seen: set[str] = set()
    for i, table in enumerate(rules, 1):
        name = table.get("name")
        where = f"{origin}: rule #{i}"
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise RulesError(f"{where}: 'name' must be a non-empty string of letters, digits, - or _")
        line = _line_of(text, name)
        where = f"{origin}:{line}: rule {name!r}" if line else f"{origin}: rule {name!r}"
        if name in seen:
            raise RulesError(f"{where}: duplicate name")
        seen.add(name)
        kind = table.get("kind")
        if kind not in RULE_KINDS:
            raise RulesError(f"{where}: unknown kind {kind!r} (known: {', '.join(sorted(RULE_KINDS))})")
        spec = RuleSpec(name=name, kind=kind, line=line,
                        params={k: v for k, v in table.items() if k not in _COMMON_KEYS})
        for key in ("hold", "cooldown", "pre_roll", "post_roll"):
            if key in table:
                try:
                    setattr(spec, f"{key}_ns", parse_duration_ns(table[key]))
                except ValueError as e:
                    raise RulesError(f"{where}: {key}: {e}") from None
        try:
            RULE_KINDS[kind](spec)  # kind-specific validation
        except (ValueError, TypeError) as e:
            raise RulesError(f"{where}: {e}") from None
        specs.append(spec)
    return specs


def load_rules(path: str | Path | None = None) -> list[RuleSpec]:
    """Rules from ``path``, or the shipped ``default_rules.toml``.

    Raises:
        RulesError: as :func:`parse_rules`, or the file cannot be read.
    """
    if path is None:
        text = resources.files("momentbus.fusion").joinpath("default_rules.toml").read_text()
        return parse_rules(text, "default_rules.toml")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RulesError(f"{path}: cannot read ({e.strerror})") from None
    return parse_rules(text, str(path))


def build_rules(specs: list[RuleSpec]) -> list[Rule]:
    return [RULE_KINDS[s.kind](s) for s in specs]
