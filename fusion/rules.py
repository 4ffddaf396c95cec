"""Trigger rules: the TOML loader, the registry of kinds (built-in and entry points), and the
re-exports of the rule contract.

Custom kinds: a package registers a :class:`Rule` subclass under the entry-point group
``momentbus.rules`` (name = the ``kind`` used in TOML). A kind that fails to load is an error
naming it, never silently skipped.
"""

from __future__ import annotations

import tomllib
from importlib import metadata, resources
from pathlib import Path

from ..ipc.timebase import parse_duration_ns
from .rule_base import GateState, Held, Rule, RuleSpec, RulesError
from .rule_kinds import (BUILTIN_KINDS, ExpressionSpike, FaceAppears, FaceLeaves, GestureHold,
                         HandWave, HeadTurn, QualityGate, SpeechPhrase)

__all__ = ["Rule", "RuleSpec", "RulesError", "GateState", "Held", "ExpressionSpike",
           "FaceAppears", "FaceLeaves", "HeadTurn", "HandWave", "GestureHold", "SpeechPhrase",
           "QualityGate", "RULE_KINDS", "rule_kinds", "parse_rules", "load_rules", "build_rules"]

ENTRY_POINT_GROUP = "momentbus.rules"

#: Built-in rule kinds (explicit registration); entry points are added by :func:`rule_kinds`.
RULE_KINDS: dict[str, type[Rule]] = dict(BUILTIN_KINDS)


def rule_kinds() -> dict[str, type[Rule]]:
    """Built-in kinds plus those registered under the ``momentbus.rules`` entry-point group.

    Raises:
        RulesError: an entry point fails to import, is not a Rule subclass, or shadows a
            built-in kind.
    """
    kinds = dict(RULE_KINDS)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # an import error in a plugin is the plugin's bug: say so
            raise RulesError(f"rule kind {ep.name!r} (entry point {ep.value}) failed to load: "
                             f"{type(e).__name__}: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            raise RulesError(f"rule kind {ep.name!r} ({ep.value}) is not a momentbus Rule")
        if ep.name in RULE_KINDS:
            raise RulesError(f"rule kind {ep.name!r} ({ep.value}) shadows a built-in kind")
        kinds[ep.name] = cls
    return kinds


_COMMON_KEYS = {"name", "kind", "hold", "cooldown", "pre_roll", "post_roll", "gated"}


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
    kinds = rule_kinds()
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
        if kind not in kinds:
            raise RulesError(f"{where}: unknown kind {kind!r} (known: {', '.join(sorted(kinds))})")
        spec = RuleSpec(name=name, kind=kind, line=line,
                        params={k: v for k, v in table.items() if k not in _COMMON_KEYS})
        gated = table.get("gated", True)
        if not isinstance(gated, bool):
            raise RulesError(f"{where}: gated must be true or false")
        spec.params["_gated"] = gated
        for key in ("hold", "cooldown", "pre_roll", "post_roll"):
            if key in table:
                try:
                    setattr(spec, f"{key}_ns", parse_duration_ns(table[key]))
                except ValueError as e:
                    raise RulesError(f"{where}: {key}: {e}") from None
        try:
            kinds[kind](spec)  # kind-specific validation
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


def build_rules(specs: list[RuleSpec], available: list[str] | None = None,
                disabled: list[tuple[str, list[str]]] | None = None) -> list[Rule]:
    """Rule instances for ``specs``. If a ``quality_gate`` rule is present, every other rule
    (unless ``gated = false``) fires only while its gate is open.

    Args:
        available: the extractor groups that run; a rule needing another is left out (and
            appended to ``disabled`` as ``(name, missing groups)``). ``None``: keep all.
    """
    kinds = rule_kinds()
    rules = [kinds[s.kind](s) for s in specs]
    if available is not None:
        kept = []
        for rule in rules:
            missing = [g for g in rule.inputs if g not in available]
            if missing:
                if disabled is not None:
                    disabled.append((rule.name, missing))
            else:
                kept.append(rule)
        rules = kept
    gates = [r for r in rules if isinstance(r, QualityGate)]
    if len(gates) > 1:
        raise RulesError("at most one quality_gate rule")
    if gates:
        for rule in rules:
            if rule is not gates[0] and rule.spec.params.get("_gated", True):
                rule.attach_gate(gates[0].new_gate())
    return rules
