"""Read a child process's JSON-lines stdout with timeouts (no sleeping, no hanging).

A daemon thread moves lines into a queue; :meth:`JsonLines.expect` waits on the queue with a
deadline, so a test blocks at most ``timeout_s`` and fails with what the child said.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any


class JsonLines:
    """Events (dicts) printed one per line by ``proc`` (started with ``stdout=PIPE, text=True``)."""

    def __init__(self, proc: subprocess.Popen[str], name: str = "child") -> None:
        self.proc = proc
        self.name = name
        self.seen: list[dict[str, Any]] = []
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                line = line.strip()
                if line:
                    try:
                        self._q.put(json.loads(line))
                    except ValueError:
                        self._q.put({"event": "unparsed", "line": line})
        except (OSError, ValueError):  # stream closed at cleanup
            pass
        self._q.put(None)

    def expect(self, event: str, timeout_s: float = 20.0,
               where: Callable[[dict[str, Any]], bool] | None = None,
               **match: Any) -> dict[str, Any]:
        """The next event named ``event`` whose fields equal ``match`` (and satisfying ``where``);
        earlier ones are kept in :attr:`seen`. Fails (AssertionError) on timeout or end of
        output."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=max(left, 0))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no {event} {match} within {timeout_s} s; "
                                     f"saw {self.seen}") from None
            if item is None:
                self._q.put(None)  # stay at end of output
                raise AssertionError(f"{self.name} ended (rc={self.proc.poll()}) without "
                                     f"{event} {match}; saw {self.seen}; {self.stderr()}")
            self.seen.append(item)
            if (item.get("event") == event and all(item.get(k) == v for k, v in match.items())
                    and (where is None or where(item))):
                return item

    def rest(self, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Every event until the end of output (the child exits); also added to :attr:`seen`."""
        deadline = time.monotonic() + timeout_s
        items: list[dict[str, Any]] = []
        while True:
            try:
                item = self._q.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(
                    f"{self.name}: output did not end within {timeout_s} s") from None
            if item is None:
                self._q.put(None)
                return items
            self.seen.append(item)
            items.append(item)

    def stderr(self) -> str:
        if self.proc.stderr is None or self.proc.poll() is None:
            return ""
        try:
            return "stderr: " + self.proc.stderr.read()[-2000:]
        except (OSError, ValueError):
            return ""

    def wait(self, timeout_s: float = 20.0) -> int:
        """Exit code, waiting at most ``timeout_s`` (fails instead of hanging)."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout_s} s") from None
