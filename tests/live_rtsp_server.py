#!/usr/bin/python3
"""A live RTSP server for tests: an H.264 mp4 looped forever at real time, on 127.0.0.1 only.

Run it with Debian's system Python 3 (``/usr/bin/python3``: it has ``gi``; the project's venv does
not)::

    /usr/bin/python3 tests/live_rtsp_server.py SAMPLE.mp4 [--port 0] [--path /live]

Needs (Debian 12, GStreamer 1.22)::

    apt-get install -y --no-install-recommends python3-gi gir1.2-gst-rtsp-server-1.0 \\
        gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good \\
        gstreamer1.0-plugins-bad

What it does:

* Demuxes the mp4 once (``qtdemux ! h264parse ! video/x-h264,stream-format=byte-stream,
  alignment=au ! appsink``; the file's video track only, no audio) into H.264 access units with
  their pts/dts/duration and keyframe flags. No PyAV: system Python does not have it.
* Serves them at ``rtsp://127.0.0.1:PORT/PATH`` through ``appsrc ! h264parse ! rtph264pay``
  (RTP over the RTSP TCP connection only: no UDP socket is ever opened, so nothing binds beyond
  127.0.0.1). The media is shared: every client sees the same live stream.
* Live timing, like a camera: an access unit is pushed when the pipeline's running time reaches
  its dts, stamped with that running time (pts keeps the file's pts - dts, so B-frames stay
  B-frames). Loops are offset by the file's duration, so timestamps are continuous and increasing
  forever. A new media (first client after none) starts at a keyframe, continuing the file where
  the previous media stopped; after ``resume`` the timestamps jump by the stall's length, as a
  camera's clock would, and resume at the next keyframe.

Control: one command a line on stdin; every command is answered with one JSON line on stdout
(``{"reply": CMD, "ok": true, ...}``); asynchronous events are JSON lines with ``"event"``:

* ``{"event": "listening", "port": P, "url": "rtsp://127.0.0.1:P/live", ...}`` once bound
  (``--port 0``, the default, takes a free port and reports it);
* ``{"event": "media", "state": "configured"}`` when a client's DESCRIBE created the media,
  ``{"event": "client", "state": "connected"|"closed"}`` per TCP client;
* ``{"event": "feeding", "pushed": N, "origin_mono_ns": T, ...}`` after the first access unit
  of a media is pushed, and ``{"event": "loop", "loops": N, "origin_mono_ns": T}`` when a loop
  of the file begins: ``T`` is CLOCK_MONOTONIC (shared by every process on the machine) of the
  file's time 0 in that loop, so a test can tell where in the file a live event happened.

Commands: ``stall`` (stop pushing buffers; the RTSP session, the TCP connection and RTCP stay
alive), ``hang`` (the same for the current media only: a client that reconnects is served, as
from a camera whose one session hung), ``resume``, ``status``, ``kick`` (close every client connection from the server side,
the server keeps listening), ``quit``. End of stdin is ``quit`` too, so the server never outlives
a test that forgot it. Killing the process (SIGKILL) and starting it again on the same
``--port`` is how a test simulates a server restart.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

_out_lock = threading.Lock()


def emit(**fields: object) -> None:
    """One JSON line on stdout, flushed (the test side reads it as a handshake)."""
    with _out_lock:
        sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
        sys.stdout.flush()


class AccessUnit:
    __slots__ = ("data", "pts", "dts", "duration", "keyframe")

    def __init__(self, data: bytes, pts: int, dts: int, duration: int, keyframe: bool) -> None:
        self.data, self.pts, self.dts, self.duration, self.keyframe = (
            data, pts, dts, duration, keyframe)


def demux_h264(path: str) -> tuple[list[AccessUnit], int]:
    """The first video track of ``path`` as byte-stream access units (ns timestamps) and the
    loop period in ns (last dts + its duration - first dts).

    Raises:
        RuntimeError: GStreamer could not demux it (not an mp4 with H.264).
    """
    pipe = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux name=d d.video_0 ! '
        "h264parse config-interval=-1 ! "
        "video/x-h264,stream-format=byte-stream,alignment=au ! "
        "appsink name=sink sync=false emit-signals=false max-buffers=0")
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    units: list[AccessUnit] = []
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            raise RuntimeError("cannot map a buffer")
        data = bytes(info.data)
        buf.unmap(info)
        pts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else None
        dts = buf.dts if buf.dts != Gst.CLOCK_TIME_NONE else pts
        if pts is None or dts is None:
            continue
        units.append(AccessUnit(data, pts, dts, buf.duration if buf.duration !=
                                Gst.CLOCK_TIME_NONE else 0,
                                not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)))
    bus = pipe.get_bus()
    err = bus.pop_filtered(Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if err is not None or not units:
        detail = err.parse_error()[0].message if err is not None else "no video access unit"
        raise RuntimeError(f"{path}: cannot demux H.264 ({detail})")
    # The file's dts may start negative (B-frame delay): GStreamer shifts everything so dts
    # starts at 0 or later; normalise so the first dts is 0.
    base = units[0].dts
    for u in units:
        u.dts -= base
        u.pts -= base
    last = units[-1]
    step = last.duration or (units[-1].dts - units[-2].dts if len(units) > 1 else 40_000_000)
    period = last.dts + step
    if not units[0].keyframe:
        raise RuntimeError(f"{path}: the first access unit is not a keyframe")
    return units, period


class Feeder:
    """Pushes access units into the current media's appsrc at real time (one thread)."""

    def __init__(self, units: list[AccessUnit], period_ns: int) -> None:
        self.units = units
        self.period = period_ns
        self.keyframes = [i for i, u in enumerate(units) if u.keyframe]
        self.lock = threading.Condition()
        self.appsrc: Gst.Element | None = None
        self.generation = 0  # bumped for every new media
        self.stalled = False
        self.hung_generation = -1  # the media that `hang` froze
        self.quit = False
        self.index = 0  # next access unit of the file
        self.loops = 0
        self.pushed = 0  # in this media
        self.pushed_total = 0
        self.offset: int | None = None  # running time of file time 0 of the current loop
        self.thread = threading.Thread(target=self.run, name="feeder", daemon=True)

    # --- control (any thread) ---
    def attach(self, appsrc: Gst.Element) -> None:
        with self.lock:
            self.appsrc = appsrc
            self.generation += 1
            self.pushed = 0
            self.offset = None
            self._to_keyframe()
            self.lock.notify_all()

    def detach(self, appsrc: Gst.Element) -> None:
        with self.lock:
            if self.appsrc is appsrc:
                self.appsrc = None
                self.lock.notify_all()

    def stall(self) -> None:
        with self.lock:
            self.stalled = True
            self.lock.notify_all()

    def hang(self) -> None:
        """Stop sending to the current media only (a hung session): the next media, a client
        reconnecting, is fed normally."""
        with self.lock:
            self.hung_generation = self.generation
            self.lock.notify_all()

    def resume(self) -> None:
        with self.lock:
            if self.stalled:
                self.stalled = False
                self.offset = None  # re-stamp from now: the clock jumped by the stall
                self._to_keyframe()
            self.lock.notify_all()

    def stop(self) -> None:
        with self.lock:
            self.quit = True
            self.lock.notify_all()

    def _to_keyframe(self) -> None:
        nxt = next((k for k in self.keyframes if k >= self.index), None)
        if nxt is None:
            self.index = 0
            self.loops += 1
        else:
            self.index = nxt

    # --- the thread ---
    def run(self) -> None:
        while True:
            with self.lock:
                while not self.quit and (self.stalled or self.appsrc is None or
                                         self.hung_generation == self.generation or
                                         self.appsrc.get_clock() is None):
                    self.lock.wait(0.05)  # a media going to PLAYING gets a clock; poll for it
                if self.quit:
                    return
                appsrc = self.appsrc
                gen = self.generation
                clock = appsrc.get_clock()
                base = appsrc.get_base_time()
                running = clock.get_time() - base
                unit = self.units[self.index]
                if self.offset is None:
                    # stamp so that this unit's dts is "now" on the pipeline's running time
                    self.offset = running - unit.dts - self.loops * self.period
                dts = self.offset + self.loops * self.period + unit.dts
                wait_ns = dts - running
                if wait_ns > 0:
                    self.lock.wait(wait_ns / 1e9)
                    continue  # re-check stall/quit/media, then push
                at_loop_start = self.index == 0
                buf = Gst.Buffer.new_wrapped(unit.data)
                buf.dts = dts
                buf.pts = dts + (unit.pts - unit.dts)
                buf.duration = unit.duration
                if not unit.keyframe:
                    buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
                self.index += 1
                if self.index == len(self.units):
                    self.index = 0
                    self.loops += 1
                self.pushed += 1
                self.pushed_total += 1
                first = self.pushed == 1
            # CLOCK_MONOTONIC (shared by every process here) of file time 0 of this loop:
            # a client's live clock stamps this unit about now, so tests measure event times
            # in the file against it
            origin_mono_ns = time.monotonic_ns() - unit.dts
            ret = appsrc.emit("push-buffer", buf)
            if first:
                emit(event="feeding", pushed=1, generation=gen, origin_mono_ns=origin_mono_ns,
                     file_dts_ns=unit.dts)
            elif at_loop_start:
                emit(event="loop", generation=gen, loops=self.loops,
                     origin_mono_ns=origin_mono_ns)
            if ret != Gst.FlowReturn.OK:
                with self.lock:
                    if self.appsrc is appsrc and gen == self.generation:
                        self.appsrc = None  # flushing/shut down: wait for the next media


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("media", help="an mp4 (or any file qtdemux reads) with an H.264 video track")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: a free one)")
    ap.add_argument("--path", default="/live", help="mount point (default /live)")
    args = ap.parse_args(argv)
    Gst.init(None)
    try:
        units, period = demux_h264(args.media)
    except RuntimeError as e:
        emit(event="error", error=str(e))
        return 2
    feeder = Feeder(units, period)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src is-live=true format=time do-timestamp=false min-latency=0 "
        "caps=video/x-h264,stream-format=byte-stream,alignment=au "
        "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )")
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)  # no UDP sockets: 127.0.0.1 only

    def on_configure(_factory: object, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_child_by_name("src")
        feeder.attach(appsrc)
        media.connect("unprepared", lambda _m: feeder.detach(appsrc))
        emit(event="media", state="configured", generation=feeder.generation)

    factory.connect("media-configure", on_configure)
    server.get_mount_points().add_factory(args.path, factory)

    def on_client(_server: object, client: GstRtspServer.RTSPClient) -> None:
        emit(event="client", state="connected")
        client.connect("closed", lambda _c: emit(event="client", state="closed"))

    server.connect("client-connected", on_client)
    try:
        server.attach(None)
    except GLib.Error as e:
        emit(event="error", error=f"cannot bind 127.0.0.1:{args.port}: {e.message}")
        return 3
    port = server.get_bound_port()
    loop = GLib.MainLoop()
    feeder.thread.start()

    def status() -> dict[str, object]:
        return {"port": port, "stalled": feeder.stalled, "pushed": feeder.pushed,
                "pushed_total": feeder.pushed_total, "generation": feeder.generation,
                "media": feeder.appsrc is not None}

    def kick() -> int:
        kicked = 0

        def f(_server: object, _client: object,
              _data: object = None) -> GstRtspServer.RTSPFilterResult:
            nonlocal kicked
            kicked += 1
            return GstRtspServer.RTSPFilterResult.REMOVE

        server.client_filter(f, None)
        return kicked

    def command(line: str) -> bool:
        cmd = line.strip()
        if not cmd:
            return True
        if cmd == "stall":
            feeder.stall()
            emit(reply=cmd, ok=True, **status())
        elif cmd == "hang":
            feeder.hang()
            emit(reply=cmd, ok=True, **status())
        elif cmd == "resume":
            feeder.resume()
            emit(reply=cmd, ok=True, **status())
        elif cmd == "status":
            emit(reply=cmd, ok=True, **status())
        elif cmd == "kick":
            emit(reply=cmd, ok=True, kicked=kick(), **status())
        elif cmd == "quit":
            emit(reply=cmd, ok=True)
            loop.quit()
            return False
        else:
            emit(reply=cmd, ok=False, error="unknown command (stall, resume, status, kick, quit)")
        return True

    def stdin_reader() -> None:
        for line in sys.stdin:
            done = threading.Event()
            keep = [True]

            def run_on_loop(text: str = line, keep: list[bool] = keep,
                            done: threading.Event = done) -> bool:
                keep[0] = command(text)
                done.set()
                return False

            GLib.idle_add(run_on_loop)
            done.wait()
            if not keep[0]:
                return
        GLib.idle_add(lambda: (loop.quit(), False)[1])  # stdin closed: quit

    threading.Thread(target=stdin_reader, name="stdin", daemon=True).start()
    emit(event="listening", port=port, url=f"rtsp://127.0.0.1:{port}{args.path}",
         units=len(units), keyframes=len(feeder.keyframes), period_ns=period,
         started_monotonic_ns=time.monotonic_ns())
    loop.run()
    feeder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
