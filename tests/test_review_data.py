"""Reading an OUT folder incrementally (traces/review_data.py), on synthetic files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from momentbus.traces.review_data import JsonlTail, OutFolder


def line(obj: dict) -> str:
    return json.dumps(obj) + "\n"


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_tail_reads_only_what_was_appended(tmp_path):
    path = tmp_path / "t.jsonl"
    tail = JsonlTail(path)
    assert tail.refresh() == [] and not tail.exists
    append(path, line({"a": 1}) + line({"a": 2}))
    assert tail.refresh() == [{"a": 1}, {"a": 2}]
    assert tail.refresh() == []
    append(path, line({"a": 3}))
    assert tail.refresh() == [{"a": 3}]
    assert [r["a"] for r in tail.records] == [1, 2, 3]


def test_an_incomplete_last_line_waits_for_its_end(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(line({"a": 1}) + '{"a": 2, "b"')
    tail = JsonlTail(path)
    assert tail.refresh() == [{"a": 1}]
    assert tail.torn == len('{"a": 2, "b"') and tail.malformed == 0
    append(path, ': 3}\n')
    assert tail.refresh() == [{"a": 2, "b": 3}]
    assert tail.torn == 0


def test_a_whole_last_object_without_newline_is_taken_once(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(line({"a": 1}) + '{"a": 2}')
    tail = JsonlTail(path)
    assert tail.refresh() == [{"a": 1}, {"a": 2}]
    append(path, "\n" + line({"a": 3}))
    assert tail.refresh() == [{"a": 3}]


def test_malformed_complete_lines_are_counted_and_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(line({"a": 1}) + "not json\n" + "[1, 2]\n" + "\n" + line({"a": 2}))
    tail = JsonlTail(path)
    assert tail.refresh() == [{"a": 1}, {"a": 2}]
    assert tail.malformed == 2


def test_a_replaced_or_truncated_file_is_read_again(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(line({"run": 1}) * 3)
    tail = JsonlTail(path)
    tail.refresh()
    gen = tail.generation
    path.write_text(line({"run": 2}))  # a new run into the same OUT: shorter file
    assert tail.refresh() == [{"run": 2}]
    assert tail.records == [{"run": 2}] and tail.generation == gen + 1
    new = tmp_path / "new.jsonl"
    new.write_text(line({"run": 3}) * 5)
    os.replace(new, path)  # replaced by rename: another inode
    assert [r["run"] for r in tail.refresh()] == [3] * 5
    path.unlink()
    assert tail.refresh() == [] and tail.records == [] and not tail.exists


TRIG = {"rule": "smile", "rule_kind": "expression_spike", "t_event_ns": 9_000_000_000,
        "t_start_ns": 7_000_000_000, "t_end_ns": 12_000_000_000, "score": 0.7,
        "evidence": [{"kind": "face", "seq": 9, "t_ns": 9_000_000_000,
                      "values": {"happy": 0.9}}], "missing": ["pose"]}


def out_folder(tmp_path: Path, trace: list[dict], triggers: list[dict]) -> Path:
    out = tmp_path / "out"
    (out / "clips").mkdir(parents=True)
    (out / "trace.jsonl").write_text("".join(line(r) for r in trace))
    (out / "triggers.jsonl").write_text("".join(line(t) for t in triggers))
    return out


def sidecar(out: Path, name: str, trig: dict) -> None:
    (out / "clips" / f"{name}.json").write_text(json.dumps({
        "clip": f"{name}.mp4", "requested": {"t_start_ns": trig["t_start_ns"],
                                             "t_end_ns": trig["t_end_ns"]},
        "actual": {"t_start_ns": 6_000_000_000, "t_end_ns": 12_000_000_000}, "trig": trig}))


def test_a_trigger_finds_its_clip_through_the_sidecar(tmp_path):
    out = out_folder(tmp_path, [], [TRIG])
    sidecar(out, "001_smile", TRIG)
    (out / "clips" / "001_smile.mp4").write_bytes(b"\0" * 10)
    folder = OutFolder(out)
    folder.refresh()
    item = folder.triggers()["items"][0]
    assert item["clip"]["status"] == "ok" and item["clip"]["name"] == "001_smile.mp4"
    assert item["evidence"] == TRIG["evidence"] and item["missing"] == ["pose"]
    assert folder.status()["problems"] == ["trace.jsonl is empty"]  # and nothing else


def test_clip_states_missing_failed_pending_and_none(tmp_path):
    other = {**TRIG, "rule": "wave", "t_event_ns": 3_000_000_000}
    failed = {**TRIG, "rule": "nod", "t_event_ns": 5_000_000_000}
    trace = [{"record": "error", "component": "clip", "where": "clip", "rule": "nod",
              "t_event_ns": 5_000_000_000, "error": "ClipError: no video in the window"}]
    out = out_folder(tmp_path, trace, [TRIG, other, failed])
    sidecar(out, "001_smile", TRIG)  # its mp4 is not there
    folder = OutFolder(out)
    folder.refresh()
    clips = {t["rule"]: t["clip"] for t in folder.triggers()["items"]}
    assert clips["smile"]["status"] == "missing"
    assert clips["nod"]["status"] == "failed" and "no video" in clips["nod"]["message"]
    assert clips["wave"]["status"] == "pending"  # the clip role has not finished
    problems = folder.status()["problems"]
    assert any("clips/001_smile.mp4 is missing on disk" in p for p in problems)
    assert any("nod" in p and "no video" in p for p in problems)
    append(out / "trace.jsonl", line({"record": "summary", "component": "clip", "role": "clip",
                                      "clips": 1, "failed": 1}))
    folder.refresh()
    clips = {t["rule"]: t["clip"] for t in folder.triggers()["items"]}
    assert clips["wave"]["status"] == "none"
    assert folder.status()["state"] == "finished"


def test_new_clips_are_noticed(tmp_path):
    out = out_folder(tmp_path, [], [TRIG])
    folder = OutFolder(out)
    first = folder.refresh()
    assert first["clips"] == 0
    sidecar(out, "001_smile", TRIG)
    (out / "clips" / "001_smile.mp4").write_bytes(b"\0")
    after = folder.refresh()
    assert after["clips"] == 1 and after["version"] > first["version"]
    assert folder.triggers()["items"][0]["clip"]["status"] == "ok"


def test_lanes_bin_every_point_and_place_drops_at_their_frame_time(tmp_path):
    trace = [{"record": "source", "component": "daemon", "duration_ns": 10_000_000_000}]
    for seq in range(100):
        t = seq * 100_000_000
        trace.append({"record": "timing", "component": "daemon", "stage": "read", "seq": seq,
                      "t_ns": t, "read_ms": 1.0})
        trace.append({"record": "timing", "component": "extractor:face#1", "stage": "process",
                      "seq": seq, "t_ns": t, "process_ms": 30.0 + (seq == 50) * 100})
    trace.append({"record": "frame_drop", "component": "daemon", "group": "face",
                  "seqs": [70, 71], "reason": "latest"})
    trace.append({"record": "frame_drop", "component": "daemon", "group": "speech",
                  "seqs": [3], "reason": "queue_full", "stream": "audio"})
    trace.append({"record": "late_obs", "component": "fusion", "group": "quality",
                  "t_ns": 2_500_000_000, "behind_ms": 12.0})
    out = out_folder(tmp_path, trace, [TRIG])
    folder = OutFolder(out)
    folder.refresh()
    lanes = folder.lanes(bins=10)
    face = next(x for x in lanes["lanes"] if x["name"] == "extractor:face#1")
    assert face["count"] == [10] * 10 and face["points"] == 100
    assert face["max"][5] == 130.0 and face["mean"][5] == 40.0 and face["peak"] == 130.0
    assert lanes["drops"]["total"] == 3 and lanes["drops"]["unplaced"] == 1  # audio seq
    assert lanes["drops"]["count"][7] == 2
    assert lanes["late"]["count"][2] == 1
    assert lanes["triggers"]["count"][9] == 1
    zoom = folder.lanes(bins=10, t0=5_000_000_000, t1=6_000_000_000)
    face = next(x for x in zoom["lanes"] if x["name"] == "extractor:face#1")
    assert sum(face["count"]) == 11  # 5.0 s to 6.0 s inclusive, 100 ms apart


def test_paging_is_in_event_time_order_and_at_ns_finds_the_page(tmp_path):
    trigs = [{**TRIG, "t_event_ns": (997 * i) % 1000 * 10_000_000} for i in range(1000)]
    out = out_folder(tmp_path, [], trigs)
    folder = OutFolder(out)
    folder.refresh()
    pages = [folder.triggers(offset, 100)["items"] for offset in range(0, 1000, 100)]
    times = [t["t_event_ns"] for page in pages for t in page]
    assert times == sorted(times) and len(times) == 1000
    at = folder.triggers(limit=100, at_ns=5_005_000_000)
    assert at["offset"] == 500 and at["items"][0]["t_event_ns"] == 5_000_000_000
    assert folder.trigger(1)["t_event_ns"] == trigs[0]["t_event_ns"]
    assert folder.trigger(1001) is None


def test_live_source_state_and_clock_links_follow_the_newest_records(tmp_path):
    def source(event: str | None, **kw) -> dict:
        return {"record": "source", "component": "daemon", "source_id": "cam", "wall_ns": 1,
                **({"event": event} if event else {}), **kw}

    trace = [source("open", path="rtsp://cam/stream", live=True), source("connect"),
             source("first_frame"), source("stall"), source("retry", error="timed out")]
    out = out_folder(tmp_path, trace, [])
    folder = OutFolder(out)
    folder.refresh()
    st = folder.status()
    assert st["source"] == {"source_id": "cam", "path": "rtsp://cam/stream", "live": True}
    assert st["source_state"]["connected"] is False  # a retry leaves it as the stall did
    assert [e["event"] for e in st["source_state"]["events"]] == [
        "open", "connect", "first_frame", "stall", "retry"]
    assert ("the live source is not connected (last event: retry, timed out)"
            in st["problems"])
    append(out / "trace.jsonl", line(source("reconnect", generation=1)) + line({
        "record": "member", "component": "daemon", "event": "clock", "peer": "extractor:face#1",
        "host": "10.200.0.2", "clock_offset_ns": -2_500_000_123, "rtt_ns": 400_000,
        "clock_error_ns": 200_000, "wall_ns": 2}))
    folder.refresh()
    st = folder.status()
    assert st["source_state"]["connected"] is True and st["source_state"]["reconnects"] == 1
    assert not any("not connected" in p for p in st["problems"])
    assert st["links"] == {"daemon -> extractor:face#1": {
        "host": "10.200.0.2", "offset_ms": -2500.000123, "rtt_ms": 0.4, "error_ms": 0.2}}


def test_a_file_source_has_no_connection_state(tmp_path):
    out = out_folder(tmp_path, [{"record": "source", "component": "daemon", "source_id": "f",
                                 "path": "a.mp4", "frames": 10, "wall_ns": 1}], [])
    folder = OutFolder(out)
    folder.refresh()
    assert folder.status()["source_state"] == {"connected": None, "reconnects": 0, "events": []}
