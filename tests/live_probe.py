"""Measure how PyAV behaves on live inputs served by tests/live_servers.py (not a test).

    uv run python tests/live_probe.py [--repeat 5] [--only rtsp|udp]

Prints one JSON line per measurement; tests/LIVE_NOTES.md records a run. Everything is on
127.0.0.1. Needs the apt packages in live_servers.APT_COMMAND for the RTSP part.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import av

sys.path.insert(0, str(Path(__file__).parent))
from live_servers import RtspServer, UdpTsSender, rtsp_unavailable_reason  # noqa: E402
from momentbus.daemon import samples  # noqa: E402

FAST = {"analyzeduration": "0", "probesize": "32"}
TCP = {"rtsp_transport": "tcp"}


def out(what: str, **fields: Any) -> None:
    print(json.dumps({"what": what, **fields}, default=str), flush=True)


def ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 1)


def open_ms(url: str, options: dict[str, str], timeout: Any, repeat: int) -> dict[str, Any]:
    times = []
    for _ in range(repeat):
        t0 = time.monotonic()
        c = av.open(url, options=options, timeout=timeout)
        times.append(ms(t0))
        first = next(iter(c.demux(c.streams.video[0])))
        assert first is not None
        c.close()
    return {"median_ms": statistics.median(times), "all_ms": times}


def first_packets(c: av.container.InputContainer, n: int) -> list[dict[str, Any]]:
    rows = []
    for p in c.demux(c.streams.video[0]):
        rows.append({"pts": p.pts, "dts": p.dts, "duration": p.duration, "key": p.is_keyframe,
                     "size": p.size, "tb": str(p.time_base)})
        if len(rows) == n:
            break
    return rows


def demux_until_end(c: av.container.InputContainer, t_event: list[float]) -> dict[str, Any]:
    """Demux until the iterator ends or raises; time measured from t_event[0]."""
    n = 0
    try:
        for _ in c.demux():
            n += 1
        return {"how": "end of demux()", "after_ms": ms(t_event[0]), "packets_after": n}
    except (av.FFmpegError, OSError) as e:
        return {"how": type(e).__name__, "errno": getattr(e, "errno", None), "msg": str(e)[:120],
                "after_ms": ms(t_event[0]), "packets_after": n}


def probe_rtsp(media: Path, repeat: int) -> None:
    server = RtspServer(media).start()
    url = server.url
    try:
        out("rtsp open default options, tcp", **open_ms(url, TCP, None, repeat))
        out("rtsp open analyzeduration=0 probesize=32, tcp",
            **open_ms(url, TCP | FAST, None, repeat))
        out("rtsp open fast + timeout=(5, 2), tcp",
            **open_ms(url, TCP | FAST, (5.0, 2.0), repeat))
        out("rtsp open fast, no rtsp_transport (UDP tried first; server is TCP-only)",
            **open_ms(url, FAST, (5.0, 2.0), min(repeat, 3)))

        c = av.open(url, options=TCP | FAST, timeout=(5.0, 2.0))
        v = c.streams.video[0]
        out("rtsp stream", codec=v.codec_context.name, time_base=str(v.time_base),
            width=v.codec_context.width, height=v.codec_context.height,
            extradata=len(v.codec_context.extradata or b""), start_time=v.start_time,
            container_start_time=c.start_time, start_time_realtime=c.start_time_realtime)
        out("rtsp first packets", packets=first_packets(c, 12))
        # start_time_realtime: when does it appear; durations and keyframes over 200 packets
        t0 = time.monotonic()
        seen_rt = None
        durations = set()
        keys = []
        none_pts = none_dts = 0
        i = 0
        for p in c.demux(v):
            i += 1
            durations.add(p.duration)
            none_pts += p.pts is None
            none_dts += p.dts is None
            if p.is_keyframe:
                keys.append(i)
            if seen_rt is None and c.start_time_realtime not in (None, 0):
                seen_rt = {"after_ms_of_demux": ms(t0), "packet": i,
                           "start_time_realtime_us": c.start_time_realtime,
                           "wall_us_now": time.time_ns() // 1000}
            if i >= 200:
                break
        out("rtsp start_time_realtime", first_seen=seen_rt, at_end=c.start_time_realtime)
        out("rtsp packets 13..212", durations=sorted(durations, key=str), none_pts=none_pts,
            none_dts=none_dts, keyframe_packet_numbers=keys)

        c.close()
        for run in range(3):  # when RTCP's first sender report lands varies per connection
            c2 = av.open(url, options=TCP | FAST, timeout=(5.0, 2.0))
            t0 = time.monotonic()
            n = 0
            for _ in c2.demux(c2.streams.video[0]):
                n += 1
                if c2.start_time_realtime or time.monotonic() - t0 > 12:
                    break
            out("rtsp start_time_realtime, new connection", run=run, after_ms=ms(t0), packets=n,
                minus_wall_now_us=(c2.start_time_realtime - time.time_ns() // 1000
                                   if c2.start_time_realtime else None))
            c2.close()
        c = av.open(url, options=TCP | FAST, timeout=(5.0, 2.0))
        first_packets(c, 5)

        # server kill while demuxing
        t_kill = [0.0]
        server.kill()
        t_kill[0] = time.monotonic()
        out("rtsp demux() after server SIGKILL", **demux_until_end(c, t_kill))
        c.close()

        # reopen while the server is down
        t0 = time.monotonic()
        try:
            av.open(url, options=TCP | FAST, timeout=(5.0, 2.0))
            out("rtsp reopen while down", result="opened?!")
        except (av.FFmpegError, OSError) as e:
            out("rtsp reopen while down", exception=type(e).__name__,
                errno=getattr(e, "errno", None), after_ms=ms(t0))

        # restart on the same port: reconnect time and first pts
        t0 = time.monotonic()
        server.restart()
        restart_ms = ms(t0)
        t0 = time.monotonic()
        c = av.open(url, options=TCP | FAST, timeout=(5.0, 2.0))
        open_t = ms(t0)
        rows = first_packets(c, 4)
        out("rtsp after restart", server_restart_ms=restart_ms, open_ms=open_t,
            first_packet_ms=ms(t0), first_packets=rows)
        c.close()

        # stall with RTCP alive, for several read timeouts
        for read_s in (1.0, 2.0, 3.0):
            c = av.open(url, options=TCP | FAST, timeout=(5.0, read_s))
            first_packets(c, 5)
            server.stall()
            t_stall = [time.monotonic()]
            res = demux_until_end(c, t_stall)
            out("rtsp stall, timeout=(5, read_s)", read_s=read_s, **res,
                ratio=round(res["after_ms"] / 1000 / read_s, 2))
            c.close()
            server.resume()

        # stall without a read timeout: does demux() ever return? (bounded by a watchdog)
        c = av.open(url, options=TCP | FAST)
        first_packets(c, 5)
        server.stall()
        result: dict[str, Any] = {}
        t_stall = [time.monotonic()]
        th = threading.Thread(target=lambda: result.update(demux_until_end(c, t_stall)),
                              daemon=True)
        th.start()
        th.join(10.0)
        out("rtsp stall without timeout", returned_within_10s=not th.is_alive(), **result)
        server.kill()  # unblocks the read (the socket closes)
        th.join(10.0)
        out("rtsp stall without timeout, then server killed", **result)
        c.close()

        # server-side close of the connection (kick): what demux() does
        server.restart()
        c = av.open(url, options=TCP | FAST, timeout=(5.0, 2.0))
        first_packets(c, 5)
        server.kick()
        t_kick = [time.monotonic()]
        out("rtsp demux() after server closes the connection (kick)", **demux_until_end(c, t_kick))
        c.close()
    finally:
        server.stop()


def probe_udp(media: Path, repeat: int) -> None:
    sender = UdpTsSender(media)
    sender.start()
    try:
        url = sender.url
        for name, opts in (("default", {}), ("analyzeduration=0 probesize=32", FAST)):
            times = []
            for _ in range(repeat):
                t0 = time.monotonic()
                try:
                    c = av.open(url, options=opts, timeout=(5.0, 2.0))
                except av.FFmpegError as e:
                    times.append(f"{type(e).__name__} after {ms(t0)} ms")
                    continue
                v = c.streams.video[0] if c.streams.video else None
                ok = v is not None and v.codec_context.width > 0
                times.append(ms(t0) if ok else f"opened in {ms(t0)} ms but no video size")
                c.close()
            out(f"udp mpegts open {name}", all=times)
        c = av.open(url, timeout=(5.0, 2.0))
        v = c.streams.video[0]
        out("udp stream", codec=v.codec_context.name, time_base=str(v.time_base),
            width=v.codec_context.width, start_time=v.start_time,
            start_time_realtime=c.start_time_realtime)
        out("udp first packets", packets=first_packets(c, 12))
        c.close()
        for read_s in (1.0, 2.0):
            c = av.open(url, timeout=(10.0, read_s))
            first_packets(c, 20)
            sender.pause()
            t_stop = [time.monotonic()]
            res = demux_until_end(c, t_stop)
            out("udp demux() after the sender pauses, timeout=(10, read_s)", read_s=read_s, **res,
                ratio=round(res["after_ms"] / 1000 / read_s, 2))
            c.close()
            sender.resume()
    finally:
        sender.stop()


def probe_mute_server() -> None:
    """A TCP server that accepts and never answers: av.open's open timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        for timeout in ((1.0, 5.0), (2.0, 0.5)):
            t0 = time.monotonic()
            try:
                av.open(f"rtsp://127.0.0.1:{port}/x", options=TCP | FAST, timeout=timeout)
                out("mute server", timeout=timeout, result="opened?!")
            except (av.FFmpegError, OSError) as e:
                out("rtsp open against a server that accepts and never answers", timeout=timeout,
                    exception=type(e).__name__, after_ms=ms(t0))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", choices=("rtsp", "udp", "mute"))
    args = ap.parse_args()
    media = samples.path()
    out("versions", av=av.__version__, ffmpeg=av.ffmpeg_version_info)
    if args.only in (None, "rtsp"):
        reason = rtsp_unavailable_reason()
        if reason:
            out("rtsp skipped", reason=reason)
        else:
            probe_rtsp(media, args.repeat)
    if args.only in (None, "udp"):
        probe_udp(media, args.repeat)
    if args.only in (None, "mute"):
        probe_mute_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
