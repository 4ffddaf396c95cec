"""The tracer and the trace collector on their own: order, levels, malformed input, torn files."""

from __future__ import annotations

import json
import threading

import zmq

from momentbus.ipc import sockets
from momentbus.traces.records import Level
from momentbus.traces.summary import read_records
from momentbus.traces.tracer import TraceCollector, Tracer


def lines_of(path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n"), "the file ends on a whole line"
    return [json.loads(line) for line in text.splitlines()]


def test_collector_keeps_each_senders_order(addr, tmp_path):
    out = tmp_path / "trace.jsonl"
    collector = TraceCollector(addr("trace"), out)
    collector.start()
    tracers = [Tracer(f"extractor:g{i}#1", collector=addr("trace")) for i in range(3)]
    n = 400
    try:
        for seq in range(n):
            for tracer in tracers:  # interleaved senders
                tracer.emit("timing", seq=seq, stage="process", process_ms=1.0)
    finally:
        for tracer in tracers:
            tracer.close()  # lingers until its records are delivered
        collector.stop()
    records = lines_of(out)
    assert collector.count == len(records) == 3 * n
    for tracer in tracers:
        seqs = [r["seq"] for r in records if r["component"] == tracer.component]
        assert seqs == list(range(n)), "each sender's records in the order it sent them"
    assert all({"record", "wall_ns", "component", "source_id"} <= set(r) for r in records)


def test_collector_counts_malformed_messages_and_writes_none(addr, tmp_path):
    out = tmp_path / "trace.jsonl"
    collector = TraceCollector(addr("trace"), out)
    collector.start()
    with sockets.connect(zmq.PUSH, addr("trace"), linger_ms=2000) as push:
        push.send_multipart([b"trace", b"\xc1 not msgpack"])
        push.send_multipart([b"nonsense"])
        push.send_multipart([b"credit", b"\x82\xa1v\x02\xa1n\x01"])  # valid, but not a record
    with Tracer("daemon", collector=addr("trace")) as tracer:
        tracer.emit("summary", role="daemon")
    collector.stop()
    assert collector.bad == 3
    assert [r["record"] for r in lines_of(out)] == ["summary"]


def test_the_file_holds_only_whole_lines_while_records_stream(addr, tmp_path):
    """A reader (tail -f, jq, the review page) never sees half a record, even a long one."""
    out = tmp_path / "trace.jsonl"
    collector = TraceCollector(addr("trace"), out)
    collector.start()
    done = threading.Event()

    def send() -> None:
        with Tracer("fusion", collector=addr("trace")) as tracer:
            for seq in range(300):
                tracer.emit("trigger", seq=seq, evidence=["x" * 20_000])  # > one 8 KiB buffer
        done.set()

    threading.Thread(target=send).start()
    try:
        while not done.is_set():
            if out.exists():
                text = out.read_text()
                head, _, _tail = text.rpartition("\n")
                for line in head.splitlines():
                    json.loads(line)  # every complete line parses
            done.wait(0.01)  # the reader's pace: the sender is what this test waits for
    finally:
        collector.stop()
    assert len(lines_of(out)) == 300


def test_levels_decide_what_is_written(addr, tmp_path):
    path = tmp_path / "own.jsonl"
    with Tracer("daemon", path=path, level=Level.minimal) as tracer:
        tracer.emit("timing", seq=1)       # normal: not at minimal
        tracer.emit("frame_drop", seqs=[1])
        tracer.emit("member", event="join")
    assert [r["record"] for r in lines_of(path)] == ["frame_drop", "member"]
    with Tracer("daemon", path=tmp_path / "off.jsonl", level=Level.off) as tracer:
        tracer.emit("error", error="x")
    assert not (tmp_path / "off.jsonl").exists()


def test_a_torn_trace_is_read_up_to_its_last_whole_line(tmp_path):
    path = tmp_path / "trace.jsonl"
    whole = [json.dumps({"record": "timing", "seq": i}) for i in range(5)]
    path.write_text("\n".join(whole) + "\n" + '{"record": "timing", "se')
    records, bad = read_records(path)
    assert [r["seq"] for r in records] == list(range(5)) and bad == 1
    path.write_text("\n".join(whole[:2]) + "\nnot json\n[1, 2]\n\n" + whole[2] + "\n")
    records, bad = read_records(path)
    assert [r["seq"] for r in records] == [0, 1, 2] and bad == 2


def test_a_full_disk_stops_the_file_not_the_collector(addr, tmp_path):
    """trace.jsonl on a full disk (/dev/full: every write fails with ENOSPC, as the collector's
    "w" open follows the link): no traceback in the thread; records are still received,
    counted and seen by on_record; the error is kept for the run's last line."""
    import errno

    path = tmp_path / "trace.jsonl"
    path.symlink_to("/dev/full")
    seen = []
    collector = TraceCollector(addr("trace"), path, on_record=seen.append)
    collector.start()
    with Tracer("daemon", collector=addr("trace")) as tracer:
        for seq in range(50):
            tracer.emit("timing", seq=seq, stage="read")
        tracer.emit("summary", role="daemon", frames=50)
    collector.stop()
    assert not collector._thread.is_alive()
    assert collector.count == len(seen) == 51 and collector.written == 0
    assert collector.write_error is not None and collector.write_error.errno == errno.ENOSPC
    assert [r["role"] for r in collector.summaries] == ["daemon"]


def test_a_trace_file_that_cannot_be_opened_is_reported_not_raised(addr, tmp_path):
    path = tmp_path / "trace.jsonl"
    path.mkdir()  # a folder where the file should be
    collector = TraceCollector(addr("trace"), path)
    collector.start()
    with Tracer("fusion", collector=addr("trace")) as tracer:
        tracer.emit("member", event="join")
    collector.stop()
    assert collector.count == 1 and collector.written == 0
    assert isinstance(collector.write_error, IsADirectoryError)


def test_a_full_disk_stops_a_process_own_file_not_the_process(tmp_path):
    path = tmp_path / "own.jsonl"
    path.symlink_to("/dev/full")
    with Tracer("daemon", path=path) as tracer:
        tracer.emit("member", event="join")  # would raise OSError from a role's loop
        tracer.emit("member", event="leave")
    assert tracer.file_error is not None
