"""Rule files are checked: every kind rejects an unknown key, a wrong type and an out-of-range
value, and the error names the file, the rule, its line, the key and the key's line."""

from __future__ import annotations

import pytest

from momentbus.fusion.aligner import Aligner
from momentbus.fusion.rules import RULE_KINDS, RulesError, build_rules, load_rules, parse_rules

from builders import a_face, face_obs, quality_obs
from helpers import run_momentbus

S = 1_000_000_000

#: Keys each kind needs to be valid at all (the rest take defaults).
REQUIRED = {"gesture_hold": 'gesture = "thumbs_up"\n', "speech_phrase": 'phrase = "go"\n'}
#: Per kind: (a key it takes, a value of the wrong type, a value out of its range).
BAD_VALUES = {
    "expression_spike": ("threshold", '"high"', "1.5"),
    "face_appears": ("min_area", '"big"', "-0.1"),
    "face_leaves": ("min_area", "true", "2.0"),
    "head_turn": ("min_speed", '"fast"', "0"),
    "hand_wave": ("min_amplitude", "[1]", "3.0"),
    "gesture_hold": ("min_score", '"sure"', "1.01"),
    "speech_phrase": ("phrase", "5", '""'),
    "quality_gate": ("min_brightness", '"dim"', "1.5"),
}


def rule_file(kind: str, extra: str = "") -> str:
    """A valid two-rule file; ``extra`` lines are added to the second rule (line 7 on)."""
    return ('[[rule]]\nname = "first"\nkind = "face_appears"\n\n'
            f'[[rule]]\nname = "second"\nkind = "{kind}"\n{REQUIRED.get(kind, "")}{extra}')


def with_value(kind: str, key: str, value: str) -> str:
    """The two-rule file with ``key = value`` in the second rule (replacing a required one)."""
    required = REQUIRED.get(kind, "")
    if required.startswith(f"{key} ="):
        return rule_file(kind).replace(required, "") + f"{key} = {value}\n"
    return rule_file(kind, f"{key} = {value}\n")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def test_every_built_in_kind_is_covered():
    assert set(BAD_VALUES) == set(RULE_KINDS)


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_an_unknown_key_is_rejected_naming_its_line(kind):
    text = rule_file(kind, "threshhold = 0.9\n")
    with pytest.raises(RulesError) as exc:
        parse_rules(text, "rules.toml")
    msg = str(exc.value)
    assert msg.startswith("rules.toml:6: rule 'second': unknown key 'threshhold'"), msg
    assert f"line {line_of(text, 'threshhold')}" in msg
    assert "hold, cooldown" in msg, "it lists what the rule takes"


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_a_wrong_type_is_rejected_naming_the_key_and_what_it_takes(kind):
    key, wrong, _ = BAD_VALUES[kind]
    text = with_value(kind, key, wrong)
    with pytest.raises(RulesError) as exc:
        parse_rules(text, "rules.toml")
    msg = str(exc.value)
    assert msg.startswith(f"rules.toml:6: rule 'second': {key} must be "), msg
    assert f"line {line_of(text, key + ' =')}" in msg


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_an_out_of_range_value_is_rejected_naming_the_range(kind):
    key, _, out_of_range = BAD_VALUES[kind]
    text = with_value(kind, key, out_of_range)
    with pytest.raises(RulesError) as exc:
        parse_rules(text, "rules.toml")
    msg = str(exc.value)
    assert msg.startswith(f"rules.toml:6: rule 'second': {key} must be "), msg
    assert any(word in msg for word in ("in [", "in (", ">", "<", "characters")), msg
    assert f"line {line_of(text, key + ' =')}" in msg


@pytest.mark.parametrize("key,value,expected", [
    ("hold", '"soon"', "a duration like '0.5s'"),
    ("cooldown", "-1", "a duration"),
    ("pre_roll", '"2h"', "a duration"),
    ("gated", '"yes"', "true or false"),
])
def test_common_keys_are_checked_too(key, value, expected):
    text = rule_file("face_leaves", f"{key} = {value}\n")
    with pytest.raises(RulesError, match=f"rule 'second': {key} must be {expected}"):
        parse_rules(text, "rules.toml")


def test_a_missing_required_key_says_what_it_takes():
    text = '[[rule]]\nname = "up"\nkind = "gesture_hold"\n'
    with pytest.raises(RulesError, match=r"rules.toml:2: rule 'up': gesture is required: one of "
                                         r"open_palm, v_sign, thumbs_up"):
        parse_rules(text, "rules.toml")


def test_a_cross_field_mistake_is_named():
    text = '[[rule]]\nname = "w"\nkind = "hand_wave"\nmin_hz = 6.0\nmax_hz = 3.0\n'
    with pytest.raises(RulesError, match="rule 'w': min_hz must be below max_hz"):
        parse_rules(text, "rules.toml")


def test_a_top_level_key_outside_any_rule_is_rejected():
    with pytest.raises(RulesError, match="unknown top-level key"):
        parse_rules('threshold = 1\n[[rule]]\nname = "a"\nkind = "face_appears"\n', "r.toml")


def test_valid_parameters_reach_the_rule_typed():
    [spec] = parse_rules('[[rule]]\nname = "s"\nkind = "expression_spike"\nthreshold = 0.7\n'
                         'emotion = "surprise"\nwarmup = "1500ms"\n')
    [rule] = build_rules([spec])
    assert rule.params.threshold == 0.7 and rule.params.emotion == "surprise"
    assert rule.params.warmup == 1_500_000_000 and rule.params.min_rise == 0.3


def test_rules_check_is_one_line_and_exit_2_for_a_typo(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "smile"\nkind = "expression_spike"\nthreshhold = 0.9\n'
                    'holdd = "3s"\n')
    proc = run_momentbus("rules", "check", str(path), timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "unknown keys 'threshhold' (line 4), 'holdd' (line 5)" in lines[0], "names every typo"


def test_rules_check_prints_each_rule_with_its_parameters(tmp_path):
    proc = run_momentbus("rules", "check", "--verbose", str(tmp_path / "missing.toml"), timeout=60)
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    default = load_rules()
    proc = run_momentbus("rules", "check", "--verbose", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for spec in default:
        assert f"ok  {spec.name} ({spec.kind})" in proc.stdout
    assert "threshold=0.5" in proc.stdout and "hold=0.5s" in proc.stdout


# ---------------------------------------------------------------------------- the quality gate


def gated_smiles(gate_toml: str, reading) -> list:
    """A smile at 5 s under a gate rule, every quality reading set by ``reading(t)``."""
    rules = build_rules(parse_rules('[[rule]]\nname = "smile"\nkind = "expression_spike"\n'
                                    f'[[rule]]\nname = "g"\nkind = "quality_gate"\n{gate_toml}'))
    al = Aligner(rules, None)
    trigs = []
    for i in range(80):
        t = i * 100_000_000
        trigs += al.on_obs(face_obs(i, t, [a_face(happy=0.9 if t >= 5 * S else 0.05)]), i).trigs
        trigs += al.on_obs(quality_obs(i, t, **reading(t)), i).trigs
    return trigs + al.finish(80).trigs


@pytest.mark.parametrize("gate_toml,closed,open_", [
    ("min_brightness = 0.5", {"brightness": 0.1}, {"brightness": 0.6}),
    ("max_brightness = 0.5", {"brightness": 0.9}, {"brightness": 0.4}),
    ("min_blur = 100.0", {"blur": 10.0}, {"blur": 300.0}),
], ids=["min_brightness", "max_brightness", "min_blur"])
def test_each_gate_threshold_works_alone(gate_toml, closed, open_):
    """Each threshold given applies on its own, whatever the extractor's own gate says (it says
    open here, so only the threshold can close the gate)."""
    assert gated_smiles(gate_toml, lambda t: {"gate": True, **closed}) == []
    assert len(gated_smiles(gate_toml, lambda t: {"gate": True, **open_})) == 1


def test_without_thresholds_the_extractors_gate_decides():
    assert gated_smiles("", lambda t: {"gate": False, "blur": 300.0}) == []
    assert len(gated_smiles("", lambda t: {"gate": True})) == 1
