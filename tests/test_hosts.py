"""Roles on several hosts: network namespaces joined by veth (tests/netns.py), so every byte
between hosts crosses a real interface and every bind is not loopback (CURVE or --insecure).

Host a runs the daemon, fusion and the clip role; the extractors run on host b (and c). Each
role is a real `momentbus` process with its own --trace-file; the tests wait for processes to
exit (with timeouts) and read their traces. Skipped without root or ``ip netns``
(tests/HOSTS_NOTES.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import momentbus_cmd, run_momentbus
from momentbus.ipc import curve
from momentbus.ipc.sampling import FpsSampler
from netns import Host, Netns, netns_hosts, two_hosts, unavailable_reason
from skewed import faketime_library, reap, skewed_argv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRAMES, OBS, CLIP = 5550, 5551, 5552
#: The injected wall-clock error of one extractor's host (libfaketime).
SKEW_S = 2.5


@pytest.fixture
def net() -> Iterator[Netns]:
    yield from two_hosts()


@pytest.fixture
def net3() -> Iterator[Netns]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with netns_hosts(3) as n:
        yield n


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return curve.init_keys(tmp_path / "keys")


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


class Job:
    """One job's roles on namespaces: the source side on ``a``, extractors wherever asked."""

    def __init__(self, net: Netns, tmp: Path, video: Path, security: list[str]) -> None:
        self.net = net
        self.a = net[0]
        self.tmp = tmp
        self.video = video
        self.security = security
        self.out = tmp / "out"
        self.traces = tmp / "traces"
        self.traces.mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def addr(self, port: int) -> str:
        return f"tcp://{self.a.address}:{port}"

    def start(self, name: str, host: Host, argv: list[str], security: list[str] | None = None,
              skew: str | None = None) -> subprocess.Popen[str]:
        cmd = momentbus_cmd(*argv, "--trace-file", str(self.traces / f"{name}.jsonl"),
                            *(self.security if security is None else security))
        if skew is not None:
            cmd = skewed_argv(skew, cmd)
        proc = self.net.run_in(host, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        self.procs[name] = proc
        return proc

    def source_side(self, expect: str, save_obs: bool = False) -> None:
        self.start("clip", self.a, ["clip", str(self.video), "--bind", self.addr(CLIP),
                                    "--out", str(self.out)])
        self.start("fusion", self.a, ["fusion", "--bind", self.addr(OBS), "--clip",
                                      self.addr(CLIP), "--out", str(self.out), "--expect", expect]
                   + (["--save-obs"] if save_obs else []))
        self.start("daemon", self.a, ["daemon", str(self.video), "--bind", self.addr(FRAMES),
                                      "--fusion", self.addr(OBS), "--expect", expect])

    def extractor(self, name: str, host: Host, kind: str, *args: str,
                  security: list[str] | None = None, skew: str | None = None,
                  ) -> subprocess.Popen[str]:
        return self.start(name, host, ["extractor", kind, "--daemon", self.addr(FRAMES),
                                       "--fusion", self.addr(OBS), *args], security, skew)

    def wait(self, *names: str, timeout_s: float = 240) -> dict[str, tuple[int, str]]:
        """Exit code and stderr of each named role (it must end by itself in time)."""
        done = {}
        for name in names:
            proc = self.procs[name]
            _, err = proc.communicate(timeout=timeout_s)
            done[name] = (proc.returncode, err)
        return done

    def trace(self, name: str) -> list[dict]:
        return records(self.traces / f"{name}.jsonl")

    def triggers(self) -> list[tuple[str, int]]:
        path = self.out / "triggers.jsonl"
        return [(t["rule"], t["t_event_ns"]) for t in map(json.loads, path.read_text().splitlines())]

    def clips(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.out / "clips").glob("*.json"))]


@pytest.fixture(scope="module")
def local_triggers(sample, tmp_path_factory) -> list[tuple[str, int]]:
    """The same job on one host (`momentbus run`): the triggers every placement must give."""
    out = tmp_path_factory.mktemp("local") / "out"
    proc = run_momentbus("run", str(sample("WolfgangLanger_Pexels.mp4")), "--out", str(out),
                         "--quiet", timeout=240)
    assert proc.returncode == 0, proc.stderr
    return [(t["rule"], t["t_event_ns"]) for t in
            map(json.loads, (out / "triggers.jsonl").read_text().splitlines())]


def test_the_whole_job_across_two_hosts_with_curve(net, keys, sample, tmp_path,
                                                   local_triggers) -> None:
    """Daemon, fusion and clip on host a; face (raw pixels) and quality (JPEG, on a host whose
    wall clock is 2.5 s ahead) on host b; CURVE on every link. The smile fires at the same
    t_event as the local run, each trigger has its clip, every role exits 0, and the clock
    estimates and latency figures see through the skew."""
    if faketime_library() is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    b = net[1]
    job = Job(net, tmp_path, sample("WolfgangLanger_Pexels.mp4"), ["--keys", str(keys)])
    job.source_side("face,quality")
    job.extractor("face", b, "face", "--fps", "10", "--encoding", "raw")
    skewed = job.extractor("quality", b, "quality", "--fps", "10", "--encoding", "jpeg",
                           skew=f"+{SKEW_S}s")
    try:
        ended = job.wait("daemon", "fusion", "clip", "face", "quality")
    finally:
        reap(skewed)
    for name, (code, err) in ended.items():
        assert code == 0, f"{name}: {err[-2000:]}"
    assert job.triggers() == local_triggers and local_triggers
    clips = job.clips()
    assert len(clips) == len(local_triggers) and all(c["ok"] for c in clips)

    # each end of each link estimated the other's clock; b's extractors are seen at b's address
    by_daemon = {r["member"]: r for r in job.trace("daemon")
                 if r.get("record") == "member" and r.get("event") == "clock"}
    by_fusion = {r["member"]: r for r in job.trace("fusion")
                 if r.get("record") == "member" and r.get("event") == "clock"}
    skew_ns = int(SKEW_S * 1e9)
    for seen in (by_daemon, by_fusion):
        assert seen["extractor:face#1"]["host"] == seen["extractor:quality#1"]["host"] == b.address
        assert abs(seen["extractor:face#1"]["clock_offset_ns"]) < 5_000_000
        assert abs(seen["extractor:quality#1"]["clock_offset_ns"] - skew_ns) < 5_000_000
    quality_view = [r for r in job.trace("quality")
                    if r.get("record") == "member" and r.get("event") == "clock"]
    assert {r["peer"] for r in quality_view} == {"daemon", "fusion"}
    assert all(abs(r["clock_offset_ns"] + skew_ns) < 5_000_000 for r in quality_view)

    # latency figures are right, not off by the skew: capture -> send at the skewed extractor,
    # capture -> arrival at fusion
    sent = [r["latency_ms"] for r in job.trace("quality")
            if r.get("record") == "timing" and r.get("stage") == "process"]
    arrived = [r["capture_to_fusion_ms"] for r in job.trace("fusion")
               if r.get("stage") == "fusion_in" and r["member"] == "extractor:quality#1"
               and r["capture_to_fusion_ms"] is not None]  # None: before the first sample
    assert sent and len(arrived) > 0.9 * len(sent)
    assert max(sent) < 1000 and max(arrived) < 1000 and min(arrived) >= -5, (sent, arrived)

    # `trace summary` over every role's file shows them per host
    summary = subprocess.run(momentbus_cmd("trace", "summary", "--json",
                                           *map(str, sorted(job.traces.glob("*.jsonl")))),
                             capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0, summary.stderr
    doc = json.loads(summary.stdout)
    hosts = {(c["by"], c["peer"]): c for c in doc["clocks"]}
    assert hosts[("daemon", "extractor:quality#1")]["host"] == b.address
    assert abs(hosts[("daemon", "extractor:quality#1")]["offset_ms"] - SKEW_S * 1000) < 5
    assert set(doc["capture_to_fusion_ms"]) == {"extractor:face#1", "extractor:quality#1"}


def test_refused_extractors_get_nothing_are_traced_and_the_run_completes(net, keys, sample,
                                                                        tmp_path) -> None:
    """Beside an authorised quality extractor on host b: one without keys, one with a client
    key the folder does not hold, one from another `keys init` (a stranger). Each is refused
    at fusion (a member speaks to fusion first), traced with what is known of it, and never
    reaches the daemon; the job completes with the authorised one."""
    b = net[1]
    unknown = curve.init_keys(tmp_path / "unknown")
    shutil.copy(keys / "server.key", unknown / "server.key")  # the right server, an unknown key
    stranger = curve.init_keys(tmp_path / "stranger")
    job = Job(net, tmp_path, sample("WolfgangLanger_Pexels.mp4"), ["--keys", str(keys)])
    job.source_side("quality")
    job.extractor("quality", b, "quality", "--fps", "5")
    outsiders = {
        "no_keys": job.extractor("no_keys", b, "quality", "--group", "q2", "--fps", "5",
                                 security=[]),
        "unknown": job.extractor("unknown", b, "quality", "--group", "q3", "--fps", "5",
                                 security=["--keys", str(unknown)]),
        "stranger": job.extractor("stranger", b, "quality", "--group", "q4", "--fps", "5",
                                  security=["--keys", str(stranger)]),
    }
    ended = job.wait("daemon", "fusion", "clip", "quality", *outsiders)
    for name in ("daemon", "fusion", "clip", "quality"):
        code, err = ended[name]
        assert code == 0, f"{name}: {err[-2000:]}"
    for name in outsiders:  # told at once, in one line, and never welcomed
        code, err = ended[name]
        lines = err.strip().splitlines()
        assert code == 2 and lines[-1].startswith("momentbus: error: "), (name, err)
        assert "fusion at " in lines[-1], (name, err)
        assert "Traceback" not in err
        assert not [r for r in job.trace(name) if r.get("event") == "ready"], name
    unknown_fp = curve.load_client_keys(unknown).pair.fingerprint
    refused = [r for r in job.trace("fusion") if r.get("event") == "refused"]
    reasons = {r["reason"] for r in refused}
    assert any(r["reason"] == "unknown_key" and r["fingerprint"] == unknown_fp
               and r["address"] == b.address for r in refused), refused
    assert reasons & {"mechanism_mismatch", "handshake_aborted"}, refused  # no keys
    assert "wrong_server_key" in reasons, refused  # the stranger
    assert not any("secret" in json.dumps(r) for r in refused)
    assert not [r for r in job.trace("daemon") if r.get("event") == "refused"]
    members = {r.get("member") for r in job.trace("daemon") if r.get("event") == "join"}
    assert members == {"extractor:quality#1"}


def test_a_non_loopback_bind_needs_keys_or_insecure(net, sample, tmp_path) -> None:
    a, b = net[0], net[1]
    video = str(sample("WolfgangLanger_Pexels.mp4"))
    bare = net.run_in(a, momentbus_cmd("daemon", video, "--bind", f"tcp://{a.address}:{FRAMES}"),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = bare.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert bare.returncode == 2 and len(lines) == 1, err
    assert "without CURVE keys" in lines[0] and "--insecure" in lines[0]

    job = Job(net, tmp_path, sample("WolfgangLanger_Pexels.mp4"), ["--insecure"])
    job.source_side("quality")
    job.extractor("quality", b, "quality", "--fps", "5")
    ended = job.wait("daemon", "fusion", "clip", "quality")
    for name, (code, err) in ended.items():
        assert code == 0, f"{name}: {err[-2000:]}"
    for name in ("daemon", "fusion", "clip"):
        assert "warning: --insecure" in ended[name][1], name
    assert job.triggers() == []  # quality alone fires nothing: the job ran through, plain


def test_two_extractor_hosts_in_one_group_share_every_frame_exactly_once(net3, keys, sample,
                                                                         tmp_path) -> None:
    b, c = net3[1], net3[2]
    job = Job(net3, tmp_path, sample("WolfgangLanger_Pexels.mp4"), ["--keys", str(keys)])
    job.source_side("quality", save_obs=True)
    job.extractor("quality1", b, "quality", "--fps", "10", "--instance", "1")
    job.extractor("quality2", c, "quality", "--fps", "10", "--instance", "2")
    ended = job.wait("daemon", "fusion", "clip", "quality1", "quality2")
    for name, (code, err) in ended.items():
        assert code == 0, f"{name}: {err[-2000:]}"
    obs = [json.loads(x) for x in (job.out / "obs.jsonl").read_text().splitlines()]
    seqs = sorted(o["seq"] for o in obs)
    assert len(seqs) == len(set(seqs)), "no frame processed twice"
    by_host = {o["component"] for o in obs}
    assert by_host == {"extractor:quality#1", "extractor:quality#2"}, "both hosts worked"
    sampler = FpsSampler(10.0)
    reads = sorted((r["seq"], r["t_ns"]) for r in job.trace("daemon")
                   if r.get("record") == "timing" and r.get("stage") == "read")
    assert seqs == [s for s, t in reads if sampler(t)], "every sampled frame, once"
    hosts = {r["member"]: r.get("host") for r in job.trace("daemon") if r.get("event") == "join"}
    assert hosts == {"extractor:quality#1": b.address, "extractor:quality#2": c.address}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
