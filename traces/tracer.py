"""Per-process trace emitter and the collector that writes one JSONL file.

Every process builds one :class:`Tracer` bound to its ``component`` and ``source_id``. Records go
to the run's collector over a ZeroMQ PUSH socket (non-blocking: a full queue counts a lost record
instead of stalling the pipeline) and/or to the process's own JSONL file (remote hosts).

Records travel in batches (:class:`~momentbus.ipc.schema.TraceBatch`): each ZeroMQ message wakes
a thread at both ends, and on the project's 2-core machine one message per record made the
``run`` parent spend ~120 us of CPU a record. A record waits at most :data:`TRACE_BATCH_S`, so
in the collector's file one process's records keep their order while records of different
processes may interleave up to that far out of ``wall_ns`` order (sort by ``wall_ns`` to merge).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import structlog
import zmq

from ..ipc import sockets
from ..ipc.errors import DecodeError
from ..ipc.schema import MAX_HEADER_BYTES, TraceBatch, TraceRecord, encode
from .records import RECORD_LEVELS, Level

#: Trace sockets keep up to 2 s at close to deliver the last records (end-of-run summaries).
TRACE_LINGER_MS = 2000
#: Messages queued per process before new ones are counted as lost: at least ~40 s of three
#: 25 fps streams.
TRACE_HWM = 10_000
#: A record waits at most this long before it is sent (in a batch): the live metrics and the
#: review page lag the run by no more.
TRACE_BATCH_S = 0.05
#: Records in one batch at most (a batch is sent as soon as it has this many). Records are
#: ~0.2-2 kB; a batch over the 1 MiB header limit is sent in halves.
TRACE_BATCH_MAX = 64
#: Sent at once (with what is pending before them): a role's last words, and a trigger, which
#: a watcher waits for and whose record stays ahead of its clip's (fusion traces it before it
#: sends the TRIG), so trace.jsonl keeps trigger -> clip in order.
UNBATCHED = frozenset({"summary", "error", "trigger"})


def wall_ns() -> int:
    return time.time_ns()


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), default=str)


class Tracer:
    """Emit trace records for one component.

    Args:
        component: e.g. ``"daemon"``, ``"extractor:face#1"``, ``"fusion"``.
        source_id: the source the records are about.
        collector: ZeroMQ address of the run's collector (PUSH), or ``None``.
        path: a JSONL file of this process's own records, or ``None``.
        level: records below this level are not written.
    """

    def __init__(self, component: str, source_id: str = "", *, collector: str | None = None,
                 path: str | Path | None = None, level: Level = Level.normal) -> None:
        self.component = component
        self.source_id = source_id
        self.level = level
        self.lost = 0
        # emit may be called from a library's thread too (refused peers from the ZAP handler)
        self._lock = threading.Lock()
        self._bad_kinds: dict[str, int] = {}
        self._observers: list[Callable[[dict[str, Any]], None]] = []
        self._sock: zmq.Socket | None = None
        self._pending: list[TraceRecord] = []
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None
        self._file: IO[str] | None = None
        #: the error that stopped writing ``path`` (disk full, ...), or ``None``
        self.file_error: OSError | None = None
        if collector and level > Level.off:
            self._sock = sockets.connect(zmq.PUSH, collector, hwm=TRACE_HWM,
                                         linger_ms=TRACE_LINGER_MS)
            self._flusher = threading.Thread(target=self._flush_every, name="trace-flush",
                                             daemon=True)
            self._flusher.start()
        if path and level > Level.off:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8", buffering=1)
        self.log = structlog.get_logger().bind(component=component, source_id=source_id)

    def enabled(self, record: str) -> bool:
        return self.level >= RECORD_LEVELS.get(record, Level.normal)

    def emit(self, record: str, **fields: Any) -> None:
        """Write one record of type ``record`` if the level allows it."""
        if not self.enabled(record):
            return
        body: dict[str, Any] = {"record": record, "wall_ns": wall_ns(),
                                "component": self.component, "source_id": self.source_id}
        body.update(fields)
        with self._lock:
            self._write(record, body)
        for observe in self._observers:
            observe(body)

    def add_observer(self, observe: Callable[[dict[str, Any]], None]) -> None:
        """Also hand every record written to ``observe`` (e.g. ``TraceMetrics.observe`` behind
        ``--metrics``), on the emitting thread; it must not raise."""
        self._observers.append(observe)

    def _write(self, record: str, body: dict[str, Any]) -> None:
        if self._file is not None:
            try:
                self._file.write(_json_line(body) + "\n")
            except OSError as e:  # disk full: this process's own file stops, the role goes on
                self.file_error = e
                self.log.warning("trace_file_stopped", error=str(e))
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
        if self._sock is not None:
            self._pending.append(TraceRecord(record=record, fields=body))
            if len(self._pending) >= TRACE_BATCH_MAX or record in UNBATCHED:
                self._flush()

    def _flush(self) -> None:
        """Send what is pending as one message (hold the lock)."""
        if not self._pending or self._sock is None:
            return
        batch, self._pending = self._pending, []
        self._send(batch)

    def _send(self, batch: list[TraceRecord]) -> None:
        assert self._sock is not None
        msg = TraceBatch(records=batch)
        parts = encode(msg)
        if len(batch) > 1 and len(parts[1]) > MAX_HEADER_BYTES:
            half = len(batch) // 2  # long records: halves until each fits a message
            self._send(batch[:half])
            self._send(batch[half:])
        elif not sockets.try_send(self._sock, msg, parts):
            self.lost += len(batch)

    def _flush_every(self) -> None:
        while not self._closing.wait(TRACE_BATCH_S):
            with self._lock:
                self._flush()

    def flush(self) -> None:
        """Send the pending records now (they go within :data:`TRACE_BATCH_S` anyway)."""
        with self._lock:
            self._flush()

    def error(self, where: str, err: BaseException | str, **fields: Any) -> None:
        """An ``error`` record plus a log line."""
        text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        self.log.error("error", where=where, error=text)
        self.emit("error", where=where, error=text, **fields)

    def bad_message(self, err: DecodeError, peer: str = "") -> None:
        """Count a malformed message; trace the first of each error type (then only count)."""
        name = type(err).__name__
        n = self._bad_kinds.get(name, 0) + 1
        self._bad_kinds[name] = n
        if n == 1:
            self.log.warning("bad_message", error=str(err), peer=peer)
            self.emit("bad_message", error_type=name, error=str(err), peer=peer)

    @property
    def bad_message_counts(self) -> dict[str, int]:
        return dict(self._bad_kinds)

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write the bad-message counts, then close the socket (lingering up to
        :data:`TRACE_LINGER_MS` to deliver the last records) and the file."""
        if self._bad_kinds:
            self.emit("bad_message", counts=self.bad_message_counts)
        self._closing.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        with self._lock:
            self._flush()
            if self._sock is not None:
                self._sock.close(TRACE_LINGER_MS)
                self._sock = None
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None


class TraceCollector:
    """Receives every process's records (PULL, bound) and writes them to one JSONL file.

    Runs in a thread of the ``momentbus run`` parent. ``on_record`` sees each record (progress
    and summary). :meth:`stop` drains what is queued, waiting at most ``drain_s`` for stragglers.

    A file that cannot be opened or written (disk full: ``ENOSPC``; ``EIO``; ...) never stops
    the collector: it stops writing, remembers the first error in :attr:`write_error`, and goes
    on receiving, counting and passing records to ``on_record``, so the run still ends with its
    summary and can say what was saved. :attr:`count` is records received, :attr:`written`
    records written whole to the file (the file may end in a torn line after an error).
    The ``summary`` records (one per role, at its end) are kept in :attr:`summaries`.
    """

    def __init__(self, address: str, path: str | Path,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.address = address
        self.path = Path(path)
        self.on_record = on_record
        self.count = 0
        self.written = 0
        self.bad = 0
        #: the first error opening or writing the file (``None`` while all is written)
        self.write_error: OSError | None = None
        #: the ``summary`` records received, in arrival order
        self.summaries: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trace-collector", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("trace collector did not start")
        if self._error is not None:
            raise self._error

    def _open(self) -> IO[str] | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # line-buffered: `tail -f trace.jsonl` and jq work while the run goes on
            return open(self.path, "w", encoding="utf-8", buffering=1)
        except OSError as e:
            self.write_error = e
            return None

    def _write(self, out: IO[str] | None, lines: str, n: int = 1) -> IO[str] | None:
        """Write ``n`` whole lines; on an error, remember it, close the file quietly, write no
        more."""
        if out is None:
            return None
        try:
            out.write(lines)
            self.written += n
            return out
        except OSError as e:
            self.write_error = e
            with contextlib.suppress(OSError):
                out.close()  # the buffered rest fails again: the file ends where it failed
            return None

    def _run(self) -> None:
        try:
            sock = sockets.bind(zmq.PULL, self.address, hwm=100_000)
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()
            return
        inbox: sockets.Receiver[TraceRecord | TraceBatch] = sockets.Receiver(
            sock, (TraceRecord, TraceBatch), where="the trace collector")
        idle_polls = 0
        out = self._open()
        try:
            with sock:
                self._ready.set()
                while True:
                    msg = inbox.recv(50)
                    if msg is not None:
                        idle_polls = 0
                        records = msg.records if isinstance(msg, TraceBatch) else [msg]
                        lines = [_json_line(r.fields) + "\n" for r in records]
                        out = self._write(out, "".join(lines), len(lines))
                        for r in records:
                            self.count += 1
                            if r.fields.get("record") == "summary":
                                self.summaries.append(r.fields)
                            if self.on_record is not None:
                                self.on_record(r.fields)
                    elif self._stop.is_set():
                        idle_polls += 1
                        if idle_polls >= 4:  # 200 ms with nothing after stop: drained
                            break
                self.bad = inbox.bad_total
        finally:
            if out is not None:
                try:
                    out.close()
                except OSError as e:
                    self.write_error = self.write_error or e
        sockets.remove_ipc_file(self.address)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
