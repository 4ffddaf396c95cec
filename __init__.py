"""momentbus: clips of the moments that matter, from live or recorded video and audio.

The library API (see README, "Use from Python")::

    import momentbus

    result = momentbus.run_file("talk.mp4", "out/")           # the whole pipeline
    for trig in result.triggers:
        print(trig.rule, trig.t_event_ns / 1e9)

    for obs in momentbus.extract_file("face", "talk.mp4", fps=5):   # one extractor, in-process
        for face in obs.payload.faces:
            print(obs.t_ns, face.expression.happy if face.expression else None)

Names are imported on first use, so ``import momentbus`` stays cheap for the role processes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # running things
    "run_file": "momentbus.run",
    "RunResult": "momentbus.run",
    "read_triggers": "momentbus.run",
    "extract_file": "momentbus.extractors.offline",
    "StopFlag": "momentbus.lifecycle",
    "ExitCode": "momentbus.lifecycle",
    # fusion
    "Aligner": "momentbus.fusion.aligner",
    "load_rules": "momentbus.fusion.rules",
    "parse_rules": "momentbus.fusion.rules",
    "build_rules": "momentbus.fusion.rules",
    "Rule": "momentbus.fusion.rules",
    "RuleSpec": "momentbus.fusion.rules",
    "RuleParams": "momentbus.fusion.rules",
    # messages
    "Obs": "momentbus.ipc.schema",
    "Trig": "momentbus.ipc.schema",
    "Evidence": "momentbus.ipc.schema",
    "Frame": "momentbus.ipc.schema",
    "AudioChunk": "momentbus.ipc.schema",
    # payloads
    "Faces": "momentbus.ipc.payloads",
    "Face": "momentbus.ipc.payloads",
    "Expression": "momentbus.ipc.payloads",
    "Persons": "momentbus.ipc.payloads",
    "Person": "momentbus.ipc.payloads",
    "Keypoint": "momentbus.ipc.payloads",
    "Hands": "momentbus.ipc.payloads",
    "Hand": "momentbus.ipc.payloads",
    "QualityReading": "momentbus.ipc.payloads",
    "SpeechSegment": "momentbus.ipc.payloads",
    "Word": "momentbus.ipc.payloads",
    "Box": "momentbus.ipc.payloads",
    "Point2": "momentbus.ipc.payloads",
    "Point3": "momentbus.ipc.payloads",
    # vocabularies
    "EMOTIONS": "momentbus.ipc.vocab",
    "GESTURES": "momentbus.ipc.vocab",
    "COCO_KEYPOINTS": "momentbus.ipc.vocab",
    # errors
    "SourceError": "momentbus.media",
    "RulesError": "momentbus.fusion.rules",
    "ExtractorError": "momentbus.extractors.base",
    "DecodeError": "momentbus.ipc.errors",
}

__all__ = ["Aligner", "AudioChunk", "Box", "COCO_KEYPOINTS", "DecodeError", "EMOTIONS",
           "Evidence", "ExitCode", "Expression", "ExtractorError", "Face", "Faces", "Frame",
           "GESTURES", "Hand", "Hands", "Keypoint", "Obs", "Person", "Persons", "Point2",
           "Point3", "QualityReading", "Rule", "RuleParams", "RuleSpec", "RulesError",
           "RunResult", "SourceError", "SpeechSegment", "StopFlag", "Trig", "Word",
           "build_rules", "extract_file", "load_rules", "parse_rules", "read_triggers",
           "run_file"]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'momentbus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .extractors.base import ExtractorError
    from .extractors.offline import extract_file
    from .fusion.aligner import Aligner
    from .fusion.rules import (Rule, RuleParams, RulesError, RuleSpec, build_rules, load_rules,
                               parse_rules)
    from .ipc.errors import DecodeError
    from .ipc.payloads import (Box, Expression, Face, Faces, Hand, Hands, Keypoint, Person,
                               Persons, Point2, Point3, QualityReading, SpeechSegment, Word)
    from .ipc.schema import AudioChunk, Evidence, Frame, Obs, Trig
    from .ipc.vocab import COCO_KEYPOINTS, EMOTIONS, GESTURES
    from .lifecycle import ExitCode, StopFlag
    from .media import SourceError
    from .run import RunResult, read_triggers, run_file
