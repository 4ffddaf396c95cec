"""The ``momentbus`` console script: one sub-command per process role, plus tools.

User mistakes (a missing file, a bad rules file, an address in use) print one line,
``momentbus: error: ...``, and exit with code 2: never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USAGE = 2


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracing and logs")
    g.add_argument("--trace-collector", metavar="ADDR",
                   help="send trace records to this collector address (momentbus run sets it)")
    g.add_argument("--trace-file", metavar="PATH", help="also write this process's records here")
    g.add_argument("--trace-level", default="normal",
                   choices=["off", "minimal", "normal", "verbose"],
                   help="how much to trace (default: normal)")
    g.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"], help="stderr log level")


def _fps(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="momentbus",
        description="Turn video and audio into clips of the moments that matter: a source daemon, "
                    "extractor processes and a watermark fusion process over ZeroMQ.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="the whole pipeline on one machine (the embedded default)",
                       description="Start the daemon, the extractors, fusion and the clip "
                                   "extractor as local processes over ipc://, show progress, and "
                                   "end with a summary once every clip is written. Writes "
                                   "OUT/triggers.jsonl, OUT/clips/*.mp4 (+ .json sidecars), "
                                   "OUT/trace.jsonl and OUT/logs/.")
    p.add_argument("source", help="a media file (audio-only is fine with --extractors speech)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--rules", help="trigger rules TOML (default: the shipped default_rules.toml)")
    p.add_argument("--extractors", default="face,quality",
                   help="comma-separated kinds: face, pose, gesture, quality, speech "
                        "(default: face,quality)")
    p.add_argument("--fps", type=_fps, default=10.0,
                   help="analysis frames per second per extractor (default: 10)")
    p.add_argument("--restart-budget", type=int, default=3,
                   help="restarts allowed per crashed extractor (default: 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--save-obs", action="store_true",
                   help="also write every observation fusion receives to OUT/obs.jsonl")
    p.add_argument("--trace-level", default="normal",
                   choices=["off", "minimal", "normal", "verbose"])

    p = sub.add_parser("daemon", help="serve a source on the frame bus")
    p.add_argument("source", help="a media file, or mic / mic:DEVICE for a microphone")
    p.add_argument("--bind", required=True, metavar="ADDR",
                   help="frame bus address, e.g. ipc:///tmp/mb-frames or tcp://127.0.0.1:5550")
    p.add_argument("--fusion", metavar="ADDR", help="send the end-of-stream to fusion here")
    p.add_argument("--expect", default="", help="comma-separated groups to wait for before reading")
    p.add_argument("--wait", type=float, default=120.0,
                   help="seconds to wait for the expected groups (default: 120)")
    p.add_argument("--realtime", action="store_true", help="pace the file at its own frame rate")
    p.add_argument("--audio-only", action="store_true",
                   help="accept a file without video (only audio extractors will attach)")
    _common(p)

    p = sub.add_parser("extractor", help="run one extractor process")
    p.add_argument("kind", help="face, pose, gesture, quality or speech")
    p.add_argument("--daemon", required=True, metavar="ADDR", help="the daemon's frame bus")
    p.add_argument("--fusion", required=True, metavar="ADDR", help="fusion's address")
    p.add_argument("--backend", help="backend name (default per kind)")
    p.add_argument("--group", help="group name (default: the kind); same group = load balancing")
    p.add_argument("--index", type=int, default=1, help="member number within the group")
    p.add_argument("--fps", type=_fps, help="sampling rate (default: every frame)")
    p.add_argument("--policy", choices=["every", "latest"], default="every",
                   help="every: lossless, in order (files); latest: newest frame (live)")
    p.add_argument("--encoding", choices=["raw", "shm", "jpeg"], default="raw",
                   help="shm (same host: pixels in shared memory, fastest), raw (any host, "
                        "bytes over ZeroMQ) or jpeg (cross-host, ~20x less bandwidth)")
    _common(p)

    p = sub.add_parser("fusion", help="align observations and fire triggers")
    p.add_argument("--bind", required=True, metavar="ADDR", help="where extractors send")
    p.add_argument("--clip", metavar="ADDR", help="the clip extractor's address")
    p.add_argument("--out", required=True, help="folder for triggers.jsonl")
    p.add_argument("--rules", help="trigger rules TOML (default: shipped defaults)")
    p.add_argument("--expect", default="",
                   help="comma-separated extractor groups that will run; rules needing other "
                        "groups are left out (default: every group the rules read, each "
                        "waited for up to 60 s)")
    p.add_argument("--idle-timeout", type=float, default=2.0,
                   help="seconds of silence before a member is absent (default: 2)")
    p.add_argument("--save-obs", action="store_true",
                   help="write every observation received to OUT/obs.jsonl")
    _common(p)

    p = sub.add_parser("clip", help="cut clips for incoming triggers")
    p.add_argument("source", help="the video file the triggers refer to")
    p.add_argument("--bind", required=True, metavar="ADDR", help="where fusion sends TRIGs")
    p.add_argument("--out", required=True, help="clips go to OUT/clips/")
    _common(p)

    p = sub.add_parser("extract", help="one extractor in-process on a file, Obs as JSON lines",
                       description="Run one extractor on a file and print one observation per "
                                   "processed frame (or speech segment) as a JSON line on "
                                   "stdout: kind, source_id, seq, t_ns and the kind's fields.")
    p.add_argument("kind", help="face, pose, gesture, quality or speech")
    p.add_argument("source", help="a media file (wav is fine for speech)")
    p.add_argument("--backend", help="backend name (default per kind)")
    p.add_argument("--fps", type=_fps, help="frames per second to process (default: all)")
    p.add_argument("--model", help="model path, for backends that take one (whispercpp, ultralytics)")

    p = sub.add_parser("samples", help="fetch the real sample videos (hash-checked)")
    p.add_argument("action", choices=["fetch", "path", "list"])
    p.add_argument("name", nargs="?", help="sample name (default: WolfgangLanger_Pexels.mp4)")

    p = sub.add_parser("demo", help="fetch the sample video and `run` on it")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("trace", help="read a trace: summary tables or a timeline picture",
                       description="summary: per-component latency percentiles and frames/s, "
                                   "drops by reason, sync delays by who was waited for, late "
                                   "observations, triggers and clips. plot: a timeline PNG.")
    p.add_argument("action", choices=["summary", "plot"])
    p.add_argument("file", help="a trace JSONL (e.g. OUT/trace.jsonl), partial ones too")
    p.add_argument("--json", action="store_true", help="summary: print JSON instead of tables")
    p.add_argument("-o", "--output", default="timeline.png", help="plot: PNG path")

    p = sub.add_parser("review", help="a web page over a run's OUT folder: triggers, clips, "
                                      "processing time and sync delays",
                       description="Serve a page over OUT (a finished run, or a live one: the "
                                   "page updates as triggers, clips and trace records arrive): "
                                   "the source's timeline with every trigger (rule, onset, clip "
                                   "window, score, missing modalities); click one to play its "
                                   "clip and list its evidence; per-component lanes of "
                                   "processing time and sync delay, drops and late "
                                   "observations from trace.jsonl. Works offline (no CDN). "
                                   "Prints the page's URL on stderr once it listens.")
    p.add_argument("out", metavar="OUT", help="the run's output folder (momentbus run --out)")
    p.add_argument("--bind", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where to serve (default: 127.0.0.1:8080; port 0 picks a free port)")
    p.add_argument("--token", help="require this token on every request (?token=T, or the "
                                   "header Authorization: Bearer T); the printed URL has it")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --bind without --token (anyone who can reach "
                        "the port sees the clips)")

    p = sub.add_parser("rules", help="rules tools")
    p.add_argument("action", choices=["check"])
    p.add_argument("file")
    return parser


def _tracer(args: argparse.Namespace, component: str) -> Any:
    from .traces.logs import configure_logging
    from .traces.records import Level
    from .traces.tracer import Tracer

    configure_logging(args.log_level)
    return Tracer(component, collector=args.trace_collector, path=args.trace_file,
                  level=Level.parse(args.trace_level))


def _groups(text: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in text.split(",") if g.strip())


def _role(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a role process: parent-death signal, stop flag, tracer closed on the way out."""

    def wrapper(args: argparse.Namespace) -> int:
        from .supervisor import die_with_parent

        die_with_parent()
        return fn(args)

    return wrapper


@_role
def cmd_daemon(args: argparse.Namespace) -> int:
    from .daemon.main import DaemonConfig, run
    from .daemon.source import probe
    from .supervisor import StopFlag

    from .daemon.main import is_microphone

    if not is_microphone(args.source):
        probe(args.source, require_video=not args.audio_only)
    tracer = _tracer(args, "daemon")
    try:
        return run(DaemonConfig(args.source, args.bind, args.fusion, _groups(args.expect),
                                args.wait, realtime=args.realtime,
                                require_video=not args.audio_only), tracer, StopFlag().install())
    finally:
        tracer.close()


@_role
def cmd_extractor(args: argparse.Namespace) -> int:
    from .extractors.base import build
    from .extractors.runner import RunnerConfig, run
    from .supervisor import StopFlag

    stop = StopFlag().install()
    cfg = RunnerConfig(args.kind, args.daemon, args.fusion, args.backend, args.group, args.index,
                       args.fps, args.policy, args.encoding)
    extractor = build(args.kind, args.backend)  # load the model before joining: ready = loaded
    tracer = _tracer(args, cfg.component)
    try:
        return run(cfg, tracer, stop, extractor)
    finally:
        tracer.close()


@_role
def cmd_fusion(args: argparse.Namespace) -> int:
    from .fusion.main import FusionConfig, run
    from .fusion.rules import load_rules
    from .supervisor import StopFlag

    specs = load_rules(args.rules)
    tracer = _tracer(args, "fusion")
    try:
        return run(FusionConfig(args.bind, args.out, args.clip, _groups(args.expect),
                                int(args.idle_timeout * 1e9), save_obs=args.save_obs), specs, tracer,
                   StopFlag().install())
    finally:
        tracer.close()


@_role
def cmd_clip(args: argparse.Namespace) -> int:
    from .clip.main import ClipConfig, run
    from .supervisor import StopFlag

    tracer = _tracer(args, "clip")
    try:
        return run(ClipConfig(args.source, args.bind, args.out), tracer, StopFlag().install())
    finally:
        tracer.close()


def cmd_run(args: argparse.Namespace) -> int:
    from .run import RunOptions, run_pipeline

    return run_pipeline(RunOptions(
        source=args.source, out_dir=args.out, rules=args.rules,
        extractors=_groups(args.extractors), fps=args.fps, restart_budget=args.restart_budget,
        quiet=args.quiet, trace_level=args.trace_level, save_obs=args.save_obs))


def cmd_extract(args: argparse.Namespace) -> int:
    import json

    from .extractors.offline import extract_file

    options = {"model": args.model} if args.model else {}
    for obs in extract_file(args.kind, args.source, args.backend, args.fps, **options):
        print(json.dumps(obs, separators=(",", ":")), flush=True)
    return 0


def cmd_samples(args: argparse.Namespace) -> int:
    from .daemon import samples

    if args.action == "list":
        for s in samples.SAMPLES.values():
            print(f"{s.name}\t{s.what}")
        return 0
    names = [args.name] if args.name else None
    if args.name and args.name not in samples.SAMPLES:
        raise UserError(f"unknown sample {args.name!r} (see `momentbus samples list`)")
    if args.action == "path":
        print(samples.path(args.name or samples.DEFAULT_SAMPLE))
        return 0
    for path in samples.fetch(names):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .daemon import samples
    from .run import RunOptions, run_pipeline

    video = samples.path(samples.DEFAULT_SAMPLE)
    print(f"sample video: {video}", file=sys.stderr)
    return run_pipeline(RunOptions(source=str(video), out_dir=args.out, quiet=args.quiet))


def cmd_trace(args: argparse.Namespace) -> int:
    import json

    from .traces.summary import read_records, render, summarize

    try:
        records, bad = read_records(args.file)
    except OSError as e:
        raise UserError(f"{args.file}: cannot read ({e.strerror})") from None
    if not records:
        raise UserError(f"{args.file}: no trace records in it")
    if args.action == "summary":
        summary = summarize(records)
        if args.json:
            print(json.dumps({**summary, "malformed_lines": bad}, indent=1))
        else:
            render(summary, bad)
        return 0
    from .traces.plot import plot_timeline

    print(plot_timeline(records, args.output, title=f"momentbus timeline: {args.file}"))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from .traces.review import USER_ERRORS, serve

    try:
        serve(args.out, args.bind, token=args.token, insecure=args.insecure)
    except USER_ERRORS as e:
        raise UserError(f"review: {e}") from None
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from .fusion.rules import load_rules

    specs = load_rules(args.file)
    for s in specs:
        print(f"ok  {s.name} ({s.kind})")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "daemon": cmd_daemon, "extractor": cmd_extractor, "fusion": cmd_fusion,
    "clip": cmd_clip, "extract": cmd_extract, "samples": cmd_samples, "trace": cmd_trace, "demo": cmd_demo, "rules": cmd_rules,
    "review": cmd_review,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    import zmq

    from .daemon.errors import SourceError
    from .daemon.samples import SampleError
    from .extractors.base import ExtractorError
    from .fusion.rules import RulesError

    try:
        return COMMANDS[args.command](args)
    except (UserError, SourceError, RulesError, ExtractorError, SampleError) as e:
        print(f"momentbus: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except zmq.ZMQError as e:
        print(f"momentbus: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `momentbus extract ... | head`: the reader left, stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
