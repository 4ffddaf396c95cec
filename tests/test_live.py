"""Live sources end to end: a real RTSP server on 127.0.0.1 (GStreamer through Debian's Python),
a file played as a camera, and the edges a user hits (a missing camera, a refused URL, bad
options). Everything on this machine; no camera, no GPU.

Loop origins come from the RTSP server itself: it prints CLOCK_MONOTONIC (one clock for every
process here) of file time 0 of every loop it feeds (``RtspServer.loop_origins``), so where a
live event falls in the file is measured, not assumed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import pytest

from helpers import momentbus_cmd, reaped, run_momentbus, wait_for_trace
from live_servers import free_port, rtsp_server, udp_ts_sender  # noqa: F401  (fixtures)
from momentbus.clip.ring import PacketRing, packets_from_file
from momentbus.daemon.live import (Backoff, LiveOptionError, LiveOptions, Mailbox, V4L2Options,
                                   SourceEvent, classify_source, live_source_id, redact)
from momentbus.ipc.framebus import FrameBusClient
from momentbus.ipc.schema import Eof, Frame, Hello

#: The sample's smile: its onset on the file's clock (the file run's smile trigger is at 9.6 s;
#: measured 9.59 s and 9.60 s on the live clock of a --realtime --loop run, two loops).
SMILE_S = 9.6
#: The issue's tolerance on the smile's place in each loop.
TOLERANCE_S = 0.5
FRAME_NS = 1_000_000_000 * 1001 // 24000  # the sample's frame period, 41.7 ms


def records(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines() if line.endswith("}")]


def triggers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]


def frame_times(recs: list[dict]) -> list[tuple[int, int, int]]:
    """(seq, t_ns, generation) of every frame the daemon read, in seq order."""
    reads = [r for r in recs if r.get("record") == "timing" and r.get("stage") == "read"
             and r.get("component") == "daemon"]
    return sorted((r["seq"], r["t_ns"], r["generation"]) for r in reads)


def generation_at(frames: list[tuple[int, int, int]], t_ns: int) -> int:
    """The generation of the last frame at or before ``t_ns``."""
    return next(g for _, t, g in reversed(frames) if t <= t_ns)


def check_clip(out: Path, trig: dict) -> dict:
    """The clip of ``trig`` decodes, shows the frames its sidecar promises, starts within one
    frame of the requested start, holds the post-roll, and was written after it."""
    sidecars = [json.loads(p.read_text()) for p in (out / "clips").glob("*.json")]
    meta = next(m for m in sidecars if m["trig"]["t_event_ns"] == trig["t_event_ns"])
    assert meta["ok"] and meta["source"] == "live_ring" and meta["mode"] == "edit_list", meta
    with av.open(str(out / "clips" / meta["clip"])) as c:
        shown = sum(1 for _ in c.decode(video=0))
    assert shown == meta["shown_frames"] > 0, "the edit list shows exactly the planned frames"
    requested, actual = meta["requested"], meta["actual"]
    if meta["pre_roll_clipped"]["by"] is None:
        assert 0 <= actual["t_start_ns"] - requested["t_start_ns"] <= FRAME_NS, meta
    if meta["cut_short"]["by"] is None:
        assert actual["t_end_ns"] >= requested["t_end_ns"] - FRAME_NS, "the post-roll is in"
    assert meta["written_t_ns"] >= requested["t_end_ns"], "written after its post-roll"
    return meta


# --------------------------------------------------------------------------- pure parts


def test_sources_are_classified_and_urls_redacted() -> None:
    assert classify_source("rtsp://cam.local/stream") == "url"
    assert classify_source("udp://127.0.0.1:5000") == "url"
    assert classify_source("srt://h:1") == "url" and classify_source("https://h/x.m3u8") == "url"
    assert classify_source("/dev/video0") == "v4l2"
    assert classify_source("mic") == "mic" and classify_source("mic:2") == "mic"
    assert classify_source("clip.mp4") == "file" and classify_source("C:/x.mp4") == "file"
    assert redact("rtsp://admin:secret@cam:554/s") == "rtsp://admin:***@cam:554/s"
    assert redact("rtsp://cam/s") == "rtsp://cam/s"
    assert live_source_id("rtsp://cam.local:554/stream/1") == "cam_local_554_stream_1"
    assert live_source_id("/dev/video2") == "video2"


def test_v4l2_options_parse_to_ffmpeg_names() -> None:
    opts = V4L2Options.parse("1280x720", "30000/1001", "yuyv")
    assert opts.av_options() == {"video_size": "1280x720", "framerate": "30000/1001",
                                 "input_format": "yuyv422"}
    assert V4L2Options.parse(None, "30", "mjpeg").av_options() == {
        "framerate": "30", "input_format": "mjpeg"}
    assert V4L2Options().av_options() == {}
    for bad in [("12x", None, None), ("0x10", None, None), (None, "fast", None),
                (None, "0", None), (None, "5000", None), (None, None, "h265")]:
        with pytest.raises(LiveOptionError):
            V4L2Options.parse(*bad)


def test_options_that_do_not_fit_the_source_are_refused() -> None:
    with pytest.raises(LiveOptionError, match="V4L2"):
        LiveOptions(v4l2=V4L2Options.parse("640x480")).check("url")
    with pytest.raises(LiveOptionError, match="file only"):
        LiveOptions(realtime=True).check("url")
    with pytest.raises(LiveOptionError, match="--loop needs --realtime"):
        LiveOptions(loop=True).check("file")
    LiveOptions(realtime=True, loop=True).check("file")
    LiveOptions(v4l2=V4L2Options.parse("640x480")).check("v4l2")


def test_backoff_doubles_to_five_seconds_and_resets_after_a_good_minute() -> None:
    b = Backoff()
    assert [b.next_delay() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    b.connected_for(59.0)
    assert b.next_delay() == 5.0
    b.connected_for(60.0)
    assert b.next_delay() == 0.25


def test_mailbox_drops_only_frames_and_only_the_oldest() -> None:
    box = Mailbox(max_frames=2)
    frames = [Frame(source_id="s", seq=i, pts=i, time_base=Fraction(1, 25), t_ns=i,
                    capture_wall_ns=0, width=1, height=1) for i in range(5)]
    event = SourceEvent("connect", {"generation": 1})
    box.put(frames[0])
    box.put(event)  # anything but a frame is kept
    for f in frames[1:]:
        box.put(f)
    items = box.take(0)
    assert items == [event, frames[3], frames[4]]
    assert box.frames_dropped == 3 and box.take_dropped() == [0, 1, 2]


# --------------------------------------------------------------------------- user mistakes


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("momentbus: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_missing_camera_is_one_line_exit_2(tmp_path: Path) -> None:
    """No V4L2 device here (CI has no camera): the error path is what can be tested."""
    device = "/dev/video97"
    assert not Path(device).exists()
    _one_line_error(run_momentbus("run", device, "--out", str(tmp_path / "o"), timeout=60),
                    device, "no such V4L2 device")
    _one_line_error(run_momentbus("daemon", device, "--bind", f"ipc://{tmp_path}/f",
                                  "--video-size", "640x480", "--input-format", "mjpeg",
                                  timeout=60), "no such V4L2 device")


def test_bad_live_options_are_one_line_exit_2(tmp_path: Path, sample) -> None:
    out = str(tmp_path / "o")
    _one_line_error(run_momentbus("run", "/dev/video97", "--out", out, "--video-size", "12x",
                                  timeout=60), "--video-size")
    _one_line_error(run_momentbus("run", "/dev/video97", "--out", out, "--input-format", "h265",
                                  timeout=60), "--input-format")
    video = str(sample("WolfgangLanger_Pexels.mp4"))
    _one_line_error(run_momentbus("run", video, "--out", out, "--loop", timeout=60),
                    "--loop needs --realtime")
    _one_line_error(run_momentbus("run", video, "--out", out, "--duration", "5", timeout=60),
                    "--duration")


def test_an_unreachable_stream_is_one_line_exit_2(tmp_path: Path) -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    t0 = time.monotonic()
    proc = run_momentbus("run", url, "--out", str(tmp_path / "o"), "--open-timeout", "2",
                         timeout=60)
    _one_line_error(proc, url, "cannot open")
    assert time.monotonic() - t0 < 30


# --------------------------------------------------------------------------- the ring's memory


def test_ring_memory_stays_flat_over_five_minutes_of_looped_packets(sample) -> None:
    """Five minutes of the sample's real packets (H.264 + AAC, 15 loops) pushed through a ring
    with the run's default window: what it holds, and what Python allocated, stop growing once
    the window is full (growth < 5 % from minute 1 to minute 5). In-process: the ring is the
    same object the clip role runs, without five minutes of wall time."""
    descs, packets = packets_from_file(sample("WolfgangLanger_Pexels.mp4"))
    period_ns = max(p.t_ns for p in packets) - min(p.t_ns for p in packets) + FRAME_NS
    ring = PacketRing(max_pre_roll_ns=15_000_000_000, max_bytes=64 << 20)
    ring.start_generation(1, descs)
    tracemalloc.start()
    try:
        at_minute: dict[int, tuple[int, int, int]] = {}
        loop = 0
        while loop * period_ns < 300_000_000_000:
            base = loop * period_ns
            for p in packets:
                ring.push(type(p)(p.data, p.pts, p.dts, p.duration, p.time_base, p.keyframe,
                                  p.t_ns + base, 1, p.stream_index, p.kind))
            loop += 1
            minute = (loop * period_ns) // 60_000_000_000
            if minute >= 1 and minute not in at_minute:
                at_minute[minute] = (tracemalloc.get_traced_memory()[0], ring.nbytes, len(ring))
        first, last = at_minute[1], at_minute[max(at_minute)]
        assert max(at_minute) >= 4
        assert last[0] <= first[0] * 1.05, f"Python memory grew: {first[0]} -> {last[0]} B"
        assert last[1] <= first[1] * 1.05 and last[2] <= first[2] * 1.05, (first, last)
        assert ring.head_t_ns is not None
        assert ring.newest_t_ns - ring.head_t_ns < 15_000_000_000 + 4 * 10 ** 9  # + one GOP
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- RTSP end to end


def _smile_offsets(trigs: list[dict], loops: list[tuple[int, int]]) -> list[tuple[int, float]]:
    """(loop origin, seconds from it) of every smile trigger; ``loops``: (fed from, origin)
    in the order they were fed."""
    out = []
    for t in trigs:
        origin = [o for fed, o in loops if fed <= t["t_event_ns"]][-1]
        out.append((origin, (t["t_event_ns"] - origin) / 1e9))
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rtsp_run_keeps_one_clock_across_two_server_restarts(rtsp_server, tmp_path) -> None:  # noqa: F811
    """`momentbus run rtsp://...` while the server is killed and restarted twice: three
    generations, t_ns strictly increasing through them, the smile once per loop at its place
    in the file, every clip exact and written after its post-roll; Ctrl-C ends it with exit 0."""
    out = tmp_path / "out"
    proc = subprocess.Popen(momentbus_cmd("run", rtsp_server.url, "--out", str(out), "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trace = out / "trace.jsonl"
    with reaped(proc):
        for generation in (1, 2):
            wait_for_trace(proc, trace, lambda r, g=generation: r.get("record") == "clip"
                           and r.get("generation") == g, timeout_s=120)
            rtsp_server.kill()
            rtsp_server.start()  # the same port: the daemon reconnects by itself
        wait_for_trace(proc, trace, lambda r: r.get("record") == "clip"
                       and r.get("generation") == 3, timeout_s=120)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the stream ends, every clip is written
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "connection(s)" in stdout, stdout + stderr

    recs = records(trace)
    frames = frame_times(recs)
    assert {g for _, _, g in frames} >= {1, 2, 3}
    behind = [s for r in recs if r.get("record") == "frame_drop"
              and r.get("reason") == "reader_behind" for s in r["seqs"]]
    summary = next(r for r in recs if r.get("record") == "summary" and r.get("role") == "daemon")
    assert sorted([s for s, _, _ in frames] + behind) == list(range(summary["frames"])), \
        "every frame decoded was published or dropped as reader_behind (traced)"
    times = [t for _, t, _ in frames]
    assert all(b > a for a, b in zip(times, times[1:])), "t_ns strictly increasing"
    connects = [r for r in recs if r.get("record") == "source" and r.get("event") == "connect"]
    assert [r["generation"] for r in connects][:3] == [1, 2, 3]
    ends = {r["generation"]: r["reason"] for r in recs
            if r.get("record") == "source" and r.get("event") == "disconnect"}
    assert ends[1] == ends[2] == "end_of_stream"

    smiles = [t for t in triggers(out) if t["rule"] == "smile"]
    offsets = _smile_offsets(smiles, rtsp_server.loop_origins())
    assert len({o for o, _ in offsets}) == len(offsets), f"one smile per loop: {offsets}"
    # the first connection joins the server's stream mid-file (where `run`'s probe left it,
    # at a keyframe, after the models loaded): a loop joined less than 3 s before the smile has
    # too little of her face before it to judge by; later connections start at the file's start
    first_of = {g: t for _, t, g in reversed(frames)}  # each generation's first frame
    judged = [(o, s) for (o, s), t in zip(offsets, smiles)
              if first_of[generation_at(frames, t["t_event_ns"])] <= o + (SMILE_S - 3) * 1e9]
    assert len(judged) >= 2, offsets
    assert all(abs(s - SMILE_S) <= TOLERANCE_S for _, s in judged), offsets
    by_generation = {}
    for t in smiles:
        by_generation.setdefault(generation_at(frames, t["t_event_ns"]), []).append(t)
    assert set(by_generation) >= {1, 2, 3}
    for t in smiles:
        meta = check_clip(out, t)
        assert meta["generation"] in by_generation and t in by_generation[meta["generation"]]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stall_is_detected_and_reconnected_within_two_read_timeouts_plus_one_second(
        rtsp_server, tmp_path, addr) -> None:  # noqa: F811
    read_s = 1.0
    trace = tmp_path / "daemon.jsonl"
    proc = subprocess.Popen(momentbus_cmd("daemon", rtsp_server.url, "--bind", addr("frames"),
                                          "--read-timeout", str(read_s), "--trace-file",
                                          str(trace)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with reaped(proc):
        wait_for_trace(proc, trace, lambda r: r.get("event") == "first_frame", timeout_s=30)
        stalled_at = time.time_ns()
        rtsp_server.hang()  # the session stops sending, its connection and RTCP stay up
        stall = wait_for_trace(proc, trace, lambda r: r.get("event") == "stall", 30)[0]
        again = wait_for_trace(proc, trace, lambda r: r.get("event") == "connect"
                               and r.get("generation") == 2, 30)[0]
        wait_for_trace(proc, trace, lambda r: r.get("event") == "first_frame"
                       and r.get("generation") == 2, 30)
        proc.send_signal(signal.SIGTERM)  # a live daemon ends its stream on SIGTERM: exit 0
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    limit_ns = int((2 * read_s + 1) * 1e9)
    assert stall["wall_ns"] - stalled_at <= limit_ns, "stall detected in time"
    assert again["wall_ns"] - stalled_at <= limit_ns, "reconnected in time"
    assert stall["generation"] == 1 and stall["read_timeout_s"] == read_s
    recs = records(trace)
    summary = next(r for r in recs if r.get("record") == "summary")
    assert summary["stalls"] == 1 and summary["generations"] == 2 and summary["reason"] == "stopped"
    disconnect = next(r for r in recs if r.get("event") == "disconnect")
    assert disconnect["reason"] == "stall"


@pytest.mark.timeout(60)
def test_mpegts_over_udp_starts_at_a_keyframe(udp_ts_sender, tmp_path, addr) -> None:  # noqa: F811
    """A UDP receiver joins mid-GOP and the fast open has no frame size yet: the probe decodes
    until a frame, the reader skips what precedes the first keyframe (counted), no decode
    error, frames and packets flow."""
    udp_ts_sender.start()
    trace = tmp_path / "daemon.jsonl"
    proc = run_momentbus("daemon", udp_ts_sender.url, "--bind", addr("frames"), "--duration", "5",
                         "--trace-file", str(trace), timeout=60)
    assert proc.returncode == 0, proc.stderr
    recs = records(trace)
    opened = next(r for r in recs if r.get("event") == "open")
    assert (opened["width"], opened["height"]) == (640, 360)
    ended = next(r for r in recs if r.get("event") == "disconnect")
    assert ended["reason"] == "stopped" and ended["decode_errors"] == 0
    assert ended["frames"] > 0 and ended["packets"] > ended["frames"] - 1
    assert not [r for r in recs if r.get("event") == "decode_error"]


# --------------------------------------------------------------------------- a file as a camera


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_file_played_as_a_camera_smiles_once_per_loop(sample, tmp_path) -> None:
    out = tmp_path / "out"
    proc = run_momentbus("run", str(sample("WolfgangLanger_Pexels.mp4")), "--realtime", "--loop",
                         "--duration", "44", "--out", str(out), "--quiet", timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(out / "trace.jsonl")
    frames = frame_times(recs)
    times = [t for _, t, _ in frames]
    assert all(b > a for a, b in zip(times, times[1:])) and {g for *_, g in frames} == {1}
    first = next(r for r in recs if r.get("event") == "first_frame")["t_ns"]
    loops = [r for r in recs if r.get("record") == "source" and r.get("event") == "loop"]
    assert loops, "the file was looped"
    period_ns = int(loops[0]["offset_s"] * 1e9)
    assert abs(period_ns - 19_686_000_000) < 50_000_000
    origins = [(first + k * period_ns,) * 2 for k in range(len(loops) + 1)]
    smiles = [t for t in triggers(out) if t["rule"] == "smile"]
    offsets = _smile_offsets(smiles, origins)
    assert len(smiles) == 2 and len({o for o, _ in offsets}) == 2, offsets
    assert all(abs(s - SMILE_S) <= TOLERANCE_S for _, s in offsets), offsets
    for t in smiles:
        meta = check_clip(out, t)
        assert meta["audio_packets"] > 0, "the file's AAC rides along into the clip"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_latest_drops_are_counted_when_a_reader_is_slower_than_the_source(sample, tmp_path,
                                                                          addr) -> None:
    """A member that takes ~4 frame periods per frame on a --realtime file: every frame the
    daemon read is either delivered to it or reported as a `latest` drop, in its gaps and in
    the trace, exactly once."""
    trace = tmp_path / "daemon.jsonl"
    frames_addr = addr("frames")
    proc = subprocess.Popen(momentbus_cmd("daemon", str(sample("WolfgangLanger_Pexels.mp4")),
                                          "--bind", frames_addr, "--realtime", "--duration", "4",
                                          "--expect", "slow", "--trace-file", str(trace)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    received: list[int] = []
    gaps: list[tuple[int, int, str]] = []
    with reaped(proc):
        hello = Hello(component="test:slow#1", group="slow", pid=1, policy="auto",
                      incarnation=time.time_ns())
        with FrameBusClient(frames_addr, hello, credits=1, daemon_timeout_s=30) as client:
            client.join(30)
            early = None
            while True:
                item, early = early or client.recv(100), None
                if item is None:
                    continue
                gaps += [(g.first, g.last, g.reason) for g in item.gaps]
                if isinstance(item, Eof):
                    break
                received.append(item.seq)
                hold_until = item.t_ns + 4 * FRAME_NS  # slower than the source: 6 fps of 24
                while early is None and time.monotonic_ns() < hold_until:
                    early = client.recv(5)  # no credit, so only the Eof can come meanwhile
                client.done()
            client.leave()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    recs = records(trace)
    summary = next(r for r in recs if r.get("record") == "summary")
    read = summary["frames"]
    dropped = [s for first, last, reason in gaps if reason == "latest"
               for s in range(first, last + 1)]
    behind = [s for r in recs if r.get("record") == "frame_drop"
              and r.get("reason") == "reader_behind" for s in r["seqs"]]  # never published
    assert dropped and len(received) < read / 2
    assert sorted(received + dropped + behind) == list(range(read)), \
        "each frame read is delivered or dropped, once"
    traced = sorted(s for r in recs if r.get("record") == "frame_drop"
                    and r.get("reason") == "latest" for s in r["seqs"])
    assert traced == sorted(dropped)
    assert summary["groups"]["slow"] == {"delivered": len(received), "dropped": len(dropped)}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_second_ctrl_c_quits_a_live_run_at_once(sample, tmp_path) -> None:
    """Through the run's own stop flag (two SIGINTs sent back to back can merge into one
    signal in the kernel; the flag counts what the handler saw): 130, nothing left running."""
    import threading

    from momentbus.lifecycle import StopFlag
    from momentbus.run import RunOptions, run_pipeline

    out = tmp_path / "out"
    stop = StopFlag()
    opts = RunOptions(source=str(sample("WolfgangLanger_Pexels.mp4")), out_dir=str(out),
                      quiet=True, summary=False, live=LiveOptions(realtime=True, loop=True))
    result: list = []
    thread = threading.Thread(target=lambda: result.append(run_pipeline(opts, stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        trace = out / "trace.jsonl"
        while not (trace.exists() and '"first_frame"' in trace.read_text()):
            assert thread.is_alive() and time.monotonic() < deadline
            thread.join(0.05)
        stop.set()
        stop.set()
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and result[0].exit_code == 130
