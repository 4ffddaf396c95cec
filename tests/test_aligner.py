"""The watermark aligner and the expression-spike rule, on synthetic timelines (no I/O, no clocks).

Times: ``t`` arguments are event time (source clock, ns); ``now`` arguments are the injected wall
clock, which only drives liveness (idle / join timeouts).
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from momentbus.fusion.aligner import NEG_INF, Aligner, Output
from momentbus.fusion.rules import ExpressionSpike, Rule, RuleSpec
from momentbus.ipc.schema import Evidence, Obs, Trig
from momentbus.ipc.timebase import pts_to_ns

from builders import a_face, face_obs, quality_obs

S = 1_000_000_000
MS = 1_000_000
SRC = "file0"


# ---------------------------------------------------------------------------- helpers


class Recorder(Rule):
    """Records what the aligner releases to it; optionally fires one TRIG per observation."""

    kind = "record"

    def __init__(self, name: str, inputs: tuple[str, ...], fire: bool = False) -> None:
        super().__init__(RuleSpec(name=name, kind="record"))
        self.inputs = tuple(inputs)
        self.seen: list[Obs] = []
        self.fire = fire
        self.eof_calls = 0

    def on_obs(self, obs: Obs) -> list[Trig]:
        self.seen.append(obs)
        if self.fire:
            return [self.make_trig(obs, obs.t_ns, obs.t_ns, 1.0,
                                   [Evidence(kind=obs.kind, seq=obs.seq, t_ns=obs.t_ns)])]
        return []

    def on_eof(self) -> list[Trig]:
        self.eof_calls += 1
        return []

    def times(self) -> list[int]:
        return [o.t_ns for o in self.seen]

    def keys(self) -> list[tuple[int, str, str, int]]:
        return [key(o) for o in self.seen]


def key(obs: Obs) -> tuple[int, str, str, int]:
    return (obs.t_ns, obs.group, obs.component, obs.seq)


def face(component: str, seq: int, t: int, wm: int | None = None,
         happy: float | dict[int, float] | None = None) -> Obs:
    """A face observation; ``happy`` is one score (track 1) or ``{track_id: score}``."""
    if happy is None:
        faces = []
    else:
        tracks = happy if isinstance(happy, dict) else {1: happy}
        faces = [a_face(tid, happy=h, score=0.95) for tid, h in sorted(tracks.items())]
    return face_obs(seq, t, faces, component=component, wm=wm, source_id=SRC)


def quality(component: str, seq: int, t: int, wm: int | None = None) -> Obs:
    return quality_obs(seq, t, blur=120.0, component=component, wm=wm, source_id=SRC)


def events(out: Output, name: str) -> list[dict[str, Any]]:
    return [m for m in out.members if m["event"] == name]


def spike(spec_overrides: dict[str, Any] | None = None, **params: Any) -> ExpressionSpike:
    spec = RuleSpec(name="smile", kind="expression_spike", params={"emotion": "happy", **params})
    for k, v in (spec_overrides or {}).items():
        setattr(spec, k, v)
    return ExpressionSpike(spec)


def frame_t(k: int, fps: int = 30) -> int:
    return pts_to_ns(k, Fraction(1, fps))


def run_timeline(rule: Rule, happy_at, duration_s: float, fps: int = 30) -> list[Trig]:
    """Feed one face member's per-frame happy scores through an aligner; return every TRIG."""
    al = Aligner([rule], ["face"])
    al.on_join("extractor:face#1", "face", now_ns=0)
    trigs: list[Trig] = []
    for k in range(int(duration_s * fps)):
        t = frame_t(k, fps)
        score = happy_at(t)
        obs = face("extractor:face#1", k, t, happy=score)
        out = al.on_obs(obs, now_ns=k * MS)
        assert not out.late
        trigs += out.trigs
    out = al.on_eof("extractor:face#1", "face", now_ns=10 * S)
    trigs += out.trigs
    al.on_source_eof(now_ns=10 * S)
    trigs += al.finish(now_ns=10 * S).trigs
    return trigs


# ---------------------------------------------------------------------------- watermarks


def test_watermark_never_regresses() -> None:
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"])
    al.on_join("extractor:face#1", "face", 0)
    al.on_join("extractor:quality#1", "quality", 0)

    al.on_watermark("extractor:quality#1", "quality", 500, 1)
    assert al.group_watermark("quality") == 500

    out = al.on_watermark("extractor:quality#1", "quality", 200, 2)
    assert out == Output()
    assert al.group_watermark("quality") == 500

    # An observation that carries an older watermark does not pull it back either.
    al.on_obs(quality("extractor:quality#1", 0, 600, wm=100), 3)
    assert al.group_watermark("quality") == 500

    # And what was promised stays promised: an observation at/below it is late.
    out = al.on_obs(quality("extractor:quality#1", 1, 450), 4)
    assert [(x["member"], x["t_ns"]) for x in out.late] == [("extractor:quality#1", 450)]

    # Complete up to min(face, quality) = 500: the face obs at 550 and quality's at 600 wait.
    al.on_obs(face("extractor:face#1", 0, 550), 5)
    al.on_watermark("extractor:face#1", "face", 700, 6)
    assert al.complete_until(rec) == 500
    assert rec.times() == []
    al.on_watermark("extractor:quality#1", "quality", 600, 7)
    assert rec.times() == [550, 600]
    al.on_watermark("extractor:face#1", "face", 650, 8)  # lower than 700: ignored
    assert al.group_watermark("face") == 700
    assert al.complete_until(rec) == 600


def test_nothing_final_before_every_input_group_passed_it() -> None:
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"])
    al.on_join("extractor:face#1", "face", 0)
    al.on_join("extractor:quality#1", "quality", 0)

    al.on_obs(face("extractor:face#1", 0, 100), now_ns=1_000 * MS)
    assert rec.seen == []
    al.on_watermark("extractor:face#1", "face", 10_000, 1_001 * MS)
    assert rec.seen == []
    al.on_watermark("extractor:quality#1", "quality", 50, 1_002 * MS)
    assert rec.seen == []
    al.on_obs(quality("extractor:quality#1", 0, 99), 1_003 * MS)
    # complete up to 99: the quality obs at 99 is final, the face obs at 100 is not
    assert al.complete_until(rec) == 99
    assert rec.keys() == [(99, "quality", "extractor:quality#1", 0)]

    out = al.on_watermark("extractor:quality#1", "quality", 100, 1_250 * MS)
    assert rec.keys() == [(99, "quality", "extractor:quality#1", 0),
                          (100, "face", "extractor:face#1", 0)]
    # The face obs waited for quality: a sync delay from its arrival to its release.
    delays = [d for d in out.sync_delays if d["group"] == "face"]
    assert delays == [{"member": "extractor:face#1", "group": "face", "seq": 0, "t_ns": 100,
                       "delay_ms": 250.0, "waiting_for": ["quality"]}]


def test_obs_is_released_once_watermarks_reach_it_not_before() -> None:
    """The boundary: a watermark ``t`` means *at or before t*; ``t - 1`` is not enough."""
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec])
    al.on_join("f", "face", 0)
    al.on_join("q", "quality", 0)
    al.on_obs(face("f", 0, 1_000), 0)
    al.on_watermark("q", "quality", 999, 0)
    assert rec.seen == []
    al.on_watermark("q", "quality", 1_000, 0)
    assert rec.times() == [1_000]


def test_rule_does_not_wait_for_groups_it_does_not_read() -> None:
    face_only = Recorder("face_only", ("face",))
    both = Recorder("both", ("face", "quality"))
    smile = spike()
    al = Aligner([face_only, both, smile], ["face", "quality"])
    al.on_join("extractor:face#1", "face", 0)
    al.on_join("extractor:quality#1", "quality", 0)  # joined, then silent

    trigs: list[Trig] = []
    for k in range(10 * 30):
        t = frame_t(k)
        out = al.on_obs(face("extractor:face#1", k, t, happy=0.05 if t < 6 * S else 0.9),
                        now_ns=k * MS)
        trigs += out.trigs
        assert face_only.times()[-1] == t, "a face-only rule must get each face obs at once"
    assert both.seen == []
    assert len(trigs) == 1 and trigs[0].missing == []
    assert 6 * S <= trigs[0].t_event_ns <= 6.3 * S


# ---------------------------------------------------------------------------- arrival order


MEMBERS = {"extractor:face#1": "face", "extractor:face#2": "face",
           "extractor:quality#1": "quality"}


def member_streams(n_frames: int = 100, step_ns: int = 50 * MS,
                   gaps: dict[str, list[int]] | None = None) -> dict[str, list[tuple]]:
    """In-order message streams of 3 members in 2 groups, ending with their EOF.

    Face frames alternate between two face members (face#2 reports its watermark one frame
    behind); quality looks at every other frame and reports a skipped frame with a bare
    watermark. Two face tracks smile at 3 s, so the expression rule's cooldown makes the
    outcome depend on the event-time order of the observations.
    """
    streams: dict[str, list[tuple]] = {m: [] for m in MEMBERS}
    times = [(k + 1) * step_ns for k in range(n_frames)]
    if gaps is not None:  # per-member increasing times (property test)
        times = []
    prev = {m: None for m in MEMBERS}
    for k in range(n_frames):
        t = times[k] if times else None
        for comp in ("extractor:face#1", "extractor:face#2"):
            if (k % 2 == 0) != (comp == "extractor:face#1"):
                continue
            if gaps is not None:
                t = (prev[comp] or 0) + gaps[comp][k // 2]
            happy = {1: 0.05 if t < 3 * S else 0.9, 2: 0.1 if t < 3 * S else 0.95}
            wm = t if comp == "extractor:face#1" else (prev[comp] if prev[comp] is not None
                                                       else NEG_INF)
            streams[comp].append(("obs", face(comp, k, t, wm=wm, happy=happy)))
            prev[comp] = t
        if k % 2 == 0:
            comp = "extractor:quality#1"
            if gaps is not None:
                t = (prev[comp] or 0) + gaps[comp][k // 2]
            if k % 10 == 4:
                streams[comp].append(("wm", comp, "quality", t))  # skipped frame
            else:
                streams[comp].append(("obs", quality(comp, k, t)))
            prev[comp] = t
    for comp, group in MEMBERS.items():
        streams[comp].append(("eof", comp, group))
    return streams


def run_interleaving(streams: dict[str, list[tuple]], schedule: list[str]) -> dict[str, Any]:
    """Feed the streams in ``schedule`` order (the k-th mention of a member is its k-th message)."""
    both = Recorder("both", ("face", "quality"))
    face_only = Recorder("face_only", ("face",))
    smile = spike()
    al = Aligner([both, face_only, smile], ["face", "quality"])
    out = Output()
    for comp, group in MEMBERS.items():  # every Hello first: members are known before data
        out.extend(al.on_join(comp, group, 0))
    cursor = {m: 0 for m in streams}
    for i, comp in enumerate(schedule, 1):
        msg = streams[comp][cursor[comp]]
        cursor[comp] += 1
        now = i * MS
        if msg[0] == "obs":
            out.extend(al.on_obs(msg[1], now))
        elif msg[0] == "wm":
            out.extend(al.on_watermark(msg[1], msg[2], msg[3], now))
        else:
            out.extend(al.on_eof(msg[1], msg[2], now))
        out.extend(al.on_tick(now))
    assert all(cursor[m] == len(streams[m]) for m in streams), "schedule must consume every stream"
    out.extend(al.on_source_eof(len(schedule) * MS + 1))
    assert al.done()
    out.extend(al.finish(len(schedule) * MS + 2))
    return {"both": both.keys(), "face_only": face_only.keys(), "trigs": out.trigs,
            "late": out.late}


def random_schedule(streams: dict[str, list[tuple]], rng: random.Random) -> list[str]:
    """A random interleaving that keeps each member's own order (its PUSH socket is FIFO)."""
    left = {m: len(s) for m, s in streams.items()}
    # vary the relative speeds too: some runs let one member run far ahead
    weights = {m: rng.choice([1, 1, 3, 20]) for m in streams}
    schedule = []
    while any(left.values()):
        members = [m for m in left if left[m]]
        m = rng.choices(members, [weights[x] for x in members])[0]
        schedule.append(m)
        left[m] -= 1
    return schedule


def all_keys(streams: dict[str, list[tuple]], groups: tuple[str, ...]) -> list[tuple]:
    return sorted(key(msg[1]) for s in streams.values() for msg in s
                  if msg[0] == "obs" and msg[1].group in groups)


def test_shuffled_arrival_orders_give_the_same_output() -> None:
    streams = member_streams()
    assert sum(1 for s in streams.values() for m in s if m[0] == "obs") >= 140
    schedules = [random_schedule(streams, random.Random(seed)) for seed in range(150)]
    # extremes: each member completely before the next, in every order
    order = list(MEMBERS)
    for perm in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        schedules.append([order[p] for p in perm for _ in streams[order[p]]])

    reference = run_interleaving(streams, schedules[0])
    assert reference["late"] == []
    assert reference["both"] == all_keys(streams, ("face", "quality"))
    assert reference["face_only"] == all_keys(streams, ("face",))
    assert len(reference["trigs"]) >= 1, "the timeline is built to fire the smile rule"
    assert 3 * S <= reference["trigs"][0].t_event_ns <= 3.3 * S

    for i, schedule in enumerate(schedules[1:], 1):
        result = run_interleaving(streams, schedule)
        assert result["late"] == [], f"interleaving #{i}: nothing is late with FIFO members"
        assert result["both"] == reference["both"], f"interleaving #{i}: release order differs"
        assert result["face_only"] == reference["face_only"], f"interleaving #{i}"
        assert result["trigs"] == reference["trigs"], f"interleaving #{i}: TRIGs differ"


@st.composite
def streams_and_schedule(draw: st.DrawFn) -> tuple[dict[str, list[tuple]], list[str]]:
    n_frames = draw(st.integers(min_value=2, max_value=40))
    gap = st.integers(min_value=1, max_value=400 * MS)
    gaps = {m: draw(st.lists(gap, min_size=n_frames, max_size=n_frames)) for m in MEMBERS}
    streams = member_streams(n_frames=n_frames, gaps=gaps)
    template = [m for m, s in streams.items() for _ in s]
    schedule = draw(st.permutations(template))
    return streams, schedule


@settings(max_examples=60, deadline=None)
@given(case=streams_and_schedule(), seed=st.integers(0, 2**32 - 1))
def test_shuffled_arrival_orders_give_the_same_output_property(
        case: tuple[dict[str, list[tuple]], list[str]], seed: int) -> None:
    streams, schedule = case
    in_order = [m for m in MEMBERS for _ in streams[m]]  # member by member
    a = run_interleaving(streams, schedule)
    b = run_interleaving(streams, in_order)
    c = run_interleaving(streams, random_schedule(streams, random.Random(seed)))
    assert a["late"] == b["late"] == c["late"] == []
    assert a["both"] == b["both"] == c["both"] == all_keys(streams, ("face", "quality"))
    assert a["face_only"] == b["face_only"] == c["face_only"] == all_keys(streams, ("face",))
    assert a["trigs"] == b["trigs"] == c["trigs"]


# ---------------------------------------------------------------------------- late data


def test_late_observation_is_reported_not_reordered() -> None:
    ms = MS  # event times in ms, so behind_ms is meaningful
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"])
    al.on_join("extractor:face#1", "face", 0)
    al.on_join("extractor:quality#1", "quality", 0)
    al.on_obs(face("extractor:face#1", 0, 100 * ms), 1)
    al.on_obs(face("extractor:face#1", 1, 200 * ms), 2)
    al.on_watermark("extractor:quality#1", "quality", 300 * ms, 3)
    assert rec.times() == [100 * ms, 200 * ms]

    # A member that joins after 200 was released: its obs at 150 can no longer go in order.
    al.on_join("extractor:face#2", "face", 4)
    out = al.on_obs(face("extractor:face#2", 7, 150 * ms), 5)
    assert len(out.late) == 1
    late = out.late[0]
    assert (late["member"], late["group"], late["seq"], late["t_ns"]) == \
        ("extractor:face#2", "face", 7, 150 * ms)
    assert late["watermark_ns"] == 200 * ms and late["behind_ms"] == 50.0
    assert out.trigs == []

    # An obs at or below its own member's watermark is late too.
    out = al.on_obs(face("extractor:face#1", 2, 180 * ms), 6)
    assert [x["seq"] for x in out.late] == [2]
    out = al.on_obs(face("extractor:face#1", 3, 200 * ms), 7)
    assert [x["seq"] for x in out.late] == [3]
    assert rec.times() == [100 * ms, 200 * ms], "late observations never reach the rule"

    al.on_obs(face("extractor:face#1", 4, 250 * ms), 8)
    al.on_obs(face("extractor:face#2", 8, 260 * ms), 9)
    al.on_eof("extractor:quality#1", "quality", 10)
    assert rec.times() == [100 * ms, 200 * ms, 250 * ms]
    al.finish(11)
    assert rec.times() == [100 * ms, 200 * ms, 250 * ms, 260 * ms]
    assert al.late_count == 3
    assert rec.keys() == sorted(rec.keys())


def test_obs_of_an_ended_member_is_late() -> None:
    rec = Recorder("rec", ("face",))
    al = Aligner([rec])
    al.on_join("f", "face", 0)
    al.on_eof("f", "face", 1)
    out = al.on_obs(face("f", 0, 10_000), 2)
    assert len(out.late) == 1 and rec.seen == []


# ---------------------------------------------------------------------------- liveness


def test_idle_member_stops_holding_back_and_rejoins() -> None:
    idle = 2 * S
    rec = Recorder("rec", ("face",))
    al = Aligner([rec], ["face"], idle_timeout_ns=idle)
    al.on_join("extractor:face#1", "face", 0)
    al.on_join("extractor:face#2", "face", 0)

    al.on_obs(face("extractor:face#1", 0, 100), 100 * MS)
    assert rec.seen == []  # face#2 (silent) holds the group back
    assert al.on_tick(1 * S).members == []
    al.on_heartbeat("extractor:face#1", 2_500 * MS)
    assert al.on_tick(2 * S).members == []  # not over the timeout yet

    out = al.on_tick(2_600 * MS)
    assert [(m["event"], m["member"], m["group"]) for m in out.members] == \
        [("idle", "extractor:face#2", "face")]
    assert out.members[0]["silent_ms"] == 2600
    assert rec.times() == [100], "an absent member no longer holds the group back"
    assert al.on_tick(2_700 * MS).members == []  # reported once

    out = al.on_heartbeat("extractor:face#2", 3 * S)
    assert [(m["event"], m["member"]) for m in out.members] == [("rejoin", "extractor:face#2")]
    assert al.on_heartbeat("extractor:face#2", 3_100 * MS).members == []

    # Back, it holds the group's watermark again.
    al.on_obs(face("extractor:face#1", 1, 300), 3_200 * MS)
    assert rec.times() == [100]
    al.on_obs(face("extractor:face#2", 0, 350), 3_300 * MS)
    assert rec.times() == [100, 300]


def test_obs_from_an_absent_member_makes_it_rejoin() -> None:
    rec = Recorder("rec", ("face",))
    al = Aligner([rec], ["face"], idle_timeout_ns=S)
    al.on_join("a", "face", 0)
    al.on_join("b", "face", 0)
    al.on_heartbeat("a", 2 * S)
    assert [m["member"] for m in events(al.on_tick(2 * S), "idle")] == ["b"]
    out = al.on_obs(face("b", 0, 100), 2_100 * MS)
    assert [m["member"] for m in events(out, "rejoin")] == ["b"]


MISSING_BUG = (
    "BUG fusion/aligner.py _trig_fields (lines 295-296), used at line 279: it copies "
    "trig.__dataclass_fields__, which also lists the ClassVar KIND (and PAYLOAD_PARTS), so "
    "Trig(**fields) raises TypeError: every TRIG fired while an input group is absent or never "
    "joined crashes the fusion process instead of listing the missing group")


def _tick_or_bug(al: Aligner, now: int) -> Output:
    try:
        return al.on_tick(now)
    except TypeError as e:
        pytest.fail(f"{MISSING_BUG} ({e})")


def test_trig_fired_while_a_group_is_absent_lists_it_missing() -> None:
    rec = Recorder("rec", ("face", "quality"), fire=True)
    al = Aligner([rec], ["face", "quality"], idle_timeout_ns=S)
    al.on_join("f", "face", 0)
    al.on_join("q", "quality", 0)
    al.on_obs(face("f", 0, 100), 10 * MS)
    al.on_heartbeat("f", 1_500 * MS)
    out = _tick_or_bug(al, 1_500 * MS)
    assert [m["member"] for m in events(out, "idle")] == ["q"]
    assert [(t.t_event_ns, t.missing) for t in out.trigs] == [(100, ["quality"])]
    # With quality back, a TRIG lists nothing missing.
    al.on_heartbeat("q", 1_600 * MS)
    al.on_obs(face("f", 1, 200), 1_700 * MS)
    out = al.on_watermark("q", "quality", 250, 1_800 * MS)
    assert [(t.t_event_ns, t.missing) for t in out.trigs] == [(200, [])]


def test_rejoined_sole_member_is_not_treated_as_late() -> None:
    """A group's only member stalls past idle_timeout, then resumes: its new data counts.

    README, Fusion semantics: a silent group is absent "... it rejoins when it speaks again."
    """
    rec = Recorder("rec", ("face",))
    al = Aligner([rec], ["face"], idle_timeout_ns=2 * S)
    al.on_join("extractor:face#1", "face", 0)
    al.on_obs(face("extractor:face#1", 0, 1 * S), 10 * MS)
    al.on_obs(face("extractor:face#1", 1, 2 * S), 20 * MS)
    assert rec.times() == [1 * S, 2 * S]
    assert events(al.on_tick(3 * S), "idle")  # a 3 s stall (slow model, swap, ...)
    assert events(al.on_heartbeat("extractor:face#1", 4 * S), "rejoin")
    out = al.on_obs(face("extractor:face#1", 2, 3 * S), 4_100 * MS)
    assert out.late == [], (
        "BUG fusion/aligner.py Aligner._release (line 282): when every group a rule reads is "
        "absent, complete_until() is POS_INF (group_watermark line 120) and released[rule] is "
        "set to POS_INF; after the member rejoins, on_obs (line 165) finds t_ns <= consumed "
        "(= 2**62) for every new observation, so all its data is reported late for the rest "
        f"of the run. late={out.late}")
    al.finish(5 * S)
    assert rec.times() == [1 * S, 2 * S, 3 * S]


def test_expected_group_never_joined_blocks_until_join_timeout() -> None:
    start = 5 * S
    join_timeout = 10 * S
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"], idle_timeout_ns=1000 * S,
                 join_timeout_ns=join_timeout, start_ns=start)
    assert al.group_watermark("quality") == NEG_INF
    al.on_join("f", "face", start)
    al.on_obs(face("f", 0, 100), start + 1 * S)
    al.on_watermark("f", "face", 10 * S, start + 2 * S)
    assert al.on_tick(start + join_timeout).members == []
    assert rec.seen == []

    out = al.on_tick(start + join_timeout + 1)
    assert out.members == [{"event": "never_joined", "group": "quality"}]
    assert rec.times() == [100]
    assert al.on_tick(start + join_timeout + 2).members == []  # reported once


def test_trig_fired_after_join_timeout_lists_the_never_joined_group_missing() -> None:
    rec = Recorder("rec", ("face", "quality"), fire=True)
    al = Aligner([rec], ["face", "quality"], idle_timeout_ns=1000 * S, join_timeout_ns=S)
    al.on_join("f", "face", 0)
    al.on_obs(face("f", 0, 100), 1)
    assert rec.seen == []
    out = _tick_or_bug(al, 2 * S)
    assert [(t.t_event_ns, t.missing) for t in out.trigs] == [(100, ["quality"])]


def test_expected_group_not_read_by_any_rule_blocks_nothing() -> None:
    rec = Recorder("rec", ("face",))
    al = Aligner([rec], ["face", "quality", "audio"])
    al.on_join("f", "face", 0)
    al.on_obs(face("f", 0, 100), 1)
    assert rec.times() == [100]


def test_late_join_of_an_expected_group_holds_from_then_on() -> None:
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"], join_timeout_ns=S, idle_timeout_ns=100 * S)
    al.on_join("f", "face", 0)
    al.on_obs(face("f", 0, 100), 1)
    al.on_tick(2 * S)
    assert rec.times() == [100]
    al.on_join("q", "quality", 3 * S)
    al.on_obs(face("f", 1, 200), 3 * S)
    assert rec.times() == [100]  # quality is here now: wait for it
    al.on_watermark("q", "quality", 200, 3 * S)
    assert rec.times() == [100, 200]


# ---------------------------------------------------------------------------- end of stream


def test_eof_releases_everything() -> None:
    both = Recorder("both", ("face", "quality"))
    al = Aligner([both], ["face", "quality"])
    al.on_join("f", "face", 0)
    al.on_join("q", "quality", 0)
    # Watermarks far behind (an extractor with lateness): nothing is final yet.
    al.on_obs(face("f", 0, 100, wm=NEG_INF + 1), 1)
    al.on_obs(face("f", 1, 300, wm=NEG_INF + 1), 2)
    al.on_obs(quality("q", 0, 200, wm=NEG_INF + 1), 3)
    al.on_obs(quality("q", 1, 300, wm=NEG_INF + 1), 4)
    assert both.seen == []
    al.on_eof("f", "face", 5)
    assert both.seen == []  # quality still holds it back
    out = al.on_eof("q", "quality", 6)
    assert both.keys() == [(100, "face", "f", 0), (200, "quality", "q", 0),
                           (300, "face", "f", 1), (300, "quality", "q", 1)]
    assert [(m["event"], m["member"]) for m in out.members] == [("end", "q")]
    assert {g: len(p) for g, p in al.pending.items()} == {"face": 0, "quality": 0}


def test_finish_releases_everything_and_flushes_rules() -> None:
    both = Recorder("both", ("face", "quality"))
    al = Aligner([both], ["face", "quality"])
    al.on_join("f", "face", 0)
    al.on_obs(face("f", 0, 100), 1)
    al.on_obs(face("f", 1, 200), 2)
    assert both.seen == []  # quality never joined
    al.finish(3)
    assert both.times() == [100, 200]
    assert both.eof_calls == 1


def test_done_after_source_eof_and_member_eof() -> None:
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"])
    al.on_join("f", "face", 0)
    al.on_join("q", "quality", 0)
    assert not al.done()
    al.on_eof("f", "face", 1)
    assert not al.done()
    al.on_source_eof(2)
    assert not al.done(), "quality has not ended"
    al.on_eof("q", "quality", 3)
    assert al.done()

    # Source EOF after the members: done as soon as it arrives.
    al2 = Aligner([Recorder("rec", ("face",))], ["face"])
    al2.on_join("f", "face", 0)
    al2.on_eof("f", "face", 1)
    assert not al2.done()
    al2.on_source_eof(2)
    assert al2.done()


def test_done_counts_absent_members_as_finished() -> None:
    al = Aligner([Recorder("rec", ("face",))], ["face"], idle_timeout_ns=S)
    al.on_join("f", "face", 0)
    al.on_join("g", "face", 0)
    al.on_source_eof(1)
    al.on_eof("f", "face", 1)
    assert not al.done()
    al.on_tick(3 * S)
    assert al.done()


# ---------------------------------------------------------------------------- expression spike


def test_expression_spike_fires_once_at_the_onset() -> None:
    rule = spike()
    trigs = run_timeline(rule, lambda t: 0.05 if t < 6 * S else 0.9, duration_s=10)
    assert len(trigs) == 1, trigs
    trig = trigs[0]
    assert trig.rule == "smile" and trig.rule_kind == "expression_spike"
    assert trig.source_id == SRC
    assert 6 * S <= trig.t_event_ns <= 6.3 * S
    # t_event is a real observation time: the first frame where the condition held
    assert trig.t_event_ns in {frame_t(k) for k in range(300)}
    assert trig.evidence[0].t_ns == trig.t_event_ns
    confirm = trig.evidence[-1].t_ns
    assert 0.5 * S <= confirm - trig.t_event_ns < 0.6 * S  # hold 0.5 s, 30 fps
    assert trig.t_start_ns == trig.t_event_ns - rule.spec.pre_roll_ns
    assert trig.t_end_ns == confirm + rule.spec.post_roll_ns
    assert trig.score >= 0.3  # the rise over the baseline
    assert trig.evidence[0].values["recent"] >= 0.5
    assert trig.evidence[0].values["baseline"] < 0.2


def test_expression_spike_onset_is_where_the_smoothed_condition_starts() -> None:
    """Recompute the smoothed score by hand: t_event is the first frame with recent >= 0.5."""
    import math

    rule = spike()
    trigs = run_timeline(rule, lambda t: 0.05 if t < 6 * S else 0.9, duration_s=8)
    recent, prev_t, onset = 0.05, 0, None
    for k in range(1, 8 * 30):
        t = frame_t(k)
        recent += ((0.05 if t < 6 * S else 0.9) - recent) * (1 - math.exp(-(t - prev_t) / (S / 4)))
        prev_t = t
        if recent >= 0.5:
            onset = t
            break
    assert [t.t_event_ns for t in trigs] == [onset]


def test_expression_spike_cooldown_is_respected() -> None:
    def happy(t: int) -> float:
        if 6 * S <= t < 7 * S:
            return 0.9
        if 7.5 * S <= t < 9 * S:  # a second smile 1.5 s after the first: inside the 3 s cooldown
            return 0.9
        if 12 * S <= t < 14 * S:  # a third one well after it
            return 0.9
        return 0.05

    rule = spike()
    assert rule.spec.cooldown_ns == 3 * S
    trigs = run_timeline(rule, happy, duration_s=15)
    onsets = [t.t_event_ns for t in trigs]
    assert len(onsets) == 2, onsets
    assert 6 * S <= onsets[0] <= 6.3 * S
    assert 12 * S <= onsets[1] <= 12.3 * S
    assert onsets[1] - onsets[0] >= rule.spec.cooldown_ns


def test_expression_spike_a_held_smile_fires_once() -> None:
    trigs = run_timeline(spike(), lambda t: 0.05 if t < 6 * S else 0.95, duration_s=20)
    assert len(trigs) == 1


@pytest.mark.parametrize("first_frame_low", [False, True],
                         ids=["smiling-from-first-frame", "smiling-from-second-frame"])
def test_expression_spike_does_not_fire_during_warmup_burst(first_frame_low: bool) -> None:
    """A face that arrives laughing (1 s burst at the very start) has no baseline yet."""
    def happy(t: int) -> float:
        if first_frame_low and t == 0:
            return 0.05
        return 0.9 if t < 1 * S else 0.05

    trigs = run_timeline(spike(), happy, duration_s=6)
    assert trigs == []


def test_expression_spike_after_warmup_burst_still_fires_later() -> None:
    def happy(t: int) -> float:
        if t < 1 * S:
            return 0.9
        return 0.05 if t < 20 * S else 0.9

    trigs = run_timeline(spike(), happy, duration_s=24)
    assert len(trigs) == 1
    assert 20 * S <= trigs[0].t_event_ns <= 20.5 * S


def test_expression_spike_ignores_faces_without_a_score_or_track() -> None:
    """A face without expression scores (the model off) is skipped; a face without a track id
    or with a mistyped one cannot reach a rule (the schema rejects it: tests/test_schema.py)."""
    rule = spike()
    obs = face_obs(0, 0, [a_face(1, happy=None), a_face(2, happy=None)], component="f",
                   source_id=SRC)
    assert rule.on_obs(obs) == []
    assert rule.tracks == {}
    assert rule.on_obs(quality("q", 0, 0)) == []


# ---------------------------------------------------------------------------- nothing lost


def test_a_repeated_observation_is_a_duplicate_not_late() -> None:
    """A frame processed again (a restarted or rejoining member) repeats its seq and t_ns."""
    rec = Recorder("rec", ("face",))
    al = Aligner([rec], ["face"])
    al.on_join("extractor:face#1", "face", 0)
    al.on_obs(face("extractor:face#1", 5, 500), 1)
    out = al.on_obs(face("extractor:face#1", 5, 500), 2)  # the same frame, again
    assert out.late == [] and al.duplicate_count == 1
    out = al.on_obs(face("extractor:face#2", 5, 500), 3)  # another member of the group, again
    assert out.late == [] and al.duplicate_count == 2
    al.finish(4)
    assert rec.times() == [500], "the rule sees it once"


def test_on_a_file_a_silent_member_keeps_holding_its_group_until_it_speaks() -> None:
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"], idle_timeout_ns=2 * S)
    al.on_source(live=False, now_ns=0)
    al.on_join("f", "face", 0)
    al.on_join("q", "quality", 0)
    al.on_obs(face("f", 0, 0), 0)
    for i in range(1, 40):  # quality goes on for 4 s of event time while face is stopped
        al.on_obs(quality("q", i, i * 100 * MS), 4 * S + i * 100 * MS)
    out = al.on_tick(8 * S)  # face silent for 8 s of wall time, quality heard 0.1 s ago
    assert [(m["event"], m["holding"]) for m in out.members] == [("idle", True)]
    assert rec.times() == [0], "nothing past face's watermark is released"
    for i in range(1, 40):  # SIGCONT: face catches up
        out = al.on_obs(face("f", i, i * 100 * MS), 9 * S)
        assert out.late == []
    assert [m["event"] for m in al.on_tick(9 * S).members] == []
    assert al.late_count == 0
    assert rec.keys() == sorted(rec.keys())
    al.finish(10 * S)
    assert len(rec.times()) == 40 + 39, "every observation of both groups, once, in order"


def test_on_a_live_source_a_silent_member_goes_absent() -> None:
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"], idle_timeout_ns=2 * S)
    al.on_source(live=True, now_ns=0)
    al.on_join("f", "face", 0)
    al.on_join("q", "quality", 0)
    al.on_obs(quality("q", 0, 100 * MS), 0)
    al.on_heartbeat("q", 2 * S)
    out = al.on_tick(3 * S)
    assert [(m["event"], m["member"], m["holding"]) for m in out.members] == \
        [("idle", "f", False)]
    assert rec.times() == [100 * MS], "released without the absent group"


def test_a_lost_member_stops_holding_and_its_group_is_missing() -> None:
    rec = Recorder("rec", ("face", "quality"), fire=True)
    al = Aligner([rec], ["face", "quality"], idle_timeout_ns=2 * S)
    al.on_source(live=False, now_ns=0)
    al.on_join("f", "face", 0)
    al.on_join("q", "quality", 0)
    al.on_obs(face("f", 0, 100 * MS), 0)
    al.on_tick(5 * S)  # quality silent: idle, still holding
    assert rec.times() == []
    out = al.on_lost("q", "quality", 20 * S)
    assert [m["event"] for m in out.members] == ["lost"]
    assert rec.times() == [100 * MS]
    assert out.trigs and out.trigs[0].missing == ["quality"]
    al.on_source_eof(21 * S)
    al.on_eof("f", "face", 21 * S)
    assert al.done()


def test_on_a_file_a_member_silent_past_the_hold_timeout_counts_as_lost() -> None:
    """A member that said Hello and never came back cannot stall a file's job for good."""
    rec = Recorder("rec", ("face", "quality"))
    al = Aligner([rec], ["face", "quality"], idle_timeout_ns=2 * S, hold_timeout_ns=60 * S)
    al.on_source(live=False, now_ns=0)
    al.on_join("f", "face", 0)
    al.on_join("q", "quality", 0)
    al.on_obs(quality("q", 0, 100 * MS), 0)
    al.on_heartbeat("q", 59 * S)
    assert [m["event"] for m in al.on_tick(3 * S).members] == ["idle"]
    assert al.on_tick(59 * S).members == [] and rec.times() == []
    al.on_heartbeat("q", 61 * S)
    out = al.on_tick(61 * S)
    assert [(m["event"], m["member"]) for m in out.members] == [("lost", "f")]
    assert rec.times() == [100 * MS]


def test_face_tracks_are_the_groups_whichever_member_saw_the_frame() -> None:
    """Two processes of one face group each count their own tracks, and face#2 took no frame
    for 1.5 s (over the 1 s a track lasts unseen). Fusion tracks the group over both, in event
    time, so the rules see the ids one process would have given: the two faces keep one id each
    throughout."""
    from momentbus.ipc.payloads import Box

    left, right = Box(0.1, 0.2, 0.3, 0.6), Box(0.6, 0.2, 0.8, 0.6)

    def seen(component: str, seq: int, ids: tuple[int, int]) -> Obs:
        t = seq * 100 * MS
        faces = [a_face(ids[0], box=left, happy=0.1), a_face(ids[1], box=right, happy=0.1)]
        return face_obs(seq, t, faces, component=component, source_id=SRC)

    rec = Recorder("r", ("face",))
    al = Aligner([rec], ["face"])
    al.on_join("extractor:face#1", "face", 0)
    al.on_join("extractor:face#2", "face", 0)
    # face#1 numbers them 1, 2; face#2 (another process, with a face it saw and lost before)
    # numbers them 7, 8, then 9, 10 after its own 1.5 s without frames
    takes = ([("extractor:face#1", s, (1, 2)) for s in range(0, 30)]
             + [("extractor:face#2", s, (7, 8)) for s in range(30, 40, 2)]
             + [("extractor:face#1", s, (1, 2)) for s in range(31, 56, 2)]
             + [("extractor:face#1", s, (1, 2)) for s in range(56, 70, 2)]
             + [("extractor:face#2", s, (9, 10)) for s in range(57, 70, 2)])
    for component, seq, ids in takes:
        al.on_obs(seen(component, seq, ids), seq)
    al.finish(10**6)
    assert len(rec.seen) == len(takes)
    assert {(o.payload.faces[0].track_id, o.payload.faces[1].track_id) for o in rec.seen} \
        == {(1, 2)}
