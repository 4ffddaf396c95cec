"""Trigger rules: the TOML loader, the registry of kinds (built-in and entry points), and the
re-exports of the rule contract.

A rules file is a list of ``[[rule]]`` tables. Each table's keys are checked against the keys
every rule takes (:class:`~momentbus.fusion.rule_base.Settings`) and its kind's ``Params``
Struct: an unknown key, a wrong type or an out-of-range value is a :class:`RulesError` that names
the file, the rule's line, the rule, the key, the key's own line, and what was expected.

Custom kinds: a package registers a :class:`Rule` subclass under the entry-point group
``momentbus.rules`` (name = the ``kind`` used in TOML). A kind that fails to load is an error
naming it, never silently skipped.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from importlib import metadata, resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import msgspec

from .rule_base import (COMMON_KEYS, Duration, GateState, Held, Rule, RuleParams, RuleSpec,
                        RulesError, Settings, convert_params)
from .rule_kinds import (BUILTIN_KINDS, ExpressionSpike, FaceAppears, FaceLeaves, GestureHold,
                         HandWave, HeadTurn, QualityGate, SpeechPhrase)

__all__ = ["Rule", "RuleSpec", "RuleParams", "RulesError", "GateState", "Held", "Duration",
           "ExpressionSpike", "FaceAppears", "FaceLeaves", "HeadTurn", "HandWave", "GestureHold",
           "SpeechPhrase", "QualityGate", "RULE_KINDS", "rule_kinds", "parse_rules", "load_rules",
           "build_rules", "describe_params", "describe_spec"]

ENTRY_POINT_GROUP = "momentbus.rules"

#: Built-in rule kinds (explicit registration); entry points are added by :func:`rule_kinds`.
RULE_KINDS: dict[str, type[Rule]] = dict(BUILTIN_KINDS)
#: Rule names become parts of clip file names and metric labels.
RULE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")


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


# ---------------------------------------------------------------------------- locations

_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")
_TABLE = re.compile(r"^\s*\[")


class _Block:
    """Where one ``[[rule]]`` table was written: its header line and each key's line."""

    def __init__(self, header: int) -> None:
        self.header = header
        self.keys: dict[str, int] = {}


def _rule_blocks(text: str) -> list[_Block]:
    """The ``[[rule]]`` tables of ``text`` in order, with the line of each top-level key."""
    blocks: list[_Block] = []
    current: _Block | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if _TABLE.match(line):
            header = line.strip()
            current = _Block(number) if re.match(r"^\[\[\s*rule\s*\]\]", header) else None
            if current is not None:
                blocks.append(current)
        elif current is not None:
            m = _KEY.match(line)
            if m:
                current.keys.setdefault(next(g for g in m.groups() if g), number)
    return blocks


# ---------------------------------------------------------------------------- what a key takes


def _range(meta: msgspec.Meta) -> str:
    lo = ("[", meta.ge) if meta.ge is not None else ("(", meta.gt) if meta.gt is not None else None
    hi = ("]", meta.le) if meta.le is not None else (")", meta.lt) if meta.lt is not None else None
    if lo and hi:
        return f" in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f" {'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    if meta.min_length is not None or meta.max_length is not None:
        return f" of {meta.min_length or 0} to {meta.max_length} characters"
    return ""


def describe(hint: Any) -> str:
    """What a parameter of type ``hint`` takes, in words (``a number in [0, 1]``)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *extras = typing.get_args(hint)
        text = describe(base)
        for meta in extras:
            if isinstance(meta, msgspec.Meta):
                text += _range(meta)
                if meta.description and not meta.description.startswith("in ["):
                    text += f" ({meta.description})"
        return text
    if origin is Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        text = " or ".join(describe(a) for a in options)
        return text + (" (or left out)" if len(options) < len(typing.get_args(hint)) else "")
    if hint is Duration:
        return "a duration like '0.5s' or '250ms' (at most 1 hour)"
    return {float: "a number", int: "an integer", str: "a string",
            bool: "true or false"}.get(hint, getattr(hint, "__name__", str(hint)))


def describe_params(cls: type[msgspec.Struct]) -> dict[str, str]:
    """``key -> what it takes`` for a parameter Struct, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: describe(hints[name]) for name in cls.__struct_fields__}


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:g}s"


def describe_spec(spec: RuleSpec) -> str:
    """A rule's settings and parameters as ``key=value`` pairs, defaults included."""
    pairs = [("hold", _seconds(spec.hold_ns)), ("cooldown", _seconds(spec.cooldown_ns)),
             ("pre_roll", _seconds(spec.pre_roll_ns)), ("post_roll", _seconds(spec.post_roll_ns)),
             ("gated", str(spec.gated).lower())]
    params = spec.params
    if isinstance(params, msgspec.Struct):
        for name in params.__struct_fields__:
            value = getattr(params, name)
            text = _seconds(value) if isinstance(value, Duration) else \
                "unset" if value is None else str(value)
            pairs.append((name, text))
    return " ".join(f"{k}={v}" for k, v in pairs)


# ---------------------------------------------------------------------------- errors

_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`")


def _explain(err: msgspec.ValidationError, cls: type[msgspec.Struct], kind: str,
             table: dict[str, Any], block: _Block | None) -> str:
    """msgspec's validation message as a sentence naming the key, its line and what it takes."""
    text = str(err)
    m = _AT.search(text)
    key = m.group(1).split(".")[0].split("[")[0] if m else ""
    detail = text[: m.start()] if m else text
    takes = describe_params(cls)

    def line_of(k: str) -> str:
        line = block.keys.get(k) if block else None
        return f"line {line}" if line else "line ?"

    if (u := _UNKNOWN.match(detail)):
        k = u.group(1)
        return f"unknown key {k!r} ({line_of(k)})"
    if (missing := _MISSING.match(detail)):
        k = missing.group(1)
        return f"{k} is required: {takes.get(k, 'a value')}"
    if key and key in takes:
        value = table.get(key)
        return f"{key} must be {takes[key]} (got {value!r}, {line_of(key)})"
    return detail  # a rule of the kind itself (e.g. "min_hz must be below max_hz")


def _unknown_keys(keys: list[str], cls: type[Rule], block: _Block | None) -> str:
    """``unknown key 'x' (line 4), 'y' (line 5); KIND takes ..., and every rule takes ...``."""
    def where(k: str) -> str:
        line = block.keys.get(k) if block else None
        return f"{k!r} (line {line if line else '?'})"

    own = ", ".join(cls.Params.__struct_fields__) or "no parameters of its own"
    return (f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(where(k) for k in keys)}; "
            f"{cls.kind} takes {own}, and every rule takes {', '.join(COMMON_KEYS)}")


# ---------------------------------------------------------------------------- loading


def parse_rules(text: str, origin: str = "<rules>") -> list[RuleSpec]:
    """Parse and validate a rules TOML document.

    Raises:
        RulesError: TOML syntax error (with its line), a missing/duplicate name, an unknown
            kind, or any key of a rule that is unknown, mistyped or out of range; the message
            names the file, the rule's line, the rule, the key and its line.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{origin}: {e}") from None
    kinds = rule_kinds()
    rules = doc.get("rule")
    if not isinstance(rules, list) or not rules or not all(isinstance(r, dict) for r in rules):
        raise RulesError(f"{origin}: no [[rule]] tables")
    unexpected = sorted(k for k in doc if k != "rule")
    if unexpected:
        raise RulesError(f"{origin}: unknown top-level key(s) {', '.join(unexpected)} "
                         "(a rules file holds [[rule]] tables only)")
    blocks = _rule_blocks(text)
    specs: list[RuleSpec] = []
    seen: set[str] = set()
    for i, table in enumerate(rules):
        block = blocks[i] if i < len(blocks) else None
        name = table.get("name")
        if not isinstance(name, str) or not RULE_NAME.match(name):
            line = block.header if block else None
            raise RulesError(f"{origin}:{line or '?'}: rule #{i + 1}: 'name' must be 1 to 48 "
                             f"letters, digits, - or _ (got {name!r})")
        line = block.keys.get("name", block.header) if block else None
        where = f"{origin}:{line}: rule {name!r}" if line else f"{origin}: rule {name!r}"
        if name in seen:
            raise RulesError(f"{where}: duplicate name")
        seen.add(name)
        kind = table.get("kind")
        if not isinstance(kind, str) or kind not in kinds:
            raise RulesError(f"{where}: unknown kind {kind!r} (known: {', '.join(sorted(kinds))})")
        cls = kinds[kind]
        unknown = [k for k in table
                   if k not in COMMON_KEYS and k not in cls.Params.__struct_fields__]
        if unknown:
            raise RulesError(f"{where}: {_unknown_keys(unknown, cls, block)}")
        common = {k: v for k, v in table.items() if k in COMMON_KEYS}
        params = {k: v for k, v in table.items() if k not in COMMON_KEYS}
        try:
            settings = convert_params(Settings, common)
        except msgspec.ValidationError as e:
            raise RulesError(f"{where}: {_explain(e, Settings, kind, table, block)}") from None
        spec = RuleSpec(name=name, kind=kind, hold_ns=settings.hold,
                        cooldown_ns=settings.cooldown, pre_roll_ns=settings.pre_roll,
                        post_roll_ns=settings.post_roll, gated=settings.gated, params=params,
                        line=line, origin=origin)
        try:
            rule = cls(spec)  # the kind's own validation
        except msgspec.ValidationError as e:
            merged = _merged_params(cls.Params)
            raise RulesError(f"{where}: {_explain(e, merged, kind, table, block)}") from None
        except (ValueError, TypeError) as e:
            raise RulesError(f"{where}: {e}") from None
        spec.params = rule.params
        specs.append(spec)
    return specs


def _merged_params(cls: type[RuleParams]) -> type[msgspec.Struct]:
    """The kind's parameters plus the common keys, for messages that list what a rule takes."""
    fields = [(n, t) for n, t in typing.get_type_hints(Settings, include_extras=True).items()]
    own = typing.get_type_hints(cls, include_extras=True)
    merged = [(n, own[n]) for n in cls.__struct_fields__] + fields
    return msgspec.defstruct(f"{cls.__qualname__}AndSettings", merged)


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
    except UnicodeDecodeError:
        raise RulesError(f"{path}: not a text file (rules are TOML, UTF-8)") from None
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
            if rule is not gates[0] and rule.spec.gated:
                rule.attach_gate(gates[0].new_gate())
    return rules
