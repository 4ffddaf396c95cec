"""How `momentbus run` ends when things go wrong: damaged input, a full disk.

* A source with damage -> the summary names what was lost and the run exits DATA_LOSS (65),
  with the triggers and clips of what was read.
* trace.jsonl on a full disk -> the run goes on, ends with one line naming what was saved, and
  exits OUTPUT_INCOMPLETE (74). The full disk is /dev/full: every write fails with ENOSPC.
"""

from __future__ import annotations

import errno
import json
import random
import re
from pathlib import Path

import pytest

from momentbus.lifecycle import ExitCode

from helpers import run_momentbus

pytestmark = pytest.mark.slow

SMILE_S = 11.0  # inside the smile trigger's window (tests/test_run_e2e.py)
JUNK = bytes(random.Random(1).getrandbits(8) for _ in range(1000))


def spliced(src: Path, dest: Path, *, insert: bool) -> Path:
    """1,000 seeded random bytes at the middle of the file (inside the sample's mdat, which
    runs from 11 KB to its end), inserted or overwriting."""
    data = src.read_bytes()
    at = len(data) // 2
    dest.write_bytes(data[:at] + JUNK + data[at + (0 if insert else len(JUNK)):])
    return dest


def triggers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]


def test_inserted_bytes_are_reported_as_data_loss(sample, tmp_path):
    """The issue's file: every packet after the bytes is shifted and lost. The run says how
    many frames it read of how many, from when, and exits 65 instead of 0."""
    video = spliced(sample("WolfgangLanger_Pexels.mp4"), tmp_path / "inserted.mp4", insert=True)
    out = tmp_path / "out"
    proc = run_momentbus("run", str(video), "--out", str(out), "--quiet",
                         env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == ExitCode.DATA_LOSS == 65, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    m = re.search(r"data loss: (\d+) of 472 frames read; damaged ([\d.]+)-19\.68 s "
                  r"\((\d+) decode errors\)", proc.stdout)
    assert m, proc.stdout
    read, t0, errors = int(m[1]), float(m[2]), int(m[3])
    assert 200 < read < 250 and 9.0 < t0 < 9.9 and errors > 100  # bytes at 9.4 s of 19.7
    summary = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()
               if '"summary"' in line and '"daemon"' in line][0]
    assert summary["damage"]["lossy"] and summary["damage"]["frames_read"] == read


def test_overwritten_bytes_lose_a_span_and_the_rest_is_analysed(sample, tmp_path):
    """Bytes overwritten at 9.4 s: one short span is lost, every frame after it is read, the
    smile (from 9.5 s) still fires and its clip is written; the exit code still says 65."""
    video = spliced(sample("WolfgangLanger_Pexels.mp4"), tmp_path / "overwritten.mp4",
                    insert=False)
    out = tmp_path / "out"
    proc = run_momentbus("run", str(video), "--out", str(out), "--quiet",
                         env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == ExitCode.DATA_LOSS, proc.stderr[-3000:]
    m = re.search(r"data loss: (\d+) of 472 frames read; damaged ([\d.]+)-([\d.]+) s "
                  r"\((\d+) decode errors?\)", proc.stdout)
    assert m, proc.stdout
    t0, t1 = float(m[2]), float(m[3])
    assert int(m[1]) >= 465 and 9.0 < t0 < t1 < 10.0
    trigs = triggers(out)
    assert any(t["t_start_ns"] <= SMILE_S * 1e9 <= t["t_end_ns"] for t in trigs), trigs
    assert len(list((out / "clips").glob("*.mp4"))) == len(trigs)
    # the trace summary tells the same
    tables = run_momentbus("trace", "summary", str(out / "trace.jsonl"), timeout=60)
    assert tables.returncode == 0 and f"damaged {m[2]}-{m[3]} s" in tables.stdout
    js = json.loads(run_momentbus("trace", "summary", str(out / "trace.jsonl"), "--json",
                                  timeout=60).stdout)
    assert js["damage"]["lossy"] and js["damage"]["decode_errors"] == int(m[4])


def test_a_full_disk_for_the_trace_ends_with_what_was_saved(sample, tmp_path):
    """OUT/trace.jsonl is a link to /dev/full (the collector opens it with "w", which follows
    the link): every write fails with ENOSPC. No traceback; the pipeline runs to the end;
    the last line names what was saved; exit 74."""
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full on this system")
    with pytest.raises(OSError) as e, open(full, "w", buffering=1) as f:
        f.write("x\n")
    assert e.value.errno == errno.ENOSPC
    out = tmp_path / "out"
    out.mkdir()
    (out / "trace.jsonl").symlink_to(full)
    proc = run_momentbus("run", str(sample("WolfgangLanger_Pexels.mp4")), "--out", str(out),
                         "--quiet", env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == ExitCode.OUTPUT_INCOMPLETE == 74, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    m = re.fullmatch(r"momentbus: disk full: (\S+) stopped at 0 of (\d+) records \(No space "
                     r"left on device\); saved: (\S+) \((\d+) triggers?\) and (\d+) clips?"
                     r"(?: in (\S+))?", last)
    assert m, last
    assert m[1] == str(out / "trace.jsonl") and int(m[2]) > 500
    assert m[3] == str(out / "triggers.jsonl") and int(m[4]) == len(triggers(out)) >= 1
    assert int(m[5]) == len(list((out / "clips").glob("*.mp4"))) >= 1
