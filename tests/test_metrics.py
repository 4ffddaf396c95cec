"""Prometheus metrics from trace records (traces/metrics.py): synthetic records, the HTTP endpoint,
and a real `momentbus run` whose trace gives the same totals as `momentbus trace summary`."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import momentbus_cmd, run_momentbus
from momentbus.traces.binds import BindError, is_loopback, parse_bind
from momentbus.traces.metrics import (SYNC_DELAY_BUCKETS, TraceMetrics, readiness,
                                      serve_metrics)
from momentbus.lifecycle import StopFlag
from momentbus.run import RunOptions, run_pipeline

# -- synthetic records (shapes as the roles write them today) --------------------------------


def timing_read(seq: int) -> dict:
    return {"record": "timing", "wall_ns": 1, "component": "daemon", "source_id": "s",
            "stage": "read", "seq": seq, "t_ns": seq * 41_708_333, "read_ms": 1.5}


def timing_process(component: str, seq: int, ms: float, latency_ms: float = 50.0) -> dict:
    return {"record": "timing", "wall_ns": 1, "component": component, "source_id": "s",
            "seq": seq, "t_ns": seq * 41_708_333, "stage": "process", "process_ms": ms,
            "wait_ms": 1.0, "latency_ms": latency_ms, "gaps": None}


def member(component: str, event: str, group: str, who: str | None = None, **kw) -> dict:
    r = {"record": "member", "wall_ns": 1, "component": component, "source_id": "s",
         "event": event, "group": group, **kw}
    if who is not None:
        r["member"] = who
    return r


@pytest.fixture
def metrics() -> TraceMetrics:
    return TraceMetrics()


def test_frames_triggers_and_clips_are_counted_by_label(metrics):
    metrics.observe_many([timing_read(i) for i in range(5)])
    metrics.observe_many([timing_process("extractor:face#1", i, 30.0) for i in range(3)])
    metrics.observe(timing_process("extractor:quality#1", 0, 0.6))
    metrics.observe({"record": "trigger", "component": "fusion", "rule": "smile"})
    metrics.observe({"record": "trigger", "component": "fusion", "rule": "wave"})
    metrics.observe({"record": "trigger", "component": "fusion", "rule": "smile"})
    metrics.observe({"record": "clip", "component": "clip", "rule": "smile", "cut_ms": 27.3})
    metrics.observe({"record": "error", "component": "clip", "where": "clip", "rule": "wave",
                     "error": "ClipError: no video"})
    v = metrics.value
    assert v("momentbus_frames_read_total", {"component": "daemon"}) == 5
    assert v("momentbus_frames_processed_total", {"component": "extractor:face#1"}) == 3
    assert v("momentbus_frames_processed_total", {"component": "extractor:quality#1"}) == 1
    assert v("momentbus_triggers_total", {"rule": "smile"}) == 2
    assert v("momentbus_triggers_total", {"rule": "wave"}) == 1
    assert v("momentbus_clips_written_total", {"rule": "smile"}) == 1
    assert v("momentbus_clips_failed_total", {"rule": "wave"}) == 1
    assert v("momentbus_errors_total", {"component": "clip", "where": "clip"}) == 1
    assert v("momentbus_trace_records_total", {"record": "timing"}) == 9


def test_histograms_take_durations_in_seconds(metrics):
    metrics.observe(timing_process("extractor:face#1", 0, 34.0, latency_ms=180.0))
    metrics.observe(timing_read(0))
    labels = {"component": "extractor:face#1", "stage": "process"}
    assert metrics.value("momentbus_processing_seconds_count", labels) == 1
    assert math.isclose(metrics.value("momentbus_processing_seconds_sum", labels), 0.034)
    assert metrics.value("momentbus_processing_seconds_bucket", {**labels, "le": "0.025"}) == 0
    assert metrics.value("momentbus_processing_seconds_bucket", {**labels, "le": "0.05"}) == 1
    lat = {"component": "extractor:face#1"}
    assert metrics.value("momentbus_latency_seconds_bucket", {**lat, "le": "0.25"}) == 1
    assert metrics.value("momentbus_latency_seconds_bucket", {**lat, "le": "0.1"}) == 0
    read = {"component": "daemon", "stage": "read"}
    assert math.isclose(metrics.value("momentbus_processing_seconds_sum", read), 0.0015)


def test_sync_delay_is_observed_once_per_group_waited_for(metrics):
    assert SYNC_DELAY_BUCKETS[0] == 0.001 and SYNC_DELAY_BUCKETS[-1] == 5.0
    metrics.observe({"record": "sync_delay", "component": "fusion", "member": "extractor:quality#1",
                     "group": "quality", "seq": 3, "t_ns": 0, "delay_ms": 165.0,
                     "waiting_for": ["face", "pose"]})
    for who in ("face", "pose"):
        labels = {"group": "quality", "waiting_for": who}
        assert metrics.value("momentbus_sync_delay_seconds_count", labels) == 1
        assert metrics.value("momentbus_sync_delay_seconds_bucket", {**labels, "le": "0.25"}) == 1
        assert metrics.value("momentbus_sync_delay_seconds_bucket", {**labels, "le": "0.1"}) == 0


def test_drops_count_one_per_seq_by_group_and_reason(metrics):
    metrics.observe({"record": "frame_drop", "component": "daemon", "group": "face",
                     "seqs": [4, 5, 6], "reason": "latest"})
    metrics.observe({"record": "frame_drop", "component": "daemon", "group": "face",
                     "seqs": [9], "reason": "member_lost"})
    metrics.observe({"record": "frame_drop", "component": "daemon", "reason": "queue_full"})
    assert metrics.value("momentbus_frames_dropped_total",
                         {"group": "face", "reason": "latest"}) == 3
    assert metrics.value("momentbus_frames_dropped_total",
                         {"group": "face", "reason": "member_lost"}) == 1
    # no group: the component that dropped it, one frame
    assert metrics.value("momentbus_frames_dropped_total",
                         {"group": "daemon", "reason": "queue_full"}) == 1


def test_bad_message_totals_at_close_never_double_count(metrics):
    # a role traces the first of each error type, then its totals when it closes
    metrics.observe({"record": "bad_message", "component": "fusion", "error_type": "DecodeError",
                     "error": "x"})
    labels = {"component": "fusion", "error_type": "DecodeError"}
    assert metrics.value("momentbus_bad_messages_total", labels) == 1
    metrics.observe({"record": "summary", "component": "fusion", "role": "fusion",
                     "bad_messages": {"DecodeError": 4}})
    metrics.observe({"record": "bad_message", "component": "fusion",
                     "counts": {"DecodeError": 4, "VersionError": 2}})
    assert metrics.value("momentbus_bad_messages_total", labels) == 4
    assert metrics.value("momentbus_bad_messages_total",
                         {"component": "fusion", "error_type": "VersionError"}) == 2
    assert metrics.value("momentbus_role_finished", {"component": "fusion"}) == 1


@pytest.mark.parametrize("record, reason", [
    ("not a dict", "not_an_object"),
    (["record", "timing"], "not_an_object"),
    (None, "not_an_object"),
    ({"wall_ns": 1}, "no_type"),
    ({"record": 7}, "no_type"),
    ({"record": "timing", "stage": "process", "process_ms": "fast"}, "bad_field"),
    ({"record": "timing", "stage": "process", "process_ms": float("nan")}, "bad_field"),
    ({"record": "timing", "stage": "process", "process_ms": -3}, "bad_field"),
    ({"record": "sync_delay", "delay_ms": 5, "waiting_for": "face"}, "bad_field"),
    ({"record": "watermark", "group": "face", "lag_ms": "late"}, "bad_field"),
    ({"record": "source", "event": 7}, "bad_field"),
    ({"record": "bad_message", "counts": {"DecodeError": "many"}}, "bad_field"),
])
def test_malformed_records_are_counted_not_raised(metrics, record, reason):
    metrics.observe(record)
    assert metrics.value("momentbus_trace_records_malformed_total", {"reason": reason}) == 1
    # and nothing else moved
    assert metrics.total("momentbus_frames_processed_total") == 0


def test_unknown_record_types_are_counted_as_other(metrics):
    metrics.observe({"record": "hologram", "component": "x"})
    assert metrics.value("momentbus_trace_records_total", {"record": "other"}) == 1
    assert metrics.value("momentbus_trace_records_malformed_total", {"reason": "no_type"}) is None


def test_member_state_follows_join_idle_rejoin_leave(metrics):
    def state(s: str) -> float | None:
        return metrics.value("momentbus_member_state", {
            "component": "fusion", "group": "face", "member": "extractor:face#1", "state": s})

    for event, expected in [("join", "joined"), ("idle", "idle"), ("rejoin", "joined"),
                            ("end", "left")]:
        metrics.observe(member("fusion", event, "face", "extractor:face#1"))
        assert state(expected) == 1
        assert sum(state(s) for s in ("joined", "idle", "left")) == 1
    assert metrics.value("momentbus_member_events_total",
                         {"component": "fusion", "event": "join"}) == 1
    # an extractor reports about itself (no `member` field)
    metrics.observe(member("extractor:pose#1", "ready", "pose"))
    assert metrics.value("momentbus_member_state", {
        "component": "extractor:pose#1", "group": "pose", "member": "extractor:pose#1",
        "state": "joined"}) == 1


def test_records_of_live_sources_watermarks_and_clock_offsets(metrics):
    src = {"source_id": "cam1"}
    metrics.observe({"record": "source", "component": "daemon", "source_id": "cam1",
                     "event": "connect", "generation": 0})
    assert metrics.value("momentbus_source_connected", src) == 1
    metrics.observe({"record": "source", "component": "daemon", "source_id": "cam1",
                     "event": "stall"})
    assert metrics.value("momentbus_source_connected", src) == 0
    metrics.observe({"record": "source", "component": "daemon", "source_id": "cam1",
                     "event": "reconnect", "generation": 1})
    assert metrics.value("momentbus_source_connected", src) == 1
    assert metrics.value("momentbus_source_reconnects_total", src) == 1
    metrics.observe({"record": "watermark", "component": "fusion", "group": "face",
                     "lag_ms": 120.0, "watermark_ns": 5})
    assert math.isclose(metrics.value("momentbus_watermark_lag_seconds", {"group": "face"}), 0.12)
    for event in ("retry", "loop", "reanchor"):  # say nothing about the connection
        metrics.observe({"record": "source", "component": "daemon", "source_id": "cam1",
                         "event": event})
    assert metrics.value("momentbus_source_connected", src) == 1
    metrics.observe({"record": "source", "component": "daemon", "source_id": "cam1",
                     "event": "connect_failed"})
    assert metrics.value("momentbus_source_connected", src) == 0
    metrics.observe({"record": "watermark", "component": "fusion", "group": "pose",
                     "lag_ms": None, "watermark_ns": None})  # nobody joined: no lag yet
    assert metrics.value("momentbus_watermark_lag_seconds", {"group": "pose"}) is None
    metrics.observe(member("daemon", "clock", "face", "extractor:face#1", peer="extractor:face#1",
                           host="10.200.0.2", clock_offset_ns=-2_500_000, rtt_ns=400_000))
    link = {"component": "daemon", "peer": "extractor:face#1", "host": "10.200.0.2"}
    assert math.isclose(metrics.value("momentbus_clock_offset_seconds", link), -0.0025)
    assert math.isclose(metrics.value("momentbus_clock_rtt_seconds", link), 0.0004)
    assert metrics.total("momentbus_trace_records_malformed_total") == 0


def test_readiness_needs_every_expected_group_joined():
    members = {"extractor:face#1": ("face", "joined")}
    answer = readiness(members, {}, ["face", "quality"])
    assert not answer.ready and "quality" in answer.reason and "face" not in answer.reason
    members["extractor:quality#1"] = ("quality", "joined")
    assert readiness(members, {}, ["face", "quality"]).ready
    members["extractor:quality#1"] = ("quality", "idle")
    assert not readiness(members, {}, ["face", "quality"]).ready


def test_readiness_of_a_live_source_needs_it_connected():
    members = {"extractor:face#1": ("face", "joined")}
    assert "source not connected" in readiness(members, {}, ["face"], live_source=True).reason
    assert not readiness(members, {"cam": False}, ["face"], live_source=True).ready
    assert readiness(members, {"cam": True}, ["face"], live_source=True).ready


def test_readiness_takes_the_newest_record_about_a_member(metrics):
    # merged run: the daemon, fusion and the extractor all report; the newest wins
    metrics.observe(member("extractor:face#1", "ready", "face"))
    metrics.observe(member("daemon", "join", "face", "extractor:face#1"))
    assert metrics.readiness(["face"]).ready
    metrics.observe(member("extractor:face#1", "leave", "face"))
    assert not metrics.readiness(["face"]).ready


def test_observe_is_thread_safe(metrics):
    def feed() -> None:
        for i in range(2000):
            metrics.observe(timing_process("extractor:face#1", i, 1.0))
            metrics.observe({"record": "bad_message", "component": "fusion",
                             "error_type": "DecodeError"})

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    labels = {"component": "extractor:face#1"}
    assert metrics.value("momentbus_frames_processed_total", labels) == 8000
    assert metrics.value("momentbus_processing_seconds_count",
                         {**labels, "stage": "process"}) == 8000
    assert metrics.value("momentbus_bad_messages_total",
                         {"component": "fusion", "error_type": "DecodeError"}) == 8000


def test_each_instance_owns_its_registry():
    a, b = TraceMetrics(), TraceMetrics(process_metrics=True)
    a.observe(timing_read(0))
    assert b.value("momentbus_frames_read_total", {"component": "daemon"}) is None
    assert b.value("process_cpu_seconds_total") is not None


# -- bind addresses ------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)),
    ("localhost:8080", ("localhost", 8080)), ("0.0.0.0:1", ("0.0.0.0", 1)),
])
def test_parse_bind(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["9464", ":9464", "host:port", "127.0.0.1:70000", "::1:9464"])
def test_parse_bind_rejects_malformed_addresses(text):
    with pytest.raises(BindError):
        parse_bind(text)


def test_only_loopback_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.org"]))


# -- the HTTP endpoint -----------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def served():
    """``served(metrics, **kw)`` -> a running endpoint on a free loopback port; all closed."""
    servers = []

    def start(metrics: TraceMetrics, **kw):
        s = serve_metrics("127.0.0.1:0", metrics, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def test_scrape_is_prometheus_text(served, metrics):
    metrics.observe_many([timing_read(i) for i in range(3)])
    metrics.observe(timing_process("extractor:face#1", 0, 12.0))
    server = served(metrics)
    assert server.port > 0
    status, text = get(server.url + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    read = [s for s in families["momentbus_frames_read"].samples
            if s.name == "momentbus_frames_read_total"]
    assert read[0].labels == {"component": "daemon"} and read[0].value == 3
    assert families["momentbus_processing_seconds"].type == "histogram"


def test_healthz_and_readyz_503_then_200_as_members_join(served, metrics):
    server = served(metrics, expected_groups=["face", "quality"])
    assert get(server.url + "/healthz") == (200, "ok\n")
    status, reason = get(server.url + "/readyz")
    assert status == 503 and "face" in reason and "quality" in reason
    metrics.observe(member("fusion", "join", "face", "extractor:face#1"))
    status, reason = get(server.url + "/readyz")
    assert status == 503 and reason.strip() == "waiting for group(s) quality"
    metrics.observe(member("fusion", "join", "quality", "extractor:quality#1"))
    status, reason = get(server.url + "/readyz")
    assert status == 200 and reason.startswith("ready")
    assert get(server.url + "/nothing")[0] == 404


def test_close_frees_the_port(metrics):
    server = serve_metrics("127.0.0.1:0", metrics)
    port = server.port
    assert get(server.url + "/healthz")[0] == 200
    server.close()
    with socket.create_server(("127.0.0.1", port)):
        pass  # the port is free again
    server.close()  # idempotent


def test_a_port_in_use_is_a_bind_error_naming_it(metrics):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(BindError, match=f"127.0.0.1:{port}"):
            serve_metrics(f"127.0.0.1:{port}", metrics)


# -- a real run: scraped during the run, and its totals equal the trace summary's -------------


@pytest.fixture(scope="module")
def scraped_run(sample, tmp_path_factory):
    """The sample's run fed into TraceMetrics behind serve_metrics, as `momentbus run --metrics`
    does (run_pipeline's ``metrics``), scraped during the run and once more after it."""
    video = sample("WolfgangLanger_Pexels.mp4")
    out = tmp_path_factory.mktemp("metrics-run") / "out"
    metrics = TraceMetrics()
    server = serve_metrics("127.0.0.1:0", metrics, expected_groups=["face", "quality"])
    ready_seen: list[int] = []
    mid_run_frames: list[float] = []
    result: list = []
    opts = RunOptions(source=str(video), out_dir=str(out), quiet=True, summary=False,
                      workers="1")
    run = threading.Thread(target=lambda: result.append(run_pipeline(opts, StopFlag(), metrics)),
                           daemon=True)
    try:
        run.start()
        while run.is_alive():
            status, _ = get(server.url + "/readyz")
            if not ready_seen or ready_seen[-1] != status:
                ready_seen.append(status)
            if status == 200 and not mid_run_frames:
                _, text = get(server.url + "/metrics")
                mid_run_frames.append(sum(
                    s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == "momentbus_frames_read_total"))
            run.join(0.05)  # the run's end is the event; this bounds each poll
        _, final_text = get(server.url + "/metrics")
        final_ready = get(server.url + "/readyz")
    finally:
        run.join(120)
        server.close()
    assert result and result[0].exit_code == 0
    summary = run_momentbus("trace", "summary", str(out / "trace.jsonl"), "--json", timeout=60)
    assert summary.returncode == 0, summary.stderr
    return {"metrics": metrics, "summary": json.loads(summary.stdout), "ready": ready_seen,
            "mid_run_frames": mid_run_frames, "final_text": final_text,
            "final_ready": final_ready, "out": out}


@pytest.mark.slow
def test_readyz_goes_503_to_200_as_the_run_members_join(scraped_run):
    seen = scraped_run["ready"]
    assert seen[0] == 503 and 200 in seen, seen
    # at the end every member left: not ready any more
    assert scraped_run["final_ready"][0] == 503
    assert "waiting for group(s)" in scraped_run["final_ready"][1]


@pytest.mark.slow
def test_counters_during_the_run_grow_to_the_summary(scraped_run):
    total = scraped_run["summary"]["frames_read"]
    assert scraped_run["mid_run_frames"], "scraped while the members were joined"
    assert 0 <= scraped_run["mid_run_frames"][0] < total


@pytest.mark.slow
def test_counters_equal_the_trace_summary(scraped_run):
    m, summary = scraped_run["metrics"], scraped_run["summary"]
    assert summary["frames_read"] == 472
    assert m.total("momentbus_frames_read_total") == summary["frames_read"]
    for comp, c in summary["components"].items():
        assert m.value("momentbus_frames_processed_total", {"component": comp}) == c["frames"]
        assert m.value("momentbus_processing_seconds_count",
                       {"component": comp, "stage": "process"}) == c["frames"]
    assert set(summary["components"]) == {"extractor:face#1", "extractor:quality#1"}
    assert m.total("momentbus_triggers_total") == len(summary["triggers"]) >= 1
    for rule in {t["rule"] for t in summary["triggers"]}:
        assert m.value("momentbus_triggers_total", {"rule": rule}) == sum(
            1 for t in summary["triggers"] if t["rule"] == rule)
    assert m.total("momentbus_clips_written_total") == len(summary["clips"]) >= 1
    clips_on_disk = list((scraped_run["out"] / "clips").glob("*.mp4"))
    assert len(clips_on_disk) == len(summary["clips"])
    assert m.total("momentbus_frames_dropped_total") == sum(summary["drops"].values())
    assert m.total("momentbus_late_observations_total") == sum(summary["late_obs"].values())
    assert m.total("momentbus_trace_records_malformed_total") == 0


@pytest.mark.slow
def test_histograms_of_the_run_have_samples(scraped_run):
    m, summary = scraped_run["metrics"], scraped_run["summary"]
    for comp in summary["components"]:
        assert m.value("momentbus_latency_seconds_count", {"component": comp}) > 0
    for who, d in summary["sync_delays"].items():
        assert m.total("momentbus_sync_delay_seconds_count", waiting_for=who) == d["count"]
    assert m.value("momentbus_clip_cut_seconds_count") == len(summary["clips"])
    # the final scrape is valid exposition text with the same totals
    families = {f.name: f for f in text_string_to_metric_families(scraped_run["final_text"])}
    assert sum(s.value for s in families["momentbus_triggers"].samples
               if s.name == "momentbus_triggers_total") == len(summary["triggers"])


# -- --metrics on the command line ---------------------------------------------------------


def test_a_role_serves_its_metrics_health_and_readiness(tmp_path):
    """`momentbus fusion --metrics`: the URL on stderr, /healthz 200 and /readyz 503 (nobody
    joined) while it waits for its members; SIGTERM ends it cleanly."""
    proc = subprocess.Popen(
        momentbus_cmd("fusion", "--bind", f"ipc://{tmp_path}/obs", "--out", str(tmp_path),
                      "--expect", "face", "--metrics", "127.0.0.1:0"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # the first line it prints, once it listens
        assert line.startswith("momentbus: metrics at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].strip().removesuffix("/metrics")
        assert get(url + "/healthz") == (200, "ok\n")
        status, reason = get(url + "/readyz")
        assert status == 503 and "waiting for group(s) face" in reason
        status, text = get(url + "/metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"momentbus_trace_records", "process_resident_memory_bytes"} <= names
        proc.terminate()
        assert proc.wait(30) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("command", ["run", "fusion"])
def test_a_non_loopback_metrics_address_needs_insecure(command, tmp_path):
    args = (["run", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out")]
            if command == "run" else ["fusion", "--bind", f"ipc://{tmp_path}/obs",
                                      "--out", str(tmp_path)])
    r = run_momentbus(*args, "--metrics", "0.0.0.0:0", timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "momentbus: error: --metrics 0.0.0.0:0: not a loopback address; the metrics show the "
        "run to anyone who can reach the port: add --insecure to serve them there anyway"]
