"""Helpers for tests that start momentbus processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def momentbus_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "momentbus", *args]


def run_momentbus(*args: str, timeout: float = 240, env: dict | None = None,
                  **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(momentbus_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (orphan check)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd}")
    return found
