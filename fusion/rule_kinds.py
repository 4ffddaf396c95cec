"""The built-in rule kinds.

Each kind's ``Params`` Struct declares its parameters with types, units, ranges and defaults;
every default is stated with where it comes from, and all are settable in the TOML file (see
``default_rules.toml`` and README "Rules").
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, get_args

from msgspec import Meta

from ..ipc.payloads import Faces, Hands, Persons, SpeechSegment, Unit, Word
from ..ipc.schema import Evidence, Obs, Trig
from ..ipc.vocab import (GESTURES, HAND_WRIST, LEFT_WRIST, RIGHT_WRIST, VISIBLE, Emotion,
                         Handedness)
from .rule_base import Duration, GateState, Held, Rule, RuleParams, RuleSpec, obs_evidence

NS_PER_S = 1_000_000_000
#: Rates in Hz a hand-wave rule may ask for; above 30 Hz no camera here samples it.
Hz = Annotated[float, Meta(gt=0.0, le=30.0, description="Hz")]
DegreesPerSecond = Annotated[float, Meta(gt=0.0, le=10_000.0, description="degrees/s")]
#: Gestures a rule can wait for (every label but ``none``).
HeldGesture = Literal["open_palm", "v_sign", "thumbs_up", "ok", "pointing", "fist"]
assert get_args(HeldGesture) == tuple(g for g in GESTURES if g != "none")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be longer than 0 s")


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

    class Params(RuleParams, frozen=True, kw_only=True):
        emotion: Emotion = "happy"
        threshold: Unit = 0.5
        min_rise: Unit = 0.3
        hysteresis: Unit = 0.15
        tau_recent: Duration = Duration(250_000_000)
        tau_baseline: Duration = Duration(5 * NS_PER_S)
        warmup: Duration = Duration(2 * NS_PER_S)

        def __post_init__(self) -> None:
            _positive("tau_recent", self.tau_recent)
            _positive("tau_baseline", self.tau_baseline)

    kind: ClassVar[str] = "expression_spike"
    inputs = ("face",)
    params: Params

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self.tracks: dict[int, _TrackState] = {}

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs.payload, Faces):
            return []
        out: list[Trig] = []
        for face in obs.payload.faces:
            if face.expression is None:
                continue
            trig = self._update(obs, face.track_id, face.expression.score(self.params.emotion))
            if trig is not None:
                out.append(trig)
        return out

    def _update(self, obs: Obs, track_id: int, score: float) -> Trig | None:
        p = self.params
        st = self.tracks.get(track_id)
        t = obs.t_ns
        if st is None or t - st.last_t_ns > p.warmup:  # new face, or one lost for long
            self.tracks[track_id] = _TrackState(score, score, t, t, Held(self.spec.hold_ns))
            return None
        dt = t - st.last_t_ns
        st.last_t_ns = t
        st.recent += (score - st.recent) * (1 - math.exp(-dt / p.tau_recent))
        condition = (st.recent >= p.threshold and st.recent - st.baseline >= p.min_rise
                     and t - st.first_t_ns >= p.warmup)
        if not condition:
            st.baseline += (score - st.baseline) * (1 - math.exp(-dt / p.tau_baseline))
            if st.recent < p.threshold - p.hysteresis:
                st.armed = True
        evidence = obs_evidence(obs, track_id=track_id, emotion=p.emotion, score=round(score, 4),
                                recent=round(st.recent, 4), baseline=round(st.baseline, 4))
        onset = st.held.update(condition, t, evidence)
        if onset is None or not st.armed or not self.cooled_down(onset):
            return None
        st.armed = False
        return self.make_trig(obs, onset, t, st.recent - st.baseline,
                              [st.held.onset_evidence or evidence, evidence])


# ---------------------------------------------------------------------------- presence


class _Presence(Rule):
    """Shared by face_appears / face_leaves: the number of faces (of at least ``min_area`` of
    the frame) crossing zero, the new state held for ``hold``. The first observation only sets
    the state: a face present from the first frame did not *appear*."""

    class Params(RuleParams, frozen=True, kw_only=True):
        #: Faces smaller than this fraction of the frame are not counted (0: all faces).
        min_area: Unit = 0.0

    inputs = ("face",)
    params: Params
    #: True for "appears" (0 -> some), False for "leaves" (some -> 0).
    appears: ClassVar[bool]

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self.present: bool | None = None
        self.held = Held(spec.hold_ns)  # toward the state that fires
        self.back = Held(spec.hold_ns)  # toward the other state (re-arms, never fires)

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs.payload, Faces):
            return []
        faces = [f for f in obs.payload.faces if f.area_ratio >= self.params.min_area]
        now_present = bool(faces)
        if self.present is None:
            self.present = now_present
            return []
        evidence = obs_evidence(obs, faces=len(faces), track_ids=[f.track_id for f in faces])
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
    onset_evidence: Evidence | None = None
    fired: bool = False


class HeadTurn(Rule):
    """A head turning: the *smoothed* angular velocity of yaw (deg/s), not raw frame
    differences. Per track, yaw is smoothed with an EMA (``tau`` 0.15 s), its derivative
    smoothed again (same tau); while ``|speed| >= min_speed`` (default 60 deg/s: a deliberate
    turn; the sample clips' head jitter stays under 30 deg/s after smoothing) the turn goes on,
    and it fires once the yaw has moved ``min_angle`` (25 deg) since the onset."""

    class Params(RuleParams, frozen=True, kw_only=True):
        min_speed: DegreesPerSecond = 60.0
        min_angle: Annotated[float, Meta(gt=0.0, le=360.0, description="degrees")] = 25.0
        tau: Duration = Duration(150_000_000)

        def __post_init__(self) -> None:
            _positive("tau", self.tau)

    kind: ClassVar[str] = "head_turn"
    inputs = ("face",)
    params: Params

    #: A track unseen this long starts over (a face hidden for a second is a new approach).
    TRACK_GAP_NS = NS_PER_S

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self.tracks: dict[int, _HeadTrack] = {}

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs.payload, Faces):
            return []
        p = self.params
        out = []
        for face in obs.payload.faces:
            tid, yaw = face.track_id, face.yaw
            st = self.tracks.get(tid)
            if st is None or obs.t_ns - st.last_t_ns > self.TRACK_GAP_NS:
                self.tracks[tid] = _HeadTrack(yaw, obs.t_ns)
                continue
            dt = obs.t_ns - st.last_t_ns
            if dt <= 0:
                continue
            alpha = 1 - math.exp(-dt / p.tau)
            new_yaw = st.yaw + (yaw - st.yaw) * alpha
            inst = (new_yaw - st.yaw) / (dt / 1e9)
            st.speed += (inst - st.speed) * alpha
            st.yaw, st.last_t_ns = new_yaw, obs.t_ns
            ev = obs_evidence(obs, track_id=tid, yaw=round(yaw, 2),
                              speed_deg_s=round(st.speed, 1))
            if abs(st.speed) < p.min_speed:
                st.onset_ns, st.yaw_at_onset, st.fired = None, None, False
                continue
            if st.onset_ns is None:
                st.onset_ns, st.yaw_at_onset, st.onset_evidence = obs.t_ns, st.yaw, ev
            turned = abs(st.yaw - (st.yaw_at_onset if st.yaw_at_onset is not None else st.yaw))
            if not st.fired and turned >= p.min_angle and self.cooled_down(st.onset_ns):
                st.fired = True
                out.append(self.make_trig(obs, st.onset_ns, obs.t_ns, turned / 90.0,
                                          [st.onset_evidence or ev, ev]))
        return out


# ---------------------------------------------------------------------------- hands


class HandWave(Rule):
    """A hand waving: its x position oscillating at 1.5-5 Hz (a wave; slower is reaching,
    faster is tremor or noise) with at least ``min_amplitude`` (0.03 of the frame width) over
    the last ``window`` (1.5 s), with at least 3 direction changes. Reads the pose wrists
    (``source = "pose"``, default) or the gesture hands' wrist landmark (``"gesture"``). The
    frequency is half the direction changes per second, so extractor fps must be >= 2x the
    wave's frequency (10 fps sees waves up to 5 Hz)."""

    class Params(RuleParams, frozen=True, kw_only=True):
        source: Literal["pose", "gesture"] = "pose"
        min_hz: Hz = 1.5
        max_hz: Hz = 5.0
        min_amplitude: Unit = 0.03
        window: Duration = Duration(1_500_000_000)

        def __post_init__(self) -> None:
            if self.min_hz >= self.max_hz:
                raise ValueError("min_hz must be below max_hz")
            _positive("window", self.window)

    kind: ClassVar[str] = "hand_wave"
    params: Params

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self.inputs = (self.params.source,)
        self._own_inputs = self.inputs
        self.samples: dict[str, deque[tuple[int, float, int]]] = {}
        self.waving: dict[str, bool] = {}

    @staticmethod
    def _hands(obs: Obs) -> list[tuple[str, float]]:
        payload = obs.payload
        if isinstance(payload, Persons) and payload.persons:
            kps = payload.persons[0].keypoints
            return [(side, kps[i].x) for side, i in (("left", LEFT_WRIST), ("right", RIGHT_WRIST))
                    if kps[i].visibility >= VISIBLE]
        if isinstance(payload, Hands):
            return [(h.handedness, h.landmarks[HAND_WRIST].x) for h in payload.hands]
        return []

    def observe(self, obs: Obs) -> list[Trig]:
        p = self.params
        out = []
        for side, x in self._hands(obs):
            buf = self.samples.setdefault(side, deque())
            buf.append((obs.t_ns, x, obs.seq))
            while buf and obs.t_ns - buf[0][0] > p.window:
                buf.popleft()
            xs = [s[1] for s in buf]
            if len(xs) < 4 or max(xs) - min(xs) < 2 * p.min_amplitude:
                self.waving[side] = False
                continue
            turns = self._turns(list(buf))
            span_s = (buf[-1][0] - buf[0][0]) / 1e9
            hz = len(turns) / 2 / span_s if span_s > 0 else 0.0
            waving = len(turns) >= 3 and p.min_hz <= hz <= p.max_hz
            if waving and not self.waving.get(side) and self.cooled_down(turns[0][0]):
                onset = buf[0][0]
                ev = obs_evidence(obs, hand=side, hz=round(hz, 2),
                                  amplitude=round((max(xs) - min(xs)) / 2, 4),
                                  direction_changes=len(turns))
                first = Evidence(kind=obs.kind, component=obs.component, seq=buf[0][2],
                                 t_ns=onset, values={"hand": side})
                out.append(self.make_trig(obs, onset, obs.t_ns, min(1.0, hz / p.max_hz),
                                          [first, ev]))
            self.waving[side] = waving
        return out

    def _turns(self, buf: list[tuple[int, float, int]]) -> list[tuple[int, float]]:
        """Direction changes with hysteresis ``min_amplitude`` (a zig-zag filter)."""
        amplitude = self.params.min_amplitude
        turns: list[tuple[int, float]] = []
        direction = 0
        extreme_t, extreme_x = buf[0][0], buf[0][1]
        for t, x, _ in buf[1:]:
            if direction >= 0 and x > extreme_x or direction <= 0 and x < extreme_x:
                if direction == 0 and abs(x - buf[0][1]) >= amplitude:
                    direction = 1 if x > extreme_x else -1
                extreme_t, extreme_x = t, x
            elif abs(x - extreme_x) >= amplitude:
                if direction != 0:
                    turns.append((extreme_t, extreme_x))
                direction = 1 if x > extreme_x else -1
                extreme_t, extreme_x = t, x
        return turns


class GestureHold(Rule):
    """A named gesture (``gesture = "thumbs_up"``) shown by any hand (or ``hand = "left" |
    "right"``) with score >= ``min_score`` (0.5) for ``hold``; ``t_event`` is its first frame."""

    class Params(RuleParams, frozen=True, kw_only=True):
        gesture: HeldGesture
        hand: Handedness | None = None
        min_score: Unit = 0.5

    kind: ClassVar[str] = "gesture_hold"
    inputs = ("gesture",)
    params: Params

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self.held = Held(spec.hold_ns)

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs.payload, Hands):
            return []
        p = self.params
        hits = [h for h in obs.payload.hands if h.gesture == p.gesture
                and h.score >= p.min_score and (p.hand is None or h.handedness == p.hand)]
        score = max((h.score for h in hits), default=0.0)
        ev = obs_evidence(obs, gesture=p.gesture, hands=[h.handedness for h in hits],
                          score=score)
        onset = self.held.update(bool(hits), obs.t_ns, ev)
        if onset is None or not self.cooled_down(onset):
            return []
        return [self.make_trig(obs, onset, obs.t_ns, score, [self.held.onset_evidence or ev, ev])]


# ---------------------------------------------------------------------------- speech


def _norm(word: str) -> str:
    return re.sub(r"[^a-z0-9']+", "", word.lower())


class SpeechPhrase(Rule):
    """A phrase (``phrase = "start recording"``, case and punctuation ignored) in the final
    words of speech segments, possibly across two segments; timed by the words: ``t_event``
    is the first word's start, the confirmation the last word's end."""

    class Params(RuleParams, frozen=True, kw_only=True):
        phrase: Annotated[str, Meta(min_length=1, max_length=200)]

        def __post_init__(self) -> None:
            if not [w for w in self.phrase.split() if _norm(w)]:
                raise ValueError("phrase must hold at least one word")

    kind: ClassVar[str] = "speech_phrase"
    inputs = ("speech",)
    params: Params

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self.phrase = [_norm(w) for w in self.params.phrase.split() if _norm(w)]
        self.recent: deque[tuple[str, Word, Obs]] = deque(maxlen=len(self.phrase))

    def observe(self, obs: Obs) -> list[Trig]:
        if not isinstance(obs.payload, SpeechSegment) or not obs.payload.final:
            return []
        out = []
        for word in obs.payload.words:
            w = _norm(word.word)
            if not w:
                continue
            self.recent.append((w, word, obs))
            if [r[0] for r in self.recent] == self.phrase:
                first, last = self.recent[0][1], self.recent[-1][1]
                if self.cooled_down(first.t_ns):
                    evidence = [obs_evidence(o, word=wd.word, word_t_ns=wd.t_ns,
                                             probability=wd.probability)
                                for _, wd, o in self.recent]
                    prob = min(r[1].probability for r in self.recent)
                    out.append(self.make_trig(obs, first.t_ns, last.t_end_ns, prob, evidence))
                self.recent.clear()
        return out


# ---------------------------------------------------------------------------- quality gate


class QualityGate(Rule):
    """Not a trigger: while it is defined, the other rules fire only while the image-quality
    gate is open (the quality extractor's ``gate``, or each of ``min_blur`` / ``min_brightness``
    / ``max_brightness`` given here, on its own). A rule can opt out with ``gated = false``."""

    class Params(RuleParams, frozen=True, kw_only=True):
        #: Variance of the Laplacian of the 320-px gray proxy (see the quality extractor).
        min_blur: Annotated[float, Meta(ge=0.0, le=1e9)] | None = None
        min_brightness: Unit | None = None
        max_brightness: Unit | None = None

    kind: ClassVar[str] = "quality_gate"
    inputs = ("quality",)
    params: Params

    def new_gate(self) -> GateState:
        p = self.params
        return GateState(min_blur=p.min_blur, min_brightness=p.min_brightness,
                         max_brightness=p.max_brightness)

    def observe(self, obs: Obs) -> list[Trig]:
        return []


BUILTIN_KINDS: dict[str, type[Rule]] = {cls.kind: cls for cls in (
    ExpressionSpike, FaceAppears, FaceLeaves, HeadTurn, HandWave, GestureHold, SpeechPhrase,
    QualityGate)}
