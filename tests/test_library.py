"""The library API: what `import momentbus` gives, run_file off the main thread, README's example."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import momentbus
from helpers import processes_mentioning

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves():
    for name in momentbus.__all__:
        assert getattr(momentbus, name) is not None, name
    assert sorted(momentbus.__all__) == sorted(set(momentbus.__all__))


def test_importing_momentbus_loads_no_heavy_library():
    """Role processes import momentbus first: that import must not pull in the media and model
    stack (lazy names)."""
    code = ("import sys, momentbus; heavy = [m for m in ('av', 'cv2', 'zmq', 'numpy', "
            "'onnxruntime', 'mediapipe') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.slow
def test_run_file_off_the_main_thread_returns_the_triggers(sample, tmp_path):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    results = []
    worker = threading.Thread(target=lambda: results.append(
        momentbus.run_file(sample("WolfgangLanger_Pexels.mp4"), tmp_path / "out")))
    worker.start()
    worker.join(240)
    assert not worker.is_alive() and results
    result = results[0]
    assert result.exit_code == momentbus.ExitCode.OK
    assert [t.rule for t in result.triggers] == ["smile"]
    assert isinstance(result.triggers[0], momentbus.Trig)
    assert 9.0e9 < result.triggers[0].t_event_ns < 10.5e9
    assert [p.suffix for p in result.clips] == [".mp4"] and result.clips[0].exists()
    assert result.triggers == momentbus.read_triggers(tmp_path / "out" / "triggers.jsonl")
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "no signal handler taken"
    assert not processes_mentioning(str(tmp_path / "out"))


@pytest.mark.slow
def test_run_file_ends_early_when_its_stop_flag_is_set(sample, tmp_path):
    stop = momentbus.StopFlag()
    stop.set()
    result = momentbus.run_file(sample("single_face.mp4"), tmp_path / "out", stop=stop)
    assert result.exit_code == momentbus.ExitCode.INTERRUPTED
    assert not processes_mentioning(str(tmp_path / "out"))


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, sample, capsys):
    sample("WolfgangLanger_Pexels.mp4")  # fetched before the example asks for it
    text = README.read_text()
    section = text[text.index("## Use from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "faces; happiest at" in out
    assert "[('smile'," in out, "the hand-fed aligner fires the smile"
    assert "smile 9." in out, "run_file returns the same trigger"
    assert (tmp_path / "py-out" / "triggers.jsonl").exists()
