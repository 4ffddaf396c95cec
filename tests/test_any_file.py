"""Any file FFmpeg decodes gets its clips, end to end: MS-MPEG4 in AVI (Debian's opencv-doc
vtest.avi, which mp4 cannot hold)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from helpers import run_momentbus

pytestmark = pytest.mark.slow

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@pytest.mark.skipif(not VTEST.exists(), reason="vtest.avi comes with Debian's opencv-doc: "
                    "apt-get install -y opencv-doc")
def test_an_avi_mp4_cannot_hold_is_read_whole_and_every_trigger_gets_a_playable_clip(tmp_path):
    out = tmp_path / "out"
    proc = run_momentbus("run", str(VTEST), "--out", str(out), "--quiet", "--fps", "5",
                         timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "795 frames read" in proc.stdout, "every frame read"
    trace = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    daemon = next(r for r in trace if r["record"] == "summary" and r.get("role") == "daemon")
    assert daemon["frames"] == 795
    trigs = [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]
    assert trigs, "pedestrians' faces come and go: the presence rules fire"
    sidecars = [json.loads(p.read_text()) for p in sorted((out / "clips").glob("*.json"))]
    assert len(sidecars) == len(trigs), "a sidecar for every trigger"
    for meta in sidecars:
        assert meta["ok"] and meta["container"] == "matroska", meta
        clip = out / "clips" / meta["clip"]
        assert clip.suffix == ".mkv"
        with av.open(str(clip)) as c:
            frames = [f.pts * f.time_base for f in c.decode(video=0)]
        covered = (meta["actual"]["t_end_ns"] - meta["actual"]["t_start_ns"]) / 1e9
        assert abs(len(frames) - covered * 10) <= 1, "every frame of the clip decodes (10 fps)"
        assert meta["actual"]["t_start_ns"] <= meta["requested"]["t_start_ns"]
