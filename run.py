"""``momentbus run``: the embedded default, every role as a local process over ``ipc://``.

The parent is the supervisor and the trace collector: it starts clip, fusion, the extractors and
the daemon, shows progress from the trace records, restarts crashed extractors within a budget,
and ends with a summary once every child exited by itself (end of file propagates as Eof through
every role). Ctrl-C stops everything (terminate -> timed join -> kill) and exits 130.

:func:`run_file` is the same run for Python callers: no signal handlers, no output, usable off
the main thread; it returns the triggers and clips.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .clip.containers import CLIP_SUFFIXES
from .daemon.live import LiveOptions, classify_source, is_live, probe_live
from .fusion.rules import load_rules
from .ipc.schema import Trig
from .ipc.shm import remove_leftovers
from .lifecycle import ExitCode, StopFlag
from .media import probe
from .forkserver import RUNTIMES, ForkServer
from .supervisor import Child, Supervisor
from .workers import plan_workers, usable_cores
from .traces.summary import percentile

# honest endings: the output folder's check, the socket folder's lock, the run's last lines
from .endings import Ending
from .outputs import check_out_dir
from .rundir import claim_run_dir

if TYPE_CHECKING:  # prometheus_client is imported only when --metrics is given
    from .traces.metrics import TraceMetrics


@dataclass(frozen=True)
class RunOptions:
    source: str
    out_dir: str
    rules: str | None = None
    extractors: tuple[str, ...] = ("face", "quality")
    fps: float = 10.0
    restart_budget: int = 3
    quiet: bool = False
    trace_level: str = "normal"
    save_obs: bool = False
    #: Print the summary tables at the end (``momentbus run``); the library keeps quiet.
    summary: bool = True
    #: Clip container (``auto``: mp4 when it holds the codecs, else Matroska) and mode
    #: (``copy``: remux from the keyframe before; ``exact``: re-encode to the requested frames).
    clip_format: str = "auto"
    clip_mode: str = "copy"
    #: how a live source (URL, camera, file with ``realtime``) is opened, paced and reconnected
    live: LiveOptions = field(default_factory=LiveOptions)
    #: a live source: stop after this many seconds (``None``: until Ctrl-C / ``stop``)
    duration_s: float | None = None
    #: processes per extractor kind not given a count: ``auto`` (workers.py) or a number
    workers: str = "auto"
    #: fork the roles from a zygote that imported their libraries once (forkserver.py)
    fork_server: bool = True


#: The clip role's ring keeps this much more than the longest pre-roll + post-roll of the rules:
#: a TRIG arrives after its event (the rule's hold, then the pipeline's latency: under 2 s
#: measured here, bench/live.py) and is cut once its post-roll arrived.
RING_SLACK_S = 10.0


@dataclass
class RunStats:
    """Live counters built from trace records (the collector thread writes, the main reads)."""

    frames_read: int = 0
    processed: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    first_wall: dict[str, int] = field(default_factory=dict)
    last_wall: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    triggers: list[dict[str, Any]] = field(default_factory=list)
    clips: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    late: int = 0
    #: a live source: connections so far, stalls, and whether it is connected now
    generations: int = 0
    stalls: int = 0
    connected: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_record(self, r: dict[str, Any]) -> None:
        kind = r.get("record")
        comp = r.get("component", "?")
        with self.lock:
            if kind == "timing":
                if r.get("stage") == "read":
                    self.frames_read += 1
                elif "process_ms" in r:
                    self.processed[comp].append(float(r["process_ms"]))
                    self.first_wall.setdefault(comp, r["wall_ns"])
                    self.last_wall[comp] = r["wall_ns"]
            elif kind == "frame_drop":
                self.drops[f"{r.get('group', comp)}:{r.get('reason')}"] += len(r.get("seqs") or [1])
            elif kind == "trigger":
                self.triggers.append(r)
            elif kind == "clip":
                self.clips.append(r)
            elif kind == "error":
                self.errors.append(r)
            elif kind == "late_obs":
                self.late += 1
            elif kind == "source":
                event = r.get("event")
                if event == "connect":
                    self.generations += 1
                    self.connected = True
                elif event == "disconnect":
                    self.connected = False
                elif event == "stall":
                    self.stalls += 1


@dataclass
class RunResult:
    """What a run produced: its exit code (:class:`~momentbus.lifecycle.ExitCode`), the fired
    triggers (as written to ``OUT/triggers.jsonl``), the clip files written, and the counters
    the summary was built from."""

    exit_code: int
    out_dir: Path
    triggers: list[Trig]
    clips: list[Path]
    stats: RunStats


def read_triggers(path: str | os.PathLike[str]) -> list[Trig]:
    """The TRIGs of a ``triggers.jsonl`` (a torn last line, from a run cut short, is skipped)."""
    decoder = msgspec.json.Decoder(Trig)
    out = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            out.append(decoder.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    return out


def run_file(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
             extractors: Sequence[str] = ("face", "quality"), rules: str | None = None,
             fps: float = 10.0, restart_budget: int = 3, trace_level: str = "normal",
             save_obs: bool = False, stop: StopFlag | None = None) -> RunResult:
    """Run the whole pipeline on a media file, as ``momentbus run`` does, and return its result.

    The roles run as separate processes, as in the CLI; this call blocks until they finished.
    It installs no signal handler and prints nothing, so it can run off the main thread; set
    ``stop`` (a :class:`~momentbus.lifecycle.StopFlag`) from another thread to end it early
    (exit code 130, what was written so far stays).

    Raises:
        SourceError: the source is missing, not media, or lacks a stream the extractors read.
        RulesError: the rules file is invalid.
        ExtractorError: an unknown extractor kind.
    """
    opts = RunOptions(source=str(source), out_dir=str(out_dir), rules=rules,
                      extractors=tuple(extractors), fps=fps, restart_budget=restart_budget,
                      quiet=True, trace_level=trace_level, save_obs=save_obs, summary=False,
                      # a library call leaves its host process as it was: no child subreaper
                      fork_server=False)
    return run_pipeline(opts, stop or StopFlag())


#: Processes of one kind a run may start (``face:4``): each loads its own model.
MAX_INSTANCES = 16


def plan_extractors(specs: Sequence[str]) -> dict[str, int | None]:
    """``kind -> processes asked for`` from ``face,quality``, ``face,face`` or ``face:2``:
    ``None`` for a kind named once without a count (``--workers`` plans it, workers.py).

    Raises:
        UnknownExtractorError: an unknown kind, a bad count, or nothing at all.
    """
    from .extractors.base import UnknownExtractorError, kinds

    counts: dict[str, list[int | None]] = {}
    for spec in specs:
        kind, _, count = spec.strip().partition(":")
        if kind not in kinds():
            raise UnknownExtractorError(f"unknown extractor kind(s) {kind or '(none)'} "
                                        f"(known: {', '.join(kinds())})")
        if count and not (count.isdigit() and 1 <= int(count) <= MAX_INSTANCES):
            raise UnknownExtractorError(f"{spec}: the number of {kind} processes must be 1 to "
                                        f"{MAX_INSTANCES}")
        counts.setdefault(kind, []).append(int(count) if count else None)
    if not counts:
        raise UnknownExtractorError(f"no extractor kind given (known: {', '.join(kinds())})")
    return {kind: None if asked == [None] else sum(n or 1 for n in asked)
            for kind, asked in counts.items()}


def run_pipeline(opts: RunOptions, stop: StopFlag, metrics: TraceMetrics | None = None,
                 fork_server: ForkServer | None = None) -> RunResult:
    """Run the whole pipeline on ``opts.source`` until it ends or ``stop`` is set.

    ``metrics`` (``momentbus run --metrics``) is fed every trace record the run collects, as it
    arrives, so an endpoint serving it shows the whole local run. ``fork_server``: a started
    :class:`~momentbus.forkserver.ForkServer` to fork the roles from (the CLI starts it before
    anything else, so its imports overlap the parent's); without one and with
    ``opts.fork_server``, the run starts and ends its own.

    Raises:
        SourceError: the source is missing, not media, or has no video (before anything starts).
        RulesError: the rules file is invalid.
        OutputDirError: ``opts.out_dir`` cannot hold the outputs (before anything starts).
    """
    own = fork_server is None and opts.fork_server
    if own:
        fork_server = ForkServer(opts.extractors).start()
    try:
        return _run_pipeline(opts, stop, metrics, fork_server)
    finally:
        if own and fork_server is not None:
            fork_server.close()


def _run_pipeline(opts: RunOptions, stop: StopFlag, metrics: TraceMetrics | None,
                  fork_server: ForkServer | None) -> RunResult:
    check_out_dir(opts.out_dir)  # a file, read-only or full: one line, exit 2 (outputs.py)
    from .extractors.base import ExtractorError, stream_of

    try:
        workers = plan_workers(plan_extractors(opts.extractors), opts.workers)
    except ValueError as e:
        raise ExtractorError(str(e)) from None
    plan = workers.processes
    needs_video = any(stream_of(k) == "video" for k in plan)
    # bad input fails here, in one line, before any process starts
    kind = classify_source(opts.source)
    live = is_live(opts.source, opts.live)
    if kind in ("url", "v4l2"):
        info: Any = probe_live(opts.source, opts.live)  # one connection: reachable, has video
    else:
        opts.live.check(kind)
        info = probe(opts.source, require_video=needs_video or live)
    specs = load_rules(opts.rules)
    ring_s = max((r.pre_roll_ns + r.post_roll_ns for r in specs), default=0) / 1e9 + RING_SLACK_S
    console = Console(stderr=True)
    if not opts.quiet:
        console.print(f"extractors: {workers.describe()} on {usable_cores()} core(s)",
                      highlight=False)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    # a previous run's clips would mix with this one's: remove them, and only them
    for stale in (out / "clips").glob("[0-9][0-9][0-9]_*") if (out / "clips").is_dir() else []:
        if stale.is_file() and stale.suffix in (*CLIP_SUFFIXES, ".json"):
            stale.unlink()
    tmp = Path(tempfile.mkdtemp(prefix="momentbus-"))
    tmp_lock = claim_run_dir(tmp)  # removed even if this process is killed (rundir.py)
    addr = {name: f"ipc://{tmp}/{name}" for name in ("frames", "obs", "clip", "trace")}
    stats = RunStats()

    from .traces.tracer import TraceCollector

    def on_record(record: dict[str, Any]) -> None:
        stats.on_record(record)
        if metrics is not None:
            metrics.observe(record)

    collector = TraceCollector(addr["trace"], out / "trace.jsonl", on_record=on_record)
    collector.start()
    sup_events: list[str] = []
    lost: list[str] = []  # extractors that died for good: the run goes on without them

    def on_event(kind: str, child: Child, **info_: Any) -> None:
        if kind == "restart":
            sup_events.append(f"{child.name} crashed (exit {child.history[-1]}), "
                              f"restart {info_['attempt']}/{opts.restart_budget}")
            if child.name == "daemon":  # a daemon killed hard cannot unlink its shared memory
                remove_leftovers(info_["pid"])

    sup = Supervisor(opts.restart_budget, log_dir=str(logs), on_event=on_event,
                     fork_server=fork_server)
    py = [sys.executable, "-m", "momentbus"]
    common = ["--trace-collector", addr["trace"], "--trace-level", opts.trace_level]
    groups = ",".join(plan)
    code: int = ExitCode.OK
    started = time.monotonic()
    try:
        # every role is restarted within the budget: fusion replays its log (--resume), the
        # daemon resumes from its state file, an extractor rejoins as a new incarnation
        live_clip = (["--frames", addr["frames"], "--ring-seconds", f"{ring_s:g}"]
                     if live else [])
        sup.start(Child("clip", py + ["clip", opts.source, "--bind", addr["clip"],
                                      "--out", str(out), "--clip-format", opts.clip_format,
                                      "--clip-mode", opts.clip_mode] + live_clip + common,
                        restartable=True))
        fusion_argv = py + ["fusion", "--bind", addr["obs"], "--clip", addr["clip"],
                            "--out", str(out), "--expect", groups] + common
        if opts.rules:
            fusion_argv += ["--rules", opts.rules]
        if opts.save_obs:
            fusion_argv += ["--save-obs"]
        fusion = sup.start(Child("fusion", fusion_argv, restartable=True,
                                 restart_argv=fusion_argv + ["--resume"]))
        def start_extractors(kinds: list[str]) -> None:
            for kind in kinds:
                # same host: pixels travel through shared memory behind the credit protocol
                args = (["--fps", str(opts.fps), "--encoding", "shm"]
                        if stream_of(kind) == "video" else [])
                args += ["--threads", str(workers.threads[kind])]
                for instance in range(1, plan[kind] + 1):
                    name = f"extractor-{kind}" + (f"-{instance}" if instance > 1 else "")
                    sup.start(Child(name, py + [
                        "extractor", kind, "--daemon", addr["frames"], "--fusion", addr["obs"],
                        "--instance", str(instance)] + args + common, restartable=True))

        # kinds whose runtime the zygote imports on their first fork (forkserver.py) start
        # last, after the daemon: the others and the daemon are at work meanwhile
        start_extractors([k for k in plan if k not in RUNTIMES])
        daemon = sup.start(Child("daemon", py + [
            "daemon", opts.source, "--bind", addr["frames"], "--fusion", addr["obs"],
            "--expect", groups + (",clip" if live else ""), "--state", str(tmp / "daemon.state")]
            + ([] if needs_video else ["--audio-only"]) + _live_argv(opts) + common,
            restartable=True))
        start_extractors([k for k in plan if k in RUNTIMES])
        total = info.frames if needs_video and not live else None
        ending_live = False  # a live run's first Ctrl-C: the daemon ends the stream
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} frames"),
                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                      console=console, disable=opts.quiet, transient=False) as progress:
            task = progress.add_task(f"{info.source_id}", total=total, status="")
            if live:
                progress.columns = (TextColumn("[bold]{task.description}"),
                                    TextColumn("{task.completed} frames"),
                                    TextColumn("{task.fields[status]}"), TimeElapsedColumn())
            while True:
                if daemon.exit_code == 0:
                    for child in sup.children:  # the source is done: no extractor to resume
                        if child.name.startswith("extractor-"):
                            child.restartable = False
                failed = sup.poll()
                with stats.lock:
                    status = (f"triggers {len(stats.triggers)}  clips {len(stats.clips)}"
                              + (f"  errors {len(stats.errors)}" if stats.errors else ""))
                    if live:
                        status = (("live" if stats.connected else "[yellow]reconnecting[/]")
                                  + f" (connection {stats.generations}"
                                  + (f", {stats.stalls} stalls" if stats.stalls else "")
                                  + f")  {status}")
                    progress.update(task, completed=stats.frames_read, status=status)
                for line in sup_events:
                    console.print(f"[yellow]{line}")
                sup_events.clear()
                for child in failed:
                    console.print(f"[red]{child.name} failed (exit {child.exit_code}); "
                                  f"log: {child.stderr_path}")
                    _print_tail(console, child.stderr_path)
                    lost.append(child.name)
                if any(not c.name.startswith("extractor-") for c in failed):
                    code = ExitCode.ERROR  # a core role died for good (its budget spent)
                    break
                if not sup.running():
                    if stop.count >= 2:  # interrupted twice, even if the end came meanwhile
                        code = ExitCode.INTERRUPTED
                    break
                if fusion.exit_code is not None and daemon.exit_code is not None:
                    # the source and fusion are done: a member still starting up (a late
                    # restart) has nothing left to do
                    sup.stop()
                if stop.is_set() and live and stop.count < 2:
                    if not ending_live:  # end the stream; every role finishes by itself
                        ending_live = True
                        daemon.restartable = False
                        daemon.terminate()
                        if not opts.quiet:
                            console.print("[yellow]stopping: the source ends, triggers already "
                                          "fired get their clips (Ctrl-C again to quit now)")
                elif stop.is_set():
                    code = ExitCode.INTERRUPTED
                    break
                if ending_live:
                    time.sleep(0.1)  # the stop flag stays set: poll at the same period
                else:
                    stop.wait(0.1)  # the supervisor's poll period
    finally:
        if sup.running():
            # Ctrl-C reached the children too (same terminal): give them the grace period
            sup.stop()
        collector.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        tmp_lock.release()
        for child in sup.children:  # a daemon killed hard cannot unlink its shared memory
            if child.name == "daemon" and child.proc is not None:
                remove_leftovers(child.proc.pid)
    elapsed = time.monotonic() - started
    ending = Ending.of(collector, out, [Path(c["path"]) for c in stats.clips])
    code = ending.exit_code(code)
    result = RunResult(code, out, read_triggers(out / "triggers.jsonl"),
                       [Path(c["path"]) for c in stats.clips], stats)
    if code == ExitCode.INTERRUPTED:
        if opts.summary:
            console.print("[yellow]stopped")
        return result
    if opts.summary:
        _summary(console, info, stats, out, elapsed, collector, live)
        for name in lost:
            Console().print(f"[yellow]warning[/]: {name} died and was not restarted; rules "
                            "that read it ran without it (their triggers list it as missing)")
        if (line := ending.data_loss_line()) is not None:
            Console().print(f"[bold yellow]{line}", highlight=False, soft_wrap=True)
        if (line := ending.output_line()) is not None:
            console.print(f"[bold red]momentbus: {line}", highlight=False, soft_wrap=True)
    return result


def _print_tail(console: Console, path: str | None, lines: int = 8) -> None:
    if not path or not Path(path).exists():
        return
    for line in Path(path).read_text(errors="replace").splitlines()[-lines:]:
        console.print(f"    {line}", markup=False, highlight=False)


def _live_argv(opts: RunOptions) -> list[str]:
    """The daemon's arguments for a live source (none for a plain file)."""
    lv = opts.live
    argv = []
    if classify_source(opts.source) in ("url", "v4l2") or lv.realtime:
        argv += ["--open-timeout", f"{lv.open_timeout_s:g}",
                 "--read-timeout", f"{lv.read_timeout_s:g}"]
    argv += ["--realtime"] if lv.realtime else []
    argv += ["--loop"] if lv.loop else []
    for flag, value in (("--video-size", lv.v4l2.video_size), ("--framerate", lv.v4l2.framerate),
                        ("--input-format", lv.v4l2.input_format)):
        if value:
            argv += [flag, value]
    if opts.duration_s is not None:
        argv += ["--duration", f"{opts.duration_s:g}"]
    return argv


def _summary(console: Console, info: Any, stats: RunStats, out: Path, elapsed: float,
             collector: Any, live: bool = False) -> None:
    out_console = Console()
    if live:
        out_console.print(f"[bold]{info.source_id}[/]: {stats.frames_read} frames read live in "
                          f"{elapsed:.1f} s over {stats.generations} connection(s)"
                          + (f", {stats.stalls} stall(s)" if stats.stalls else ""))
    else:
        duration = (info.duration_ns or 0) / 1e9
        what = f"{stats.frames_read} frames read" if info.width else "audio"
        out_console.print(f"[bold]{info.source_id}[/]: {what} "
                          f"({duration:.1f} s of media) in {elapsed:.1f} s "
                          f"= {duration / elapsed if elapsed else 0:.2f}x real time")
    table = Table(title="extractors", title_justify="left")
    for col in ("component", "frames", "frames/s", "p50 ms", "p95 ms", "max ms"):
        table.add_column(col, justify="right" if col != "component" else "left")
    for comp, values in sorted(stats.processed.items()):
        span = (stats.last_wall[comp] - stats.first_wall[comp]) / 1e9
        fps = (len(values) - 1) / span if span > 0 else float("nan")
        table.add_row(comp, str(len(values)), f"{fps:.1f}", f"{percentile(values, 50):.1f}",
                      f"{percentile(values, 95):.1f}", f"{max(values):.1f}")
    out_console.print(table)
    drops = ", ".join(f"{k} {v}" for k, v in sorted(stats.drops.items())) or "none"
    out_console.print(f"drops: {drops}; late observations: {stats.late}; "
                      f"errors: {len(stats.errors)}")
    if stats.triggers:
        t = Table(title="triggers", title_justify="left")
        for col in ("rule", "event s", "window s", "score", "clip"):
            t.add_column(col)
        clips = {c.get("t_event_ns"): c for c in stats.clips}
        for trig in stats.triggers:
            clip = clips.get(trig.get("t_event_ns"))
            t.add_row(trig["rule"], f"{trig['t_event_ns'] / 1e9:.2f}",
                      f"{trig['t_start_ns'] / 1e9:.2f}-{trig['t_end_ns'] / 1e9:.2f}",
                      f"{trig['score']:.2f}", Path(clip["path"]).name if clip else "-")
        out_console.print(t)
    else:
        out_console.print("triggers: none")
    out_console.print(f"wrote {out / 'triggers.jsonl'}, {len(stats.clips)} clip(s) in "
                      f"{out / 'clips'}, {collector.written} trace records in "
                      f"{out / 'trace.jsonl'}")
    out_console.print(f"details: momentbus trace summary {out / 'trace.jsonl'}  "
                      f"(or: trace plot ... -o timeline.png); look: momentbus review {out}",
                      highlight=False)
    for err in stats.errors[:5]:
        out_console.print(f"[red]error[/] {err.get('component')}: {err.get('error')}")
