"""Live sources for tests, all on 127.0.0.1: a real RTSP server and an MPEG-TS/UDP sender.

* :class:`RtspServer` runs ``tests/live_rtsp_server.py`` under Debian's ``/usr/bin/python3``
  (GStreamer's RTSP server through GI) as a child process, with a readiness handshake (its
  ``listening`` JSON line), stdin commands (:meth:`~RtspServer.stall`, :meth:`~RtspServer.resume`,
  :meth:`~RtspServer.kick`), :meth:`~RtspServer.kill` and :meth:`~RtspServer.restart` on the same
  port. Every wait has a deadline; nothing sleeps.
* :class:`UdpTsSender` is PyAV (the project's venv) sending the sample as MPEG-TS to
  ``udp://127.0.0.1:PORT``, paced at real time and looped with continuous timestamps, in a thread
  with :meth:`~UdpTsSender.pause` / :meth:`~UdpTsSender.resume` / :meth:`~UdpTsSender.stop`.

Fixtures ``rtsp_server`` and ``udp_ts_sender`` (import them into a test module) skip the test,
with the apt command to run, where ``/usr/bin/python3`` lacks ``gi`` or the GStreamer elements.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

#: The Debian packages the RTSP server needs (Debian 12 / GStreamer 1.22); CI runs this.
APT_PACKAGES = ("python3-gi", "gir1.2-gst-rtsp-server-1.0", "gstreamer1.0-rtsp",
                "gstreamer1.0-plugins-base", "gstreamer1.0-plugins-good",
                "gstreamer1.0-plugins-bad")
APT_COMMAND = ("apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES))
SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("live_rtsp_server.py")
#: Elements the server uses: qtdemux, rtph264pay (good), h264parse (bad), appsrc/appsink (base).
_ELEMENTS = ("qtdemux", "h264parse", "rtph264pay", "appsrc", "appsink", "filesrc")
_CHECK = (
    "import gi, sys\n"
    "gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')\n"
    "from gi.repository import Gst, GstRtspServer\n"
    "Gst.init(None)\n"
    f"missing = [e for e in {_ELEMENTS!r} if Gst.ElementFactory.find(e) is None]\n"
    "print(' '.join(missing)); sys.exit(1 if missing else 0)\n")


class LiveServerError(RuntimeError):
    """A live test server did not start, answer or stop in time."""


_availability: str | None = None


def rtsp_unavailable_reason() -> str:
    """Why the RTSP server cannot run here ('' when it can). Checked once per process."""
    global _availability
    if _availability is None:
        if not os.path.exists(SYSTEM_PYTHON):
            _availability = f"{SYSTEM_PYTHON} does not exist"
        else:
            try:
                r = subprocess.run([SYSTEM_PYTHON, "-c", _CHECK], capture_output=True, text=True,
                                   timeout=30)
            except subprocess.TimeoutExpired:
                r = None
            if r is None:
                _availability = f"{SYSTEM_PYTHON} could not check GStreamer in 30 s"
            elif r.returncode != 0:
                missing = r.stdout.strip() or (r.stderr.strip().splitlines() or ["?"])[-1]
                _availability = f"{SYSTEM_PYTHON} lacks gi/GStreamer RTSP: {missing}"
            else:
                _availability = ""
    return _availability


def require_rtsp_server() -> None:
    """``pytest.skip`` (with the apt command) when the RTSP server cannot run here."""
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(f"{reason}; install with: {APT_COMMAND}")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (TCP by default, UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """``tests/live_rtsp_server.py`` as a child process.

    ``port=0`` takes a free port at the first :meth:`start` and keeps it for every
    :meth:`restart`. Lines the server prints are read by a thread into a queue; :meth:`wait_event`
    and the commands take them with a deadline (``LiveServerError`` when it passes).
    """

    def __init__(self, media: str | os.PathLike[str], port: int = 0, path: str = "/live",
                 python: str = SYSTEM_PYTHON) -> None:
        self.media = str(media)
        self.port = port
        self.path = path
        self.python = python
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.listening: dict[str, Any] = {}
        self.starts = 0
        #: every event line of every start, in order (waits consume ``lines``, not these)
        self.events: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self, timeout_s: float = 20.0) -> RtspServer:
        """Start the server and wait for its ``listening`` line.

        Raises:
            LiveServerError: it exited or said nothing within ``timeout_s``.
        """
        if self.proc is not None and self.proc.poll() is None:
            raise LiveServerError("already running")
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(
            [self.python, str(SERVER_SCRIPT), self.media, "--port", str(self.port),
             "--path", self.path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1)
        threading.Thread(target=self._read, args=(self.proc, self.lines, self.events),
                         daemon=True).start()
        self.listening = self.wait_event(lambda m: m.get("event") in ("listening", "error"),
                                         timeout_s)
        if self.listening.get("event") == "error":
            self.kill()
            raise LiveServerError(f"RTSP server failed: {self.listening.get('error')}")
        self.port = int(self.listening["port"])
        self.starts += 1
        return self

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[dict[str, Any] | None],
              events: list[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                msg = json.loads(line)
                if "event" in msg:
                    events.append(msg)  # list.append is atomic: readers copy with list()
                lines.put(msg)
        lines.put(None)  # end of output: the process ended

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool],
                   timeout_s: float = 10.0) -> dict[str, Any]:
        """The next line that satisfies ``predicate`` (lines before it are consumed).

        Raises:
            LiveServerError: the process ended or ``timeout_s`` passed first.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LiveServerError(f"no matching line from the RTSP server in {timeout_s} s")
            try:
                msg = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                self.lines.put(None)  # every later wait sees the end too
                err = self.proc.stderr.read() if self.proc and self.proc.stderr else ""
                raise LiveServerError(f"the RTSP server exited: {err[-2000:]}")
            if predicate(msg):
                return msg

    def command(self, cmd: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """Send one stdin command and return its JSON reply."""
        if self.proc is None or self.proc.poll() is not None or self.proc.stdin is None:
            raise LiveServerError(f"cannot send {cmd!r}: the server is not running")
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.wait_event(lambda m: m.get("reply") == cmd, timeout_s)

    def stall(self) -> dict[str, Any]:
        """Stop sending media; the session, its TCP connection and RTCP stay alive."""
        return self.command("stall")

    def hang(self) -> dict[str, Any]:
        """Stop sending to the current session only; a client that reconnects is served."""
        return self.command("hang")

    def resume(self) -> dict[str, Any]:
        return self.command("resume")

    def status(self) -> dict[str, Any]:
        return self.command("status")

    def kick(self) -> dict[str, Any]:
        """Close every client connection from the server side; the server keeps listening."""
        return self.command("kick")

    def loop_origins(self) -> list[tuple[int, int]]:
        """``(fed_from, origin)`` for every loop fed so far (every start, in order), both
        CLOCK_MONOTONIC ns: from ``fed_from`` on, file time 0 of what clients get was at
        ``origin``. A new media may begin mid-file (at the keyframe after where the previous
        one was): its origin is then before it was fed, and maybe before the previous one's."""
        return [(e["origin_mono_ns"] + e.get("file_dts_ns", 0), e["origin_mono_ns"])
                for e in list(self.events)
                if e.get("event") in ("feeding", "loop") and "origin_mono_ns" in e]

    def wait_feeding(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait until a client's media got its first access unit."""
        return self.wait_event(lambda m: m.get("event") == "feeding", timeout_s)

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL (a crashed server: no RTSP TEARDOWN, sockets closed by the kernel)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout_s)
        self._close_pipes()

    def restart(self, timeout_s: float = 20.0) -> RtspServer:
        """Kill (if running) and start again on the same port."""
        self.kill()
        return self.start(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """``quit``, then wait; kill if it does not exit within ``timeout_s``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(LiveServerError, OSError):
                self.command("quit", timeout_s)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self._close_pipes()

    def _close_pipes(self) -> None:
        assert self.proc is not None
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class UdpTsSender:
    """PyAV sending ``media`` as MPEG-TS to ``udp://127.0.0.1:port``, looped at real time.

    Packets are copied (no re-encode; the mpegts muxer inserts ``h264_mp4toannexb`` itself) and
    sent when the monotonic clock reaches their dts; every loop adds the file's duration to pts
    and dts, so timestamps keep increasing. Video only by default (``audio=True`` adds the first
    audio stream). The socket is bound to 127.0.0.1 (``localaddr``).
    """

    def __init__(self, media: str | os.PathLike[str], port: int | None = None,
                 audio: bool = False, pkt_size: int = 1316) -> None:
        self.media = str(media)
        self.port = port if port is not None else free_port(socket.SOCK_DGRAM)
        self.audio = audio
        self.pkt_size = pkt_size
        self._cond = threading.Condition()
        self._paused = False
        self._stop = False
        self.sent = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def start(self) -> UdpTsSender:
        self._thread = threading.Thread(target=self._run, name="udp-ts-sender", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Stop sending (a stalled source); :meth:`resume` continues at the live position."""
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and close the socket.

        Raises:
            LiveServerError: the thread did not end within ``timeout_s``.
        """
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise LiveServerError("the UDP sender did not stop")

    def _run(self) -> None:
        try:
            self._send()
        except BaseException as e:  # surfaced to the test through .error
            self.error = e

    def _send(self) -> None:
        url = f"{self.url}?pkt_size={self.pkt_size}&localaddr=127.0.0.1"
        with av.open(self.media) as inp, av.open(url, "w", format="mpegts") as out:
            streams = [inp.streams.video[0]] + (
                [inp.streams.audio[0]] if self.audio and inp.streams.audio else [])
            outs = {s.index: out.add_stream_from_template(s) for s in streams}
            packets = [p for p in inp.demux(streams) if p.dts is not None]
            v = streams[0]
            vtb = Fraction(v.time_base)
            vdts = [p.dts for p in packets if p.stream is v]
            period = Fraction(vdts[-1] - vdts[0] + (packets[-1].duration or 1), 1) * vtb
            first = Fraction(vdts[0]) * vtb
            t0 = time.monotonic()
            loop = 0
            shift = 0.0  # seconds added by pauses (the live position moves on)
            while True:
                for p in packets:
                    tb = Fraction(p.time_base)
                    due = t0 + shift + float(loop * period + Fraction(p.dts) * tb - first)
                    with self._cond:
                        while not self._stop:
                            if self._paused:
                                paused_at = time.monotonic()
                                while self._paused and not self._stop:
                                    self._cond.wait()
                                shift += time.monotonic() - paused_at
                                due += time.monotonic() - paused_at
                                continue
                            left = due - time.monotonic()
                            if left <= 0:
                                break
                            self._cond.wait(left)
                        if self._stop:
                            return
                    off = int(loop * period / tb)
                    pkt = av.Packet(bytes(p))
                    pkt.pts = p.pts + off
                    pkt.dts = p.dts + off
                    pkt.duration = p.duration
                    pkt.time_base = p.time_base
                    pkt.is_keyframe = p.is_keyframe
                    pkt.stream = outs[p.stream.index]
                    out.mux(pkt)
                    self.sent += 1
                loop += 1

    def __enter__(self) -> UdpTsSender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def started_rtsp_server(media: str | os.PathLike[str]) -> Iterator[RtspServer]:
    """A started :class:`RtspServer` for ``media``, stopped (or killed) on exit; skips the test
    (with the apt command) where the server cannot run."""
    require_rtsp_server()
    server = RtspServer(media)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def stopped_after(sender: UdpTsSender) -> Iterator[UdpTsSender]:
    """``sender`` (not started: the receiver binds the port first), stopped on exit."""
    try:
        yield sender
    finally:
        sender.stop()


# Fixtures, for a test module to import or wrap (the sample comes from conftest's ``sample``).

@pytest.fixture
def rtsp_server(sample: Callable[..., Path]) -> Iterator[RtspServer]:
    """A started :class:`RtspServer` serving the sample."""
    with started_rtsp_server(sample()) as server:
        yield server


@pytest.fixture
def udp_ts_sender(sample: Callable[..., Path]) -> Iterator[UdpTsSender]:
    """A :class:`UdpTsSender` for the sample, not started."""
    with stopped_after(UdpTsSender(sample())) as sender:
        yield sender
