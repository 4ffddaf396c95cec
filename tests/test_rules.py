"""Rule kinds, the quality gate, the future guard and custom kinds, on synthetic timelines."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest

from momentbus.fusion.aligner import Aligner
from momentbus.fusion.rules import (RulesError, build_rules, load_rules, parse_rules,
                                    rule_kinds)

from builders import (a_face, a_hand, face_obs, gesture_obs, keypoints, pose_obs, quality_obs,
                      speech_obs)

MS = 1_000_000
S = 1_000_000_000


def face(seq, t, faces, group="face", comp="extractor:face#1"):
    return face_obs(seq, t, faces, group=group, component=comp)


def one_face(track=1, yaw=0.0, happy=0.05, area=0.1):
    return a_face(track, yaw=yaw, happy=happy, area=area)


def rules_of(toml: str):
    return build_rules(parse_rules(textwrap.dedent(toml)))


def feed(rules, observations):
    """Through the real aligner, with every member's watermark riding on its obs."""
    al = Aligner(rules, None)
    trigs = []
    for i, obs in enumerate(observations):
        trigs += al.on_obs(obs, i).trigs
    trigs += al.finish(len(observations)).trigs
    return trigs


def timeline(fps, seconds, fn, start=0):
    n = int(seconds * fps)
    return [fn(i, start + round(i * S / fps)) for i in range(n)]


def test_face_appears_fires_at_the_first_frame_with_a_face_not_at_stream_start():
    rules = rules_of('''
        [[rule]]
        name = "in"
        kind = "face_appears"
        hold = "0.3s"
        [[rule]]
        name = "out"
        kind = "face_leaves"
        hold = "0.3s"
    ''')
    # face 0-2 s, none 2-4 s, face 4-6 s (10 fps)
    obs = timeline(10, 6, lambda i, t: face(i, t, [one_face()] if not 2 * S <= t < 4 * S else []))
    trigs = feed(rules, obs)
    assert [(t.rule, t.t_event_ns) for t in trigs] == [("out", 2 * S), ("in", 4 * S)]


def test_presence_ignores_a_one_frame_dropout():
    rules = rules_of('[[rule]]\nname = "out"\nkind = "face_leaves"\nhold = "0.3s"\n')
    obs = timeline(10, 4, lambda i, t: face(i, t, [] if i == 15 else [one_face()]))
    assert feed(rules, obs) == []


def test_head_turn_uses_smoothed_velocity_not_frame_jitter():
    rules = rules_of('[[rule]]\nname = "turn"\nkind = "head_turn"\n')
    # +-12 deg frame-to-frame jitter: raw differences are 240 deg/s at 10 fps
    jitter = timeline(10, 4, lambda i, t: face(i, t, [one_face(yaw=12.0 * (-1) ** i)]))
    assert feed(rules, jitter) == []

    def turn(i, t):  # still for 2 s, then 0 -> 70 deg in 0.7 s, then still
        yaw = 0.0 if t < 2 * S else min(70.0, 100.0 * (t - 2 * S) / S)
        return face(i, t, [one_face(yaw=yaw)])

    trigs = feed(rules_of('[[rule]]\nname = "turn"\nkind = "head_turn"\n'),
                 timeline(10, 4, turn))
    assert len(trigs) == 1
    assert 2 * S <= trigs[0].t_event_ns <= 2.3 * S


def pose(i, t, x):
    return pose_obs(i, t, keypoints(right_wrist=(x, 0.3, 0.9)))


@pytest.mark.parametrize("hz,fires", [(0.4, False), (2.5, True), (3.5, True)])
def test_hand_wave_fires_for_1_5_to_5_hz(hz, fires):
    rules = rules_of('[[rule]]\nname = "wave"\nkind = "hand_wave"\nhold = "0s"\n')
    obs = timeline(15, 4, lambda i, t: pose(i, t, 0.5 + 0.08 * math.sin(2 * math.pi * hz * t / S)),
                   start=0)
    trigs = feed(rules, obs)
    assert bool(trigs) == fires, [(t.t_event_ns, t.evidence[-1]) for t in trigs]


def test_hand_still_or_slowly_moving_is_no_wave():
    rules = rules_of('[[rule]]\nname = "wave"\nkind = "hand_wave"\nhold = "0s"\n')
    obs = timeline(15, 4, lambda i, t: pose(i, t, 0.3 + 0.1 * t / S))
    assert feed(rules, obs) == []


def gesture(i, t, label):
    return gesture_obs(i, t, [a_hand(label)] if label else [])


def test_gesture_hold_needs_the_hold_and_reports_the_onset():
    rules = rules_of('[[rule]]\nname = "up"\nkind = "gesture_hold"\ngesture = "thumbs_up"\n'
                     'hold = "0.5s"\n')
    short = timeline(10, 3, lambda i, t: gesture(i, t, "thumbs_up" if 10 <= i < 13 else "fist"))
    assert feed(rules, short) == []
    rules = rules_of('[[rule]]\nname = "up"\nkind = "gesture_hold"\ngesture = "thumbs_up"\n'
                     'hold = "0.5s"\n')
    held = timeline(10, 3, lambda i, t: gesture(i, t, "thumbs_up" if i >= 10 else None))
    trigs = feed(rules, held)
    assert [t.t_event_ns for t in trigs] == [1 * S]


def speech(seq, words):
    return speech_obs(seq, words, word_ns=300 * MS)


def test_speech_phrase_across_segments_is_timed_by_its_words():
    rules = rules_of('[[rule]]\nname = "rec"\nkind = "speech_phrase"\nphrase = "Start recording"\n')
    obs = [speech(0, [("Okay,", 1 * S), ("please", 2 * S), ("start", 3 * S)]),
           speech(1, [("Recording!", 4 * S), ("now", 5 * S)])]
    trigs = feed(rules, obs)
    assert len(trigs) == 1
    assert trigs[0].t_event_ns == 3 * S
    assert trigs[0].t_end_ns == 4 * S + 300 * MS + 3 * S  # last word's end + post_roll
    assert [e.values["word"] for e in trigs[0].evidence] == ["start", "Recording!"]


def quality(i, t, gate):
    return quality_obs(i, t, gate=gate)


SMILE_AND_GATE = '''
    [[rule]]
    name = "smile"
    kind = "expression_spike"
    [[rule]]
    name = "usable"
    kind = "quality_gate"
'''


def smile_timeline(gate_open):
    obs = []
    for i in range(80):
        t = i * 100 * MS
        obs.append(face(i, t, [one_face(happy=0.9 if t >= 5 * S else 0.05)]))
        obs.append(quality(i, t, gate_open))
    return obs


def test_quality_gate_blocks_other_rules_while_closed():
    assert feed(rules_of(SMILE_AND_GATE), smile_timeline(True))
    assert feed(rules_of(SMILE_AND_GATE), smile_timeline(False)) == []
    opted_out = SMILE_AND_GATE.replace('kind = "expression_spike"',
                                       'kind = "expression_spike"\n    gated = false')
    assert feed(rules_of(opted_out), smile_timeline(False))


def test_future_timestamp_is_rejected_and_does_not_make_others_late():
    rules = rules_of('[[rule]]\nname = "in"\nkind = "face_appears"\nhold = "0s"\n')
    al = Aligner(rules, ["face", "quality"])
    al.on_obs(face(0, 1 * S, []), 0)
    al.on_obs(quality(0, 1 * S, True), 0)
    bad = al.on_obs(quality(1, 10_000 * S, True), 1)  # a clock 3 hours ahead
    assert bad.rejected and bad.rejected[0]["ahead_s"] > 9000
    assert al.on_watermark("extractor:quality#1", "quality", 10_000 * S, 2).rejected
    out = al.on_obs(face(1, 2 * S, [one_face()]), 3)
    assert not out.late
    late = al.on_obs(quality(2, 2 * S, True), 4)
    assert not late.late and not late.rejected


def test_rules_check_names_the_line_of_a_bad_parameter(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "a"\nkind = "face_appears"\n\n'
                    '[[rule]]\nname = "b"\nkind = "gesture_hold"\ngesture = "jazz_hands"\n')
    with pytest.raises(RulesError, match=r"rules.toml:6: rule 'b': gesture must be one of"):
        load_rules(path)


def test_default_rules_file_loads_and_every_kind_is_built_in():
    specs = load_rules()
    assert {s.kind for s in specs} == set(rule_kinds())
    assert len(build_rules(specs)) == len(specs)


def test_rules_for_extractors_that_do_not_run_are_left_out():
    disabled = []
    rules = build_rules(load_rules(), ["face", "quality"], disabled)
    assert {r.name for r in rules} == {"smile", "face_in", "face_out", "head_turn", "sharp_only"}
    assert dict(disabled) == {"wave": ["pose"], "thumbs_up": ["gesture"],
                              "start_recording": ["speech"]}
    assert all(r.gate is not None for r in rules if r.name != "sharp_only")


CUSTOM = '''
from momentbus.fusion.rules import Rule


class Always(Rule):
    kind = "always"
    inputs = ("face",)

    def observe(self, obs):
        return [self.make_trig(obs, obs.t_ns, obs.t_ns, 1.0, [])] if obs.seq == 0 else []
'''


def test_custom_rule_kind_through_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text(CUSTOM)
    dist = tmp_path / "my_rules-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rules\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[momentbus.rules]\nalways = my_rules:Always\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "always" in rule_kinds()
    rules = rules_of('[[rule]]\nname = "x"\nkind = "always"\n')
    trigs = feed(rules, [face(0, 5 * S, [])])
    assert [t.rule_kind for t in trigs] == ["always"]


def test_a_broken_custom_kind_is_an_error_not_silence(tmp_path, monkeypatch):
    dist = tmp_path / "broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[momentbus.rules]\nbroken = no_such_module:Rule\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RulesError, match="broken.*failed to load"):
        rule_kinds()
    sys.modules.pop("no_such_module", None)
