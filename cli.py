"""The ``momentbus`` console script: one sub-command per process role, plus tools.

User mistakes (a missing file, a bad rules file, an address in use) print one line,
``momentbus: error: ...``, and exit with code 2: never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .lifecycle import ExitCode

EXIT_USAGE = ExitCode.USAGE


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
    _metrics_argument(g)


def _metrics_argument(g: Any, whole_run: bool = False) -> None:
    counted = ("every process's trace records (one endpoint for the whole run)" if whole_run
               else "this process's trace records")
    g.add_argument("--metrics", metavar="HOST:PORT",
                   help=f"serve Prometheus metrics (/metrics) and /healthz, /readyz here, counted "
                        f"from {counted} (off by default; port 0 picks a free port; a "
                        f"non-loopback address needs --insecure)")


def _fps(text: str) -> float:
    """Frames per second in the range the wire accepts (one frame every 100 s to 1000 fps)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.01 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 0.01 and 1000 frames/s")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, not {text!r}")
    return int(text)


def _workers(text: str) -> str:
    if text != "auto":
        _positive_int(text)
    return text


def _clip_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip-format", choices=["auto", "mp4", "mkv"], default="auto",
                   help="clip container: auto (mp4 when it holds the source's codecs, else "
                        "Matroska), mp4 or mkv (default: auto)")
    p.add_argument("--clip-mode", choices=["copy", "exact"], default="copy",
                   help="copy: remux from the keyframe at or before the start (fast, lossless, "
                        "may start up to a GOP early); exact: re-encode so the clip starts and "
                        "ends on the requested frames (default: copy)")


def _security_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "other machines", "A bind on anything but ipc:// or a loopback address needs CURVE keys "
        "(or --insecure). With --keys every tcp:// bind admits exactly the client keys in "
        "DIR/clients/ and every tcp:// connect uses DIR/clients/NAME; copy the folder made by "
        "`momentbus keys init DIR` to every host.")
    g.add_argument("--keys", metavar="DIR", help="the key folder (momentbus keys init DIR)")
    g.add_argument("--key-name", default="default", metavar="NAME",
                   help="the client key this role connects with (default: default)")
    g.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind without keys (and a non-loopback "
                        "--metrics): no encryption, anyone who can reach it gets in (a warning "
                        "is printed)")


def _live_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "live sources", "SOURCE may be a URL FFmpeg opens as a live input (rtsp://, rtmp://, "
        "http(s)://, udp://, srt://), a V4L2 camera (/dev/videoN), or a file played as a camera "
        "(--realtime, --loop). A live source runs until Ctrl-C/SIGTERM (or --duration), "
        "reconnects after any disconnect or stall, and keeps a continuous clock across them.")
    g.add_argument("--realtime", action="store_true",
                   help="play a file at its own frame rate, as a live source")
    g.add_argument("--loop", action="store_true",
                   help="with --realtime: repeat the file forever, time continuing (a camera)")
    g.add_argument("--duration", type=float, metavar="S",
                   help="stop a live source after S seconds (default: until Ctrl-C/SIGTERM)")
    g.add_argument("--open-timeout", type=float, default=5.0, metavar="S",
                   help="seconds to open a live source before retrying (default: 5)")
    g.add_argument("--read-timeout", type=float, default=2.0, metavar="S",
                   help="seconds without a packet before FFmpeg's read fails; a stall is seen "
                        "after about twice this (default: 2)")
    g.add_argument("--video-size", metavar="WxH", help="V4L2: frame size, e.g. 1280x720")
    g.add_argument("--framerate", metavar="FPS", help="V4L2: frames per second, e.g. 30")
    g.add_argument("--input-format", metavar="FMT",
                   help="V4L2: mjpeg, h264 or yuyv (default: the driver's)")


def _live_options(args: argparse.Namespace) -> Any:
    """LiveOptions from the live-source arguments; a mistake is a one-line usage error."""
    from .daemon.live import LiveOptions, V4L2Options, classify_source

    if args.duration is not None and not args.duration > 0:
        raise UserError("--duration must be above 0 seconds")
    opts = LiveOptions(open_timeout_s=args.open_timeout, read_timeout_s=args.read_timeout,
                       realtime=args.realtime, loop=args.loop,
                       v4l2=V4L2Options.parse(args.video_size, args.framerate,
                                              args.input_format))
    opts.check(classify_source(args.source))
    if args.duration is not None and not (classify_source(args.source) in ("url", "v4l2")
                                          or args.realtime):
        raise UserError("--duration applies to a live source (a URL, a camera, or a file "
                        "with --realtime)")
    return opts


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
    p.add_argument("source", help="a media file (audio-only is fine with --extractors speech), "
                                  "a live URL (rtsp://...), a V4L2 camera (/dev/video0)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--rules", help="trigger rules TOML (default: the shipped default_rules.toml)")
    p.add_argument("--extractors", default="face,quality",
                   help="comma-separated kinds: face, pose, gesture, quality, speech; KIND:N "
                        "starts N processes of a kind that share its frames (default: "
                        "face,quality)")
    p.add_argument("--fps", type=_fps, default=10.0,
                   help="analysis frames per second per extractor (default: 10)")
    p.add_argument("--workers", type=_workers, default="auto", metavar="auto|N",
                   help="processes for each kind given no count: auto splits the slowest "
                        "kinds over the cores from their measured cost per frame, and sets each "
                        "process's model threads so the run does not oversubscribe the cores; "
                        "N starts N of each per-frame kind (default: auto; README Performance)")
    p.add_argument("--restart-budget", type=int, default=3,
                   help="restarts allowed per crashed extractor (default: 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--save-obs", action="store_true",
                   help="also write every observation fusion receives to OUT/obs.jsonl")
    p.add_argument("--trace-level", default="normal",
                   choices=["off", "minimal", "normal", "verbose"])
    _metrics_argument(p, whole_run=True)
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --metrics address (a warning is printed)")
    _clip_options(p)
    _live_arguments(p)

    p = sub.add_parser("daemon", help="serve a source on the frame bus")
    p.add_argument("source", help="a media file, a live URL (rtsp://...), a V4L2 camera "
                                  "(/dev/videoN), or mic / mic:DEVICE for a microphone")
    p.add_argument("--bind", required=True, metavar="ADDR",
                   help="frame bus address, e.g. ipc:///tmp/mb-frames or tcp://127.0.0.1:5550")
    p.add_argument("--fusion", metavar="ADDR", help="send the end-of-stream to fusion here")
    p.add_argument("--expect", default="", help="comma-separated groups to wait for before reading")
    p.add_argument("--wait", type=float, default=120.0,
                   help="seconds to wait for the expected groups (default: 120)")
    p.add_argument("--state", metavar="FILE",
                   help="keep the resume point here: restarted with the same FILE, the daemon "
                        "starts where every group had acknowledged (default: start over, and "
                        "send nobody what it reports done)")
    p.add_argument("--audio-only", action="store_true",
                   help="accept a file without video (only audio extractors will attach)")
    _live_arguments(p)
    _security_arguments(p)
    _common(p)

    p = sub.add_parser("extractor", help="run one extractor process")
    p.add_argument("kind", help="face, pose, gesture, quality or speech")
    p.add_argument("--daemon", required=True, metavar="ADDR", help="the daemon's frame bus")
    p.add_argument("--fusion", required=True, metavar="ADDR", help="fusion's address")
    p.add_argument("--backend", help="backend name (default per kind)")
    p.add_argument("--group", help="group name (default: the kind); same group = load balancing")
    p.add_argument("--instance", "--index", dest="instance", type=int, default=1,
                   help="this process's number within its group (1, 2, ...: run several "
                        "instances of one kind to share its frames; a restart keeps its number)")
    p.add_argument("--daemon-timeout", type=float, default=300.0, metavar="S",
                   help="give up after this long without a word from the daemon (default: 300; "
                        "shorter silences are a restarting daemon: it is rejoined)")
    p.add_argument("--fps", type=_fps, help="sampling rate (default: every frame)")
    p.add_argument("--policy", choices=["auto", "every", "latest"], default="auto",
                   help="every: lossless, in order; latest: the newest frame on credit, the "
                        "frames skipped traced as drops; auto: latest for a live source's "
                        "video, every otherwise (default: auto)")
    p.add_argument("--encoding", choices=["auto", "raw", "shm", "jpeg"], default="auto",
                   help="how pixels travel: shm (same host: shared memory, fastest), raw (any "
                        "host, every byte: 2.76 MB a 720p frame), jpeg (q80, ~45x smaller at "
                        "720p; lossy); auto: shm when the daemon's address is ipc:// or "
                        "loopback, jpeg otherwise (default: auto; bench/hosts.py)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads for this process's model: OpenCV's pool, and the backend's "
                        "runtime where it takes a number (insightface, faster-whisper, "
                        "whispercpp); default: the libraries' own (one per core)")
    _security_arguments(p)
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
    p.add_argument("--resume", action="store_true",
                   help="a restart: replay OUT/fusion.wal (rule state and triggers come out as "
                        "before) and append to OUT/triggers.jsonl; without it both start afresh")
    _security_arguments(p)
    _common(p)

    p = sub.add_parser("clip", help="cut clips for incoming triggers")
    p.add_argument("source", help="the video file the triggers refer to (a live source: its "
                                  "URL or device, a label only)")
    p.add_argument("--bind", required=True, metavar="ADDR", help="where fusion sends TRIGs")
    p.add_argument("--out", required=True, help="clips go to OUT/clips/")
    _clip_options(p)
    g = p.add_argument_group(
        "live sources", "With --frames the clip role keeps the live source's encoded packets in "
        "a ring buffer and cuts each clip from it once its post-roll has arrived (mp4, edit "
        "list: no re-encode, the first frame shown is the first at or after the start).")
    g.add_argument("--frames", metavar="ADDR",
                   help="the daemon's frame bus address: read the live source's packets there")
    g.add_argument("--ring-seconds", type=float, default=20.0, metavar="S",
                   help="seconds of packets the ring keeps behind the newest: at least the "
                        "longest pre-roll + post-roll of the rules plus the pipeline's latency "
                        "(momentbus run computes it; default: 20)")
    g.add_argument("--ring-mb", type=float, default=64.0, metavar="MB",
                   help="bound on the ring's memory, MiB (default: 64)")
    _security_arguments(p)
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
    p.add_argument("file", nargs="+",
                   help="a trace JSONL (e.g. OUT/trace.jsonl; partial ones too), or several "
                        "(each role's --trace-file, from any hosts): read as one trace")
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

    p = sub.add_parser("keys", help="make CURVE keys for roles on other machines",
                       description="init DIR: a server key pair and a 'default' client pair "
                                   "(secrets 0600, folder 0700). add DIR NAME: one more client. "
                                   "Copy the folder to every host and give each role --keys DIR; "
                                   "deleting DIR/clients/NAME.key on the binding hosts revokes "
                                   "NAME. Prints the public keys' fingerprints, never a secret.")
    keys_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = keys_sub.add_parser("init", help="create a key folder")
    p.add_argument("dir")
    p = keys_sub.add_parser("add", help="add a client key pair")
    p.add_argument("dir")
    p.add_argument("name", help="letters, digits, _ and -, up to 64")

    p = sub.add_parser("rules", help="check a rules file")
    rules_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = rules_sub.add_parser(
        "check", help="validate a rules file and list its rules",
        description="Validate a rules TOML file (every key of every rule against what its kind "
                    "takes) and list its rules; without FILE, the shipped default rules. A "
                    "mistake is one line naming the file, the rule, the key and its line; exit 2.")
    p.add_argument("file", nargs="?", help="rules TOML (default: the shipped default_rules.toml)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print every rule's settings and parameters, defaults included")
    return parser


@contextlib.contextmanager
def _tracer(args: argparse.Namespace, component: str, expected_groups: Sequence[str] = (),
            live_source: bool = False) -> Iterator[Any]:
    """This role's tracer, closed at the end; with ``--metrics`` its records also feed a
    Prometheus endpoint (``/readyz``: ``expected_groups`` joined, the live source connected)."""
    from .traces.logs import configure_logging
    from .traces.records import Level
    from .traces.tracer import Tracer

    configure_logging(args.log_level)
    with contextlib.ExitStack() as stack:
        tracer = stack.enter_context(Tracer(component, collector=args.trace_collector,
                                            path=args.trace_file,
                                            level=Level.parse(args.trace_level)))
        if args.metrics:
            metrics = _serve_metrics(args, stack, expected_groups, live_source)
            tracer.add_observer(metrics.observe)
        yield tracer


def _serve_metrics(args: argparse.Namespace, stack: contextlib.ExitStack,
                   expected_groups: Sequence[str], live_source: bool) -> Any:
    """Start ``--metrics`` (closed with ``stack``) and say where on stderr; a bad or
    non-loopback address without ``--insecure`` is a :class:`UserError`."""
    from .traces.binds import BindError, is_loopback, parse_bind
    from .traces.metrics import TraceMetrics, serve_metrics

    try:
        host, _ = parse_bind(args.metrics)
        if not is_loopback(host) and not args.insecure:
            raise UserError(f"--metrics {args.metrics}: not a loopback address; the metrics "
                            f"show the run to anyone who can reach the port: add --insecure "
                            f"to serve them there anyway")
        metrics = TraceMetrics(process_metrics=True)
        server = stack.enter_context(serve_metrics(args.metrics, metrics,
                                                   expected_groups=expected_groups,
                                                   live_source=live_source))
    except BindError as e:
        raise UserError(f"--metrics: {e}") from None
    if args.insecure and not is_loopback(host):
        print(f"momentbus: warning: --insecure: metrics served on {server.url} to anyone who "
              f"can reach it", file=sys.stderr)
    print(f"momentbus: metrics at {server.url}/metrics", file=sys.stderr, flush=True)
    return metrics


@contextlib.contextmanager
def _secured(args: argparse.Namespace, tracer: Any, binds: tuple[str, ...] = (),
             ) -> Iterator[Any]:
    """This role's CURVE keys or bind policy, for every socket it makes (ipc/security.py);
    refused peers are traced. Unusable keys or an insecure bind fail here, before any work."""
    from .ipc import sockets
    from .ipc.security import RoleSecurity

    def refused(fingerprint: str | None, address: str, reason: str) -> None:
        tracer.emit("member", event="refused", fingerprint=fingerprint, address=address,
                    reason=reason)

    security = RoleSecurity(args.keys, args.key_name, args.insecure, on_refused=refused)
    security.check(binds)
    previous = sockets.use_security(security)
    try:
        yield security
    finally:
        sockets.use_security(previous)
        security.close()


def _groups(text: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in text.split(",") if g.strip())


def _role(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a role process: first ask for the parent-death signal (no orphan if the parent of a
    local run dies), then the role, which installs its stop flag and closes its tracer."""

    def wrapper(args: argparse.Namespace) -> int:
        from .lifecycle import die_with_parent

        die_with_parent()
        return fn(args)

    return wrapper


@_role
def cmd_daemon(args: argparse.Namespace) -> int:
    from .daemon.live import is_live
    from .daemon.main import DaemonConfig, is_microphone, run
    from .lifecycle import StopFlag
    from .media import probe

    live = _live_options(args)
    live_source = not is_microphone(args.source) and is_live(args.source, live)
    if not is_microphone(args.source) and not live_source:
        probe(args.source, require_video=not args.audio_only)
    with _tracer(args, "daemon", _groups(args.expect), live_source=live_source) as tracer, \
            _secured(args, tracer, (args.bind,)):
        return run(DaemonConfig(args.source, args.bind, args.fusion, _groups(args.expect),
                                args.wait, require_video=not args.audio_only, state=args.state,
                                live=live, duration_s=args.duration), tracer,
                   StopFlag().install())


def _encoding_for(encoding: str, daemon: str) -> str:
    """``auto``: shared memory when the daemon is on this host (ipc://, loopback), JPEG across
    hosts (a 1 Gbit/s link carries 45 raw 720p frames/s, ~2,000 JPEG ones: bench/hosts.py)."""
    if encoding != "auto":
        return encoding
    from .ipc.curve import is_loopback

    return "shm" if is_loopback(daemon) else "jpeg"


@_role
def cmd_extractor(args: argparse.Namespace) -> int:
    from .extractors.base import build, takes_option
    from .extractors.runner import RunnerConfig, run
    from .lifecycle import StopFlag

    stop = StopFlag().install()
    cfg = RunnerConfig(args.kind, args.daemon, args.fusion, args.backend, args.group,
                       args.instance, args.fps, args.policy,
                       _encoding_for(args.encoding, args.daemon),
                       daemon_timeout_s=args.daemon_timeout)
    options = {}
    if args.threads:
        import cv2

        # OpenCV's pool is process wide (its default, one thread per core, cost 5 % more CPU a
        # face frame than 1 thread here: 32 vs 30.5 ms); the backend's runtime where it takes a
        # number
        cv2.setNumThreads(args.threads)
        if takes_option(args.kind, args.backend, "threads"):
            options["threads"] = args.threads
    with _tracer(args, cfg.component, [cfg.group_name]) as tracer, _secured(args, tracer):
        # load the model before joining: ready = loaded
        extractor = build(args.kind, args.backend, **options)
        return run(cfg, tracer, stop, extractor)


@_role
def cmd_fusion(args: argparse.Namespace) -> int:
    from .fusion.main import FusionConfig, run
    from .fusion.rules import load_rules
    from .lifecycle import StopFlag

    specs = load_rules(args.rules)
    with _tracer(args, "fusion", _groups(args.expect)) as tracer, \
            _secured(args, tracer, (args.bind,)):
        return run(FusionConfig(args.bind, args.out, args.clip, _groups(args.expect),
                                int(args.idle_timeout * 1e9), save_obs=args.save_obs,
                                resume=args.resume), specs, tracer, StopFlag().install())


@_role
def cmd_clip(args: argparse.Namespace) -> int:
    from .clip.main import ClipConfig, run
    from .lifecycle import StopFlag

    if not 0 < args.ring_seconds <= 3600:
        raise UserError("--ring-seconds must be above 0 and at most 3600")
    if not 1 <= args.ring_mb <= 65536:
        raise UserError("--ring-mb must be between 1 and 65536")
    with _tracer(args, "clip") as tracer, _secured(args, tracer, (args.bind,)):
        return run(ClipConfig(args.source, args.bind, args.out, args.clip_format,
                              args.clip_mode, frames=args.frames,
                              ring_s=args.ring_seconds,
                              ring_bytes=int(args.ring_mb * 1024 * 1024)), tracer,
                   StopFlag().install())


def cmd_run(args: argparse.Namespace) -> int:
    from .forkserver import ForkServer

    with contextlib.ExitStack() as stack:
        # first: the zygote imports the roles' libraries while this process imports its own
        fork_server = ForkServer(_groups(args.extractors)).start()
        stack.callback(fork_server.close)
        from .daemon.live import is_live
        from .lifecycle import StopFlag
        from .run import RunOptions, plan_extractors, run_pipeline

        opts = RunOptions(
            source=args.source, out_dir=args.out, rules=args.rules,
            extractors=_groups(args.extractors), fps=args.fps,
            restart_budget=args.restart_budget, quiet=args.quiet, trace_level=args.trace_level,
            save_obs=args.save_obs, clip_format=args.clip_format, clip_mode=args.clip_mode,
            live=_live_options(args), duration_s=args.duration, workers=args.workers)
        metrics = None
        if args.metrics:  # one endpoint for the whole run, from the records the run collects
            metrics = _serve_metrics(args, stack, list(plan_extractors(opts.extractors)),
                                     is_live(opts.source, opts.live))
        return run_pipeline(opts, StopFlag().install(), metrics, fork_server).exit_code


def cmd_extract(args: argparse.Namespace) -> int:
    import json

    from .extractors.offline import extract_file
    from .ipc.schema import payload_fields

    options = {"model": args.model} if args.model else {}
    for obs in extract_file(args.kind, args.source, args.backend, args.fps, **options):
        line = {"kind": obs.kind, "source_id": obs.source_id, "seq": obs.seq, "t_ns": obs.t_ns,
                **payload_fields(obs.payload)}
        print(json.dumps(line, separators=(",", ":")), flush=True)
    return ExitCode.OK


def cmd_samples(args: argparse.Namespace) -> int:
    from .daemon import samples

    if args.action == "list":
        for s in samples.SAMPLES.values():
            print(f"{s.name}\t{s.what}")
        return ExitCode.OK
    names = [args.name] if args.name else None
    if args.name and args.name not in samples.SAMPLES:
        raise UserError(f"unknown sample {args.name!r} (see `momentbus samples list`)")
    if args.action == "path":
        print(samples.path(args.name or samples.DEFAULT_SAMPLE))
        return ExitCode.OK
    for path in samples.fetch(names):
        print(path)
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .daemon import samples
    from .run import RunOptions, run_pipeline

    from .lifecycle import StopFlag

    video = samples.path(samples.DEFAULT_SAMPLE)
    print(f"sample video: {video}", file=sys.stderr)
    return run_pipeline(RunOptions(source=str(video), out_dir=args.out, quiet=args.quiet),
                        StopFlag().install()).exit_code


def cmd_trace(args: argparse.Namespace) -> int:
    import json

    from .traces.summary import read_records, render, summarize

    records, bad = [], 0
    for path in args.file:
        try:
            more, more_bad = read_records(path)
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror})") from None
        records += more
        bad += more_bad
    if not records:
        raise UserError(f"{' '.join(args.file)}: no trace records in it")
    records.sort(key=lambda r: r.get("wall_ns") or 0)  # several files: one timeline
    if args.action == "summary":
        summary = summarize(records)
        if args.json:
            print(json.dumps({**summary, "malformed_lines": bad}, indent=1))
        else:
            render(summary, bad)
        return ExitCode.OK
    from .traces.plot import plot_timeline

    print(plot_timeline(records, args.output,
                        title=f"momentbus timeline: {' '.join(args.file)}"))
    return ExitCode.OK


def cmd_keys(args: argparse.Namespace) -> int:
    from .ipc import curve

    if args.action == "init":
        folder = curve.init_keys(args.dir)
        server = curve.load_server_keys(folder)
        client = curve.load_client_keys(folder)
        print(f"wrote {folder}: server key {server.fingerprint}, client 'default' "
              f"{client.pair.fingerprint}")
    else:
        path = curve.add_client(args.dir, args.name)
        client = curve.load_client_keys(args.dir, args.name)
        print(f"wrote {path} (and its secret, 0600): client {args.name!r} "
              f"{client.pair.fingerprint}")
    return ExitCode.OK


def cmd_review(args: argparse.Namespace) -> int:
    from .traces.review import USER_ERRORS, serve

    try:
        serve(args.out, args.bind, token=args.token, insecure=args.insecure)
    except USER_ERRORS as e:
        raise UserError(f"review: {e}") from None
    return ExitCode.OK


def cmd_rules(args: argparse.Namespace) -> int:
    from .fusion.rules import describe_spec, load_rules

    for spec in load_rules(args.file):
        print(f"ok  {spec.name} ({spec.kind})" + (f": {describe_spec(spec)}" if args.verbose
                                                  else ""))
    return ExitCode.OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "daemon": cmd_daemon, "extractor": cmd_extractor, "fusion": cmd_fusion,
    "clip": cmd_clip, "extract": cmd_extract, "samples": cmd_samples, "trace": cmd_trace,
    "demo": cmd_demo, "rules": cmd_rules, "keys": cmd_keys, "review": cmd_review,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix: one line, no traceback. Their modules import
    numpy, PyAV and pyzmq (0.4 s here), so they are imported only when something is raised:
    ``run`` starts its fork server first thing, and its imports overlap this process's."""
    import zmq

    from .daemon.samples import SampleError
    from .extractors.base import ExtractorError
    from .fusion.rules import RulesError
    from .ipc.curve import SecurityError
    from .media import SourceError

    return (UserError, SourceError, RulesError, ExtractorError, SampleError, SecurityError,
            zmq.ZMQError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except _user_errors() as e:  # evaluated only once something is raised
        print(f"momentbus: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `momentbus extract ... | head`: the reader left, stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
