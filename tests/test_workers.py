"""Planning processes per kind (workers.py, `run --workers`), and the fork server that starts the
roles of a run (forkserver.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from helpers import run_momentbus
from momentbus.extractors.base import ExtractorError, UnknownExtractorError
from momentbus.forkserver import ForkServer
from momentbus.run import plan_extractors
from momentbus.workers import COST_MS, plan_workers

# -- the plan ----------------------------------------------------------------------------------


def test_kinds_named_once_are_planned_and_counts_are_kept():
    assert plan_extractors(["face", "quality"]) == {"face": None, "quality": None}
    assert plan_extractors(["face:3", "quality"]) == {"face": 3, "quality": None}
    assert plan_extractors(["face", "face", "quality"]) == {"face": 2, "quality": None}
    assert plan_extractors(["face:2", "face"]) == {"face": 3}


@pytest.mark.parametrize("specs", [["face:0"], ["face:x"], ["fcae"], []])
def test_bad_extractor_specs_are_typed_errors(specs):
    with pytest.raises(UnknownExtractorError):
        plan_extractors(specs)


def test_the_slowest_kind_is_split_until_it_fits_its_share_of_the_cores():
    # face 36.4 ms, quality 0.7: one face process would leave a core idle on two
    plan = plan_workers({"face": None, "quality": None}, "auto", cores=2)
    assert plan.processes == {"face": 2, "quality": 1}
    assert plan.threads == {"face": 1, "quality": 1}
    # four kinds on two cores: each already below sum(cost) / cores, nothing to split
    four = plan_workers(dict.fromkeys(["face", "pose", "gesture", "quality"]), "auto", cores=2)
    assert four.processes == {"face": 1, "pose": 1, "gesture": 1, "quality": 1}
    # on eight cores the bound is sum / 8 = 10.2 ms: face, gesture and pose are split
    eight = plan_workers(dict.fromkeys(["face", "pose", "gesture", "quality"]), "auto", cores=8)
    share = sum(COST_MS[k] for k in eight.processes) / 8
    assert all(COST_MS[k] / n <= share or n == 8 for k, n in eight.processes.items()
               if k != "quality")
    assert eight.processes == {"face": 4, "pose": 2, "gesture": 3, "quality": 1}


def test_one_core_splits_nothing_and_threads_never_oversubscribe():
    plan = plan_workers({"face": None, "quality": None}, "auto", cores=1)
    assert plan.processes == {"face": 1, "quality": 1}
    assert plan.threads == {"face": 1, "quality": 1}
    wide = plan_workers({"face": 2}, "auto", cores=8)
    assert wide.processes == {"face": 2} and wide.threads == {"face": 4}


def test_speech_is_one_process_with_at_least_two_threads():
    plan = plan_workers({"speech": None, "face": None}, "auto", cores=2)
    assert plan.processes["speech"] == 1
    assert plan.threads["speech"] == 2
    assert plan_workers({"speech": None}, "3", cores=8).processes == {"speech": 1}


def test_a_number_of_workers_applies_to_every_per_frame_kind_not_given_a_count():
    plan = plan_workers({"face": None, "quality": None, "pose": 3}, "2", cores=2)
    assert plan.processes == {"face": 2, "quality": 2, "pose": 3}
    with pytest.raises(ValueError, match="--workers 'many'"):
        plan_workers({"face": None}, "many", cores=2)


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_workers_on_the_command_line_is_a_usage_error(value, tmp_path):
    r = run_momentbus("run", str(tmp_path / "x.mp4"), "--out", str(tmp_path / "o"),
                      "--workers", value, timeout=60)
    assert r.returncode == 2
    assert "--workers" in r.stderr and "Traceback" not in r.stderr


def test_an_option_a_backend_does_not_take_is_one_line(tmp_path):
    from momentbus.extractors.base import build, takes_option

    assert takes_option("face", None, "threads") and not takes_option("pose", None, "threads")
    with pytest.raises(ExtractorError, match="takes no option threads"):
        build("pose", threads=2)


# -- the fork server ---------------------------------------------------------------------------


@pytest.fixture
def fork_server():
    server = ForkServer().start()
    assert server.available, "Linux with pidfd_open: the zygote starts"
    yield server
    server.close()


def role_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "momentbus", *args]


def test_a_forked_role_is_our_child_with_its_log_env_and_exit_code(fork_server, tmp_path):
    log = tmp_path / "role.log"
    env = {**os.environ, "MOMENTBUS_TEST_MARK": "forked"}
    proc = fork_server.spawn(role_argv("rules", "check", "/no/such/rules.toml"), env, str(log))
    assert proc is not None
    assert psutil.Process(proc.pid).ppid() == os.getpid(), "re-parented to the run parent"
    assert proc.wait(60) == 2, log.read_text()
    assert "momentbus: error:" in log.read_text() and "/no/such/rules.toml" in log.read_text()
    ok = fork_server.spawn(role_argv("rules", "check"), env, str(log))
    assert ok is not None and ok.wait(60) == 0
    assert "ok  smile" in log.read_text()


def test_a_forked_role_is_signalled_and_waited_like_a_popen(fork_server, tmp_path):
    """A role that waits (fusion for its members) ends on SIGTERM with exit 0; wait(timeout)
    raises TimeoutExpired while it runs; its title in ps is the role's command line."""
    argv = role_argv("fusion", "--bind", f"ipc://{tmp_path}/obs", "--out", str(tmp_path),
                     "--expect", "face")
    proc = fork_server.spawn(argv, dict(os.environ), str(tmp_path / "fusion.log"))
    assert proc is not None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)
    assert proc.poll() is None
    title = " ".join(psutil.Process(proc.pid).cmdline())
    assert title.startswith("momentbus fusion --bind"), title
    proc.terminate()
    assert proc.wait(30) == 0, (tmp_path / "fusion.log").read_text()[-2000:]
    killed = fork_server.spawn(argv, dict(os.environ), None)
    assert killed is not None
    killed.kill()
    assert killed.wait(30) == -signal.SIGKILL


def test_a_dead_zygote_means_plain_processes(tmp_path):
    server = ForkServer().start()
    try:
        assert server._proc is not None
        server._proc.kill()
        assert server.spawn(role_argv("rules", "check"), dict(os.environ), None) is None
        assert not server.available
    finally:
        server.close()


def test_the_zygote_of_a_run_is_gone_when_the_run_ends(sample, tmp_path):
    out = tmp_path / "out"
    run = subprocess.Popen(
        [sys.executable, "-m", "momentbus", "run", str(sample("single_face.mp4")), "--out",
         str(out), "--quiet", "--extractors", "quality"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    _, stderr = run.communicate(timeout=240)
    assert run.returncode == 0, stderr[-2000:]
    zygote = f"momentbus.forkserver {run.pid} "
    assert not [p.pid for p in psutil.process_iter(["cmdline"])
                if zygote in " ".join(p.info["cmdline"] or [])]
    assert (out / "trace.jsonl").stat().st_size > 0
