"""Bad input: a clear one-line error and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from helpers import run_momentbus


def _assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("momentbus: error:")
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_file(tmp_path):
    proc = run_momentbus("run", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "no such file")


def test_text_file_renamed_mp4(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are my notes, not a video\n" * 20)
    proc = run_momentbus("run", str(fake), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "not a readable media file")


def test_truncated_mp4(tmp_path, sample):
    data = sample("WolfgangLanger_Pexels.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    proc = run_momentbus("run", str(cut), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "truncated")


def test_no_video_stream(tmp_path):
    import av
    import numpy as np

    wav = tmp_path / "tone.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    proc = run_momentbus("run", str(wav), "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "no video stream")


def test_bad_rules_file_names_the_line(tmp_path, sample):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "x"\nkind = "no_such_kind"\n')
    proc = run_momentbus("rules", "check", str(rules))
    _assert_one_line_error(proc, "no_such_kind", ":2:")


@pytest.mark.parametrize("args", [["extractor", "nosuchkind", "--daemon", "ipc:///tmp/x",
                                   "--fusion", "ipc:///tmp/y"]])
def test_unknown_extractor_kind(args):
    proc = run_momentbus(*args, timeout=60)
    _assert_one_line_error(proc, "unknown extractor kind")


def test_unknown_extractor_kind_in_run(tmp_path, sample):
    proc = run_momentbus("run", str(sample("single_face.mp4")), "--out", str(tmp_path / "o"),
                         "--extractors", "face,telepathy", timeout=60)
    _assert_one_line_error(proc, "telepathy", "known:")


# --- the output folder: checked before anything starts (momentbus/outputs.py) ---------------

def _assert_nothing_started(out):
    """`run` makes OUT/logs just before it starts the first process: none was started."""
    assert not (out / "logs").exists()


def test_out_naming_an_existing_file(tmp_path, sample):
    out = tmp_path / "results.txt"
    out.write_text("not a folder\n")
    proc = run_momentbus("run", str(sample()), "--out", str(out), timeout=60)
    _assert_one_line_error(proc, "--out", "is a file, not a folder")
    assert out.read_text() == "not a folder\n"


def test_out_below_a_file(tmp_path, sample):
    """A file in the way of the folder to create (stops root too: no permission bit involved)."""
    (tmp_path / "results.txt").write_text("x")
    out = tmp_path / "results.txt" / "run1"
    proc = run_momentbus("run", str(sample()), "--out", str(out), timeout=60)
    _assert_one_line_error(proc, "cannot be created", "results.txt is a file")


@pytest.mark.parametrize("place", ["/proc/momentbus-out", "/sys/momentbus-out"])
def test_out_where_nothing_can_be_created(place, sample):
    """A folder that cannot be created. Tests run as root here, where `chmod 0555` stops no
    write; /proc and /sys refuse a new folder to root too (ENOENT, EPERM)."""
    proc = run_momentbus("run", str(sample()), "--out", place, timeout=60)
    _assert_one_line_error(proc, "--out", "cannot be created in")


def test_out_with_a_run_entry_of_the_wrong_kind(tmp_path, sample):
    out = tmp_path / "out"
    (out / "trace.jsonl").mkdir(parents=True)
    proc = run_momentbus("run", str(sample()), "--out", str(out), timeout=60)
    _assert_one_line_error(proc, "trace.jsonl is a folder, not a file")
    _assert_nothing_started(out)


def _in_own_mount(tmp_path, mount_options: str, *run_args: str):
    """`momentbus run` inside a private mount namespace (``unshare --mount``) with a tmpfs
    mounted on tmp_path/mnt: the mount exists only for that process and vanishes with it, so
    nothing is left mounted on the machine. Skips where mounting is not allowed."""
    import shlex
    import shutil
    import subprocess

    from helpers import momentbus_cmd

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    check = subprocess.run(["unshare", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o {mount_options} tmpfs {mnt}"],
                           capture_output=True, text=True, timeout=30) \
        if shutil.which("unshare") else None
    if check is None or check.returncode != 0:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs root or "
                    f"CAP_SYS_ADMIN and util-linux unshare): {check.stderr if check else ''}")
    cmd = shlex.join(momentbus_cmd(*run_args))
    return subprocess.run(["unshare", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o {mount_options} tmpfs {mnt} && exec {cmd}"],
                          capture_output=True, text=True, timeout=60), mnt


def test_out_on_a_read_only_file_system(tmp_path, sample):
    """A read-only mount refuses root too (EROFS), unlike permission bits."""
    mnt = tmp_path / "mnt"
    proc, _ = _in_own_mount(tmp_path, "ro,size=1m", "run", str(sample()),
                            "--out", str(mnt / "out"))
    _assert_one_line_error(proc, "--out", "Read-only file system")


def test_out_on_a_full_file_system(tmp_path, sample):
    """A 1 MiB tmpfs: below MIN_FREE_BYTES (16 MiB; a run of the sample writes 0.86 MB, see
    outputs.py), so the run is refused before it starts rather than failing halfway."""
    mnt = tmp_path / "mnt"
    proc, _ = _in_own_mount(tmp_path, "size=1m", "run", str(sample()), "--out", str(mnt / "out"))
    _assert_one_line_error(proc, "--out", "MiB free", "at least 16 MiB")
