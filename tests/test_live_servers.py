"""The live test sources (tests/live_servers.py) against PyAV: serving, stall, kill, restart.

These pin the PyAV 18.1 behaviours the live source will rely on (tests/LIVE_NOTES.md). Every wait
has a deadline; nothing sleeps; everything is on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import av
import pytest
from live_servers import RtspServer, UdpTsSender, started_rtsp_server, stopped_after

FAST = {"analyzeduration": "0", "probesize": "32", "rtsp_transport": "tcp"}
READ_S = 1.0
pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def rtsp_server(sample) -> Iterator[RtspServer]:
    with started_rtsp_server(sample()) as server:
        yield server


@pytest.fixture
def udp_ts_sender(sample) -> Iterator[UdpTsSender]:
    with stopped_after(UdpTsSender(sample())) as sender:
        yield sender


def read_packets(container: av.container.InputContainer, n: int) -> list[av.Packet]:
    out = []
    for packet in container.demux(container.streams.video[0]):
        out.append(packet)
        if len(out) == n:
            break
    return out


def demux_until_disconnect(container: av.container.InputContainer) -> str:
    """Read until demux() ends or raises; returns how it ended."""
    try:
        for _ in container.demux():
            pass
    except av.error.ExitError:
        return "ExitError"
    except (av.FFmpegError, OSError) as e:
        return type(e).__name__
    return "end"


def test_rtsp_server_serves_the_sample_on_loopback(rtsp_server: RtspServer) -> None:
    assert rtsp_server.url.startswith("rtsp://127.0.0.1:")
    with av.open(rtsp_server.url, options=FAST, timeout=(5.0, READ_S)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == (
            "h264", 640, 360)
        packets = read_packets(c, 30)
    assert packets[0].is_keyframe  # a new media starts at a keyframe
    assert all(p.duration == 0 for p in packets)  # RTP carries no durations
    rtsp_server.wait_feeding()
    assert rtsp_server.status()["pushed_total"] >= 30


def test_stall_is_detected_and_reconnected_within_two_read_timeouts_plus_1s(
        rtsp_server: RtspServer) -> None:
    c = av.open(rtsp_server.url, options=FAST, timeout=(5.0, READ_S))
    read_packets(c, 5)
    rtsp_server.stall()
    t0 = time.monotonic()
    assert demux_until_disconnect(c) == "ExitError"  # the read timeout, RTCP kept it alive
    detected = time.monotonic() - t0
    c.close()
    rtsp_server.resume()
    with av.open(rtsp_server.url, options=FAST, timeout=(5.0, READ_S)) as c2:
        assert read_packets(c2, 1)[0].is_keyframe
    total = time.monotonic() - t0
    assert READ_S <= detected <= 2 * READ_S + 1.0, detected
    assert total <= 2 * READ_S + 1.0, total


def test_server_kill_ends_demux_and_a_restart_on_the_same_port_serves_again(
        rtsp_server: RtspServer) -> None:
    port = rtsp_server.port
    c = av.open(rtsp_server.url, options=FAST, timeout=(5.0, READ_S))
    read_packets(c, 5)
    rtsp_server.kill()
    t0 = time.monotonic()
    assert demux_until_disconnect(c) == "end"  # no exception: demux() just ends
    assert time.monotonic() - t0 < 1.0
    c.close()
    with pytest.raises(ConnectionRefusedError):
        av.open(rtsp_server.url, options=FAST, timeout=(5.0, READ_S))
    rtsp_server.restart()
    assert rtsp_server.port == port
    with av.open(rtsp_server.url, options=FAST, timeout=(5.0, READ_S)) as c2:
        assert read_packets(c2, 1)[0].is_keyframe


def test_kick_closes_the_connection_from_the_server_side(rtsp_server: RtspServer) -> None:
    c = av.open(rtsp_server.url, options=FAST, timeout=(5.0, READ_S))
    read_packets(c, 5)
    assert rtsp_server.kick()["kicked"] == 1
    assert demux_until_disconnect(c) == "end"
    c.close()


def test_udp_ts_sender_is_received_and_a_paused_sender_times_out(
        udp_ts_sender: UdpTsSender) -> None:
    udp_ts_sender.start()
    # default probing: the stream's size is known once the first keyframe (SPS) came (GOP 3 s)
    with av.open(udp_ts_sender.url, timeout=(10.0, READ_S)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.codec_context.width) == ("h264", 640)
        packets = read_packets(c, 10)
        assert all(p.pts is not None and p.dts is not None for p in packets)
        udp_ts_sender.pause()
        t0 = time.monotonic()
        assert demux_until_disconnect(c) == "ExitError"
        assert time.monotonic() - t0 <= 2 * READ_S + 1.0
    assert udp_ts_sender.error is None
