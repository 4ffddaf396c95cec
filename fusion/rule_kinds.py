"""The built-in rule kinds.

Every threshold default below is stated with where it comes from; all are parameters of the
rule in the TOML file (see ``default_rules.toml`` and README "Rules").
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from ..ipc.schema import FaceObs, GestureObs, Obs, PoseObs, SpeechObs, Trig
from ..ipc.timebase import parse_duration_ns
from .rule_base import GateState, Held, Rule, RuleSpec, obs_evidence


def _float(params: dict[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------- expression


@dataclass
class _TrackState:
    baseline: float
    recent: float
    first_t_ns: int
    last_t_ns: int
    held: Held
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
        emotions = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
        if self.emotion not in emotions:
            raise ValueError(f"emotion must be one of {', '.join(emotions)}")
        self.threshold = _float(p, "threshold", 0.5)
        self.min_rise = _float(p, "min_rise", 0.3)
        self.hysteresis = _float(p, "hysteresis", 0.15)
        self.tau_recent_ns = parse_duration_ns(p.get("tau_recent", "0.25s"))
        self.tau_baseline_ns = parse_duration_ns(p.get("tau_baseline", "5s"))
        self.warmup_ns = parse_duration_ns(p.get("warmup", "2s"))
        self.tracks: dict[int, _TrackState] = {}

    def observe(self, obs: Obs) -> list[Trig]:
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
            self.tracks[track_id] = _TrackState(score, score, t, t, Held(self.spec.hold_ns))
            return None
        dt = t - st.last_t_ns
        st.last_t_ns = t
        st.recent += (score - st.recent) * (1 - math.exp(-dt / self.tau_recent_ns))
        condition = (st.recent >= self.threshold and st.recent - st.baseline >= self.min_rise
                     and t - st.first_t_ns >= self.warmup_ns)
        if not condition:
            st.baseline += (score - st.baseline) * (1 - math.exp(-dt / self.tau_baseline_ns))
            if st.recent < self.threshold - self.hysteresis:
                st.armed = True
        evidence = self._evidence(obs, track_id, score, st)
        onset = st.held.update(condition, t, evidence)
        if onset is None or not st.armed or not self.cooled_down(onset):
            return None
        st.armed = False
        return self.make_trig(obs, onset, t, st.recent - st.baseline,
                              [st.held.onset_evidence or {}, evidence])

    def _evidence(self, obs: Obs, track_id: int, score: float, st: _TrackState) -> dict[str, Any]:
        return obs_evidence(obs, track_id=track_id, emotion=self.emotion, score=round(score, 4),
                            recent=round(st.recent, 4), baseline=round(st.baseline, 4))


# ---------------------------------------------------------------------------- presence


class _Presence(Rule):
    """Shared by face_appears / face_leaves: the number of faces (of at least ``min_area`` of
    the frame) crossing zero, the new state held for ``hold``. The first observation only sets
    the state: a face present from the first frame did not *appear*."""

    inputs = ("face",)
    #: True for "appears" (0 -> some), False for "leaves" (some -> 0).
    appears: ClassVar[bool]

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self.min_area = _float(spec.params, "min_area", 0.0)
        self.present: bool | None = None
        self.held = Held(spec.hold_ns)  # toward the state that fires
        self.back = Held(spec.hold_ns)  # toward the other state (re-arms, never fires)

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs, FaceObs):
            return []
        faces = [f for f in obs.faces if f.get("area_ratio", 1.0) >= self.min_area]
        now_present = bool(faces)
        if self.present is None:
            self.present = now_present
            return []
        evidence = obs_evidence(obs, faces=len(faces),
                                track_ids=[f.get("track_id") for f in faces])
        if self.present != self.appears:  # waiting for the firing transition
            onset = self.held.update(now_present == self.appears, obs.t_ns, evidence)
            if onset is None:
                return []
            self.present = self.appears
            self.held = Held(self.spec.hold_ns)
            if not self.cooled_down(onset):
                return []
            return [self.make_trig(obs, onset, obs.t_ns, 1.0, [evidence])]
        # in the firing state: the other state must also hold before we re-arm
        if self.back.update(now_present != self.appears, obs.t_ns, evidence) is not None:
            self.present = not self.appears
            self.back = Held(self.spec.hold_ns)
        return []


class FaceAppears(_Presence):
    """A face enters the shot (no face, then at least one for ``hold``); ``t_event`` is the
    first frame with the face."""

    kind: ClassVar[str] = "face_appears"
    appears = True


class FaceLeaves(_Presence):
    """The last face leaves the shot (faces, then none for ``hold``); ``t_event`` is the first
    frame without a face."""

    kind: ClassVar[str] = "face_leaves"
    appears = False


# ---------------------------------------------------------------------------- head turn


@dataclass
class _HeadTrack:
    yaw: float
    last_t_ns: int
    speed: float = 0.0
    yaw_at_onset: float | None = None
    onset_ns: int | None = None
    onset_evidence: dict[str, Any] | None = None
    fired: bool = False


class HeadTurn(Rule):
    """A head turning: the *smoothed* angular velocity of yaw (deg/s), not raw frame
    differences. Per track, yaw is smoothed with an EMA (``tau`` 0.15 s), its derivative
    smoothed again (same tau); while ``|speed| >= min_speed`` (default 60 deg/s: a deliberate
    turn; the sample clips' head jitter stays under 30 deg/s after smoothing) the turn goes on,
    and it fires once the yaw has moved ``min_angle`` (25 deg) since the onset."""

    kind: ClassVar[str] = "head_turn"
    inputs = ("face",)

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        p = spec.params
        self.min_speed = _float(p, "min_speed", 60.0)
        self.min_angle = _float(p, "min_angle", 25.0)
        self.tau_ns = parse_duration_ns(p.get("tau", "0.15s"))
        self.tracks: dict[int, _HeadTrack] = {}

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs, FaceObs):
            return []
        out = []
        for face in obs.faces:
            tid, yaw = face.get("track_id"), face.get("yaw")
            if not isinstance(tid, int) or not isinstance(yaw, (int, float)):
                continue
            st = self.tracks.get(tid)
            if st is None or obs.t_ns - st.last_t_ns > 1_000_000_000:
                self.tracks[tid] = _HeadTrack(float(yaw), obs.t_ns)
                continue
            dt = obs.t_ns - st.last_t_ns
            if dt <= 0:
                continue
            alpha = 1 - math.exp(-dt / self.tau_ns)
            new_yaw = st.yaw + (float(yaw) - st.yaw) * alpha
            inst = (new_yaw - st.yaw) / (dt / 1e9)
            st.speed += (inst - st.speed) * alpha
            st.yaw, st.last_t_ns = new_yaw, obs.t_ns
            ev = obs_evidence(obs, track_id=tid, yaw=round(float(yaw), 2),
                              speed_deg_s=round(st.speed, 1))
            if abs(st.speed) < self.min_speed:
                st.onset_ns, st.yaw_at_onset, st.fired = None, None, False
                continue
            if st.onset_ns is None:
                st.onset_ns, st.yaw_at_onset, st.onset_evidence = obs.t_ns, st.yaw, ev
            turned = abs(st.yaw - (st.yaw_at_onset or st.yaw))
            if not st.fired and turned >= self.min_angle and self.cooled_down(st.onset_ns):
                st.fired = True
                out.append(self.make_trig(obs, st.onset_ns, obs.t_ns, turned / 90.0,
                                          [st.onset_evidence or {}, ev]))
        return out


# ---------------------------------------------------------------------------- hands


class HandWave(Rule):
    """A hand waving: its x position oscillating at 1.5-5 Hz (a wave; slower is reaching,
    faster is tremor or noise) with at least ``min_amplitude`` (0.03 of the frame width) over
    the last ``window`` (1.5 s), with at least 3 direction changes. Reads the pose wrists
    (``source = "pose"``, default) or the gesture hands' wrist landmark (``"gesture"``). The
    frequency is half the direction changes per second, so extractor fps must be >= 2x the
    wave's frequency (10 fps sees waves up to 5 Hz)."""

    kind: ClassVar[str] = "hand_wave"

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        p = spec.params
        self.source = str(p.get("source", "pose"))
        if self.source not in ("pose", "gesture"):
            raise ValueError("source must be 'pose' or 'gesture'")
        self.inputs = (self.source,)
        self.min_hz = _float(p, "min_hz", 1.5)
        self.max_hz = _float(p, "max_hz", 5.0)
        self.min_amplitude = _float(p, "min_amplitude", 0.03)
        self.window_ns = parse_duration_ns(p.get("window", "1.5s"))
        self.samples: dict[str, deque[tuple[int, float, int]]] = {}
        self.waving: dict[str, bool] = {}

    def _hands(self, obs: Obs) -> list[tuple[str, float]]:
        if isinstance(obs, PoseObs) and obs.persons:
            kps = obs.persons[0]["keypoints"]
            return [(side, kps[i][0]) for side, i in (("left", 9), ("right", 10))
                    if len(kps) > i and kps[i][2] >= 0.5]
        if isinstance(obs, GestureObs):
            return [(h.get("handedness", "?"), h["landmarks"][0][0]) for h in obs.hands
                    if h.get("landmarks")]
        return []

    def observe(self, obs: Obs) -> list[Trig]:
        out = []
        for side, x in self._hands(obs):
            buf = self.samples.setdefault(side, deque())
            buf.append((obs.t_ns, float(x), obs.seq))
            while buf and obs.t_ns - buf[0][0] > self.window_ns:
                buf.popleft()
            xs = [s[1] for s in buf]
            if len(xs) < 4 or max(xs) - min(xs) < 2 * self.min_amplitude:
                self.waving[side] = False
                continue
            turns = self._turns(list(buf))
            span_s = (buf[-1][0] - buf[0][0]) / 1e9
            hz = len(turns) / 2 / span_s if span_s > 0 else 0.0
            waving = len(turns) >= 3 and self.min_hz <= hz <= self.max_hz
            if waving and not self.waving.get(side) and self.cooled_down(turns[0][0]):
                onset = buf[0][0]
                ev = obs_evidence(obs, hand=side, hz=round(hz, 2),
                                  amplitude=round((max(xs) - min(xs)) / 2, 4),
                                  direction_changes=len(turns))
                first = {"kind": obs.OBS_KIND, "seq": buf[0][2], "t_ns": onset, "hand": side}
                out.append(self.make_trig(obs, onset, obs.t_ns, min(1.0, hz / self.max_hz),
                                          [first, ev]))
            self.waving[side] = waving
        return out

    def _turns(self, buf: list[tuple[int, float, int]]) -> list[tuple[int, float]]:
        """Direction changes with hysteresis ``min_amplitude`` (a zig-zag filter)."""
        turns: list[tuple[int, float]] = []
        direction = 0
        extreme_t, extreme_x = buf[0][0], buf[0][1]
        for t, x, _ in buf[1:]:
            if direction >= 0 and x > extreme_x or direction <= 0 and x < extreme_x:
                if direction == 0 and abs(x - buf[0][1]) >= self.min_amplitude:
                    direction = 1 if x > extreme_x else -1
                extreme_t, extreme_x = t, x
            elif abs(x - extreme_x) >= self.min_amplitude:
                if direction != 0:
                    turns.append((extreme_t, extreme_x))
                direction = 1 if x > extreme_x else -1
                extreme_t, extreme_x = t, x
        return turns


class GestureHold(Rule):
    """A named gesture (``gesture = "thumbs_up"``) shown by any hand (or ``hand = "left" |
    "right"``) with score >= ``min_score`` (0.5) for ``hold``; ``t_event`` is its first frame."""

    kind: ClassVar[str] = "gesture_hold"
    inputs = ("gesture",)

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        p = spec.params
        self.gesture = str(p.get("gesture", ""))
        allowed = ("open_palm", "v_sign", "thumbs_up", "ok", "pointing", "fist")
        if self.gesture not in allowed:
            raise ValueError(f"gesture must be one of {', '.join(allowed)}")
        self.hand = p.get("hand")
        if self.hand not in (None, "left", "right"):
            raise ValueError("hand must be 'left' or 'right'")
        self.min_score = _float(p, "min_score", 0.5)
        self.held = Held(spec.hold_ns)

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs, GestureObs):
            return []
        hits = [h for h in obs.hands if h.get("gesture") == self.gesture
                and h.get("score", 0) >= self.min_score
                and (self.hand is None or h.get("handedness") == self.hand)]
        ev = obs_evidence(obs, gesture=self.gesture,
                          hands=[h.get("handedness") for h in hits],
                          score=max((h.get("score", 0) for h in hits), default=0))
        onset = self.held.update(bool(hits), obs.t_ns, ev)
        if onset is None or not self.cooled_down(onset):
            return []
        return [self.make_trig(obs, onset, obs.t_ns, ev["score"],
                               [self.held.onset_evidence or {}, ev])]


# ---------------------------------------------------------------------------- speech


def _norm(word: str) -> str:
    return re.sub(r"[^a-z0-9']+", "", word.lower())


class SpeechPhrase(Rule):
    """A phrase (``phrase = "start recording"``, case and punctuation ignored) in the final
    words of speech segments, possibly across two segments; timed by the words: ``t_event``
    is the first word's start, the confirmation the last word's end."""

    kind: ClassVar[str] = "speech_phrase"
    inputs = ("speech",)

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        phrase = spec.params.get("phrase")
        if not isinstance(phrase, str) or not [w for w in phrase.split() if _norm(w)]:
            raise ValueError("phrase must be a non-empty string")
        self.phrase = [_norm(w) for w in phrase.split() if _norm(w)]
        self.recent: deque[tuple[str, dict[str, Any], Obs]] = deque(maxlen=len(self.phrase))

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs, SpeechObs) or not obs.final:
            return []
        out = []
        for word in obs.words:
            w = _norm(str(word.get("word", "")))
            if not w:
                continue
            self.recent.append((w, word, obs))
            if [r[0] for r in self.recent] == self.phrase:
                first, last = self.recent[0][1], self.recent[-1][1]
                t0 = int(first.get("t_ns", obs.t_ns))
                if self.cooled_down(t0):
                    evidence = [obs_evidence(o, word=wd.get("word"), word_t_ns=wd.get("t_ns"),
                                             probability=wd.get("probability"))
                                for _, wd, o in self.recent]
                    prob = min(float(r[1].get("probability", 1.0)) for r in self.recent)
                    out.append(self.make_trig(obs, t0, int(last.get("t_end_ns", t0)), prob,
                                              evidence))
                self.recent.clear()
        return out


# ---------------------------------------------------------------------------- quality gate


class QualityGate(Rule):
    """Not a trigger: while it is defined, the other rules fire only while the image-quality
    gate is open (the quality extractor's ``gate``, or ``min_blur`` / ``min_brightness`` /
    ``max_brightness`` given here). A rule can opt out with ``gated = false``."""

    kind: ClassVar[str] = "quality_gate"
    inputs = ("quality",)

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        p = spec.params
        for key in ("min_blur", "min_brightness", "max_brightness"):
            if key in p:
                _float(p, key, 0.0)

    def new_gate(self) -> GateState:
        p = self.spec.params
        return GateState(min_blur=p.get("min_blur"), min_brightness=p.get("min_brightness"),
                         max_brightness=p.get("max_brightness"))

    def observe(self, obs: Obs) -> list[Trig]:
        return []


BUILTIN_KINDS: dict[str, type[Rule]] = {cls.kind: cls for cls in (
    ExpressionSpike, FaceAppears, FaceLeaves, HeadTurn, HandWave, GestureHold, SpeechPhrase,
    QualityGate)}
