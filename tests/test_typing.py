"""The wire and fusion packages are typed: ``mypy --strict`` passes on them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ipc_and_fusion_are_mypy_strict(tmp_path):
    pytest.importorskip("mypy")
    # the repository root is the `momentbus` package: give mypy a folder where it is named so
    (tmp_path / "momentbus").symlink_to(ROOT, target_is_directory=True)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / ".cache"),
         "momentbus/ipc", "momentbus/fusion"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={**os.environ, "MYPYPATH": ""})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
