"""Clips of files mp4 cannot hold as they are, on real media: Debian's ``vtest.avi`` (MS-MPEG4
in AVI, 768x576, 10 fps, keyframes every 25 s, no audio) and the sample's H.264 muxed with PCM
audio (into QuickTime and into Matroska). A playable clip is one whose every frame of the
window decodes."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from momentbus.clip.cutter import UnsupportedCodecError, write_clip
from momentbus.ipc.schema import Trig

S = 1_000_000_000
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
VTEST_FRAME_NS = 100_000_000  # 10 fps
SAMPLE_FRAME = Fraction(1001, 24000)


@pytest.fixture(scope="module")
def vtest() -> str:
    if not VTEST.exists():
        pytest.skip("vtest.avi is missing: apt-get install -y opencv-doc")
    return str(VTEST)


@pytest.fixture(scope="module")
def pcm_sources(sample, tmp_path_factory) -> dict[str, str]:
    """The sample's H.264 (copied) with its audio as pcm_s16le: ``{"mov": ..., "mkv": ...}``."""
    src = str(sample("WolfgangLanger_Pexels.mp4"))
    folder = tmp_path_factory.mktemp("pcm")
    out_paths = {}
    for suffix, fmt in (("mov", "mov"), ("mkv", "matroska")):
        dest = folder / f"pcm.{suffix}"
        with av.open(src) as vin, av.open(src) as ain, av.open(str(dest), "w", format=fmt) as out:
            vs = out.add_stream_from_template(vin.streams.video[0])
            a = ain.streams.audio[0]
            as_ = out.add_stream("pcm_s16le", rate=a.rate, layout=a.layout.name)
            as_.time_base = Fraction(1, a.rate)
            for packet in vin.demux(vin.streams.video[0]):
                if packet.dts is None:
                    continue
                packet.stream = vs
                out.mux(packet)
            for frame in ain.decode(audio=0):
                out.mux(as_.encode(frame))
            out.mux(as_.encode(None))
        out_paths[suffix] = str(dest)
    return out_paths


def trig(start_ns: int, end_ns: int, rule: str = "walk") -> Trig:
    return Trig(rule=rule, rule_kind="expression_spike", source_id="s",
                t_event_ns=max(start_ns, 0), t_start_ns=start_ns, t_end_ns=end_ns, score=1.0)


def decoded(path: Path) -> tuple[list[int], list[tuple[int, int]]]:
    """Every video frame's pts (ns, clip clock) and every audio frame's (start, end) ns."""
    with av.open(str(path)) as c:
        video = [round(f.pts * f.time_base * S) for f in c.decode(video=0)] \
            if c.streams.video else []
    with av.open(str(path)) as c:
        audio = [(round(f.pts * f.time_base * S),
                  round((f.pts * f.time_base + Fraction(f.samples, f.sample_rate)) * S))
                 for f in c.decode(audio=0)] if c.streams.audio else []
    return video, audio


def assert_one_frame_apart(frames: list[int], frame_ns: float, count: int) -> None:
    assert frames == pytest.approx([round(k * frame_ns) for k in range(count)], abs=1e6)


# ---------------------------------------------------------------- MS-MPEG4 in AVI

def test_msmpeg4_is_remuxed_into_matroska_with_every_frame(vtest, tmp_path):
    res = write_clip(vtest, trig(26 * S, 29 * S), tmp_path, 1)
    assert res.path.suffix == ".mkv" and res.container == "matroska"
    assert res.actual_start_ns == 25 * S, "copy mode starts at the keyframe before (25 s)"
    frames, audio = decoded(res.path)
    # 25.0 ... 29.0 s: every frame of the window and of the pre-roll to the keyframe
    assert_one_frame_apart(frames, VTEST_FRAME_NS, 41)
    assert res.actual_end_ns == 29 * S + VTEST_FRAME_NS and not audio
    with av.open(str(res.path)) as c:
        assert c.streams.video[0].codec_context.name == "msmpeg4"
    meta = json.loads(res.sidecar.read_text())
    assert (meta["ok"], meta["container"], meta["codecs"]) == (True, "matroska",
                                                               {"video": "msmpeg4"})


def test_mp4_demanded_for_msmpeg4_is_an_error_naming_the_codec(vtest, tmp_path):
    with pytest.raises(UnsupportedCodecError, match="msmpeg4") as err:
        write_clip(vtest, trig(26 * S, 29 * S), tmp_path, 1, clip_format="mp4")
    assert err.value.codec == "msmpeg4"
    assert [p.name for p in tmp_path.iterdir()] == ["001_walk_0026_000s.json"], \
        "no clip, no partial file: the failure sidecar alone"
    meta = json.loads(err.value.sidecar.read_text())
    assert meta["ok"] is False and "msmpeg4" in meta["error"]
    assert meta["error_type"] == "UnsupportedCodecError" and meta["clip_format"] == "mp4"


def test_a_window_past_the_end_of_vtest_stops_at_its_last_frame(vtest, tmp_path):
    res = write_clip(vtest, trig(78 * S, 2**62), tmp_path, 1)
    frames, _ = decoded(res.path)
    assert res.actual_start_ns == 75 * S and res.actual_end_ns == 79_500_000_000
    assert_one_frame_apart(frames, VTEST_FRAME_NS, 45)  # 75.0 ... 79.4 s


def _gray(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="gray").astype(np.float32)


def test_exact_mode_on_vtest_shows_the_requested_frames(vtest, tmp_path):
    start, end = 26_050_000_000, 28_950_000_000  # first frame at or after: 26.1; last: 28.9
    res = write_clip(vtest, trig(start, end), tmp_path, 1, mode="exact")
    assert res.path.suffix == ".mp4" and res.container == "mp4"
    frames, _ = decoded(res.path)
    assert abs(res.actual_start_ns - 26_100_000_000) <= VTEST_FRAME_NS
    assert abs(res.actual_start_ns + frames[-1] - 28_900_000_000) <= VTEST_FRAME_NS
    assert_one_frame_apart(frames, VTEST_FRAME_NS, 29)
    # the right pictures, not only the right timestamps: the clip's first frame is closest to
    # the source frame at actual_start, of it and its neighbours (people walk: frames differ)
    with av.open(str(res.path)) as c:
        first = _gray(next(c.decode(video=0)))
    diff = {}
    with av.open(vtest) as c:
        c.seek(250, stream=c.streams.video[0])  # the keyframe at 25 s (time_base 1/10)
        for f in c.decode(video=0):
            t = round(f.pts * f.time_base * S)
            if t > 26_200_000_000:
                break
            if t >= 26 * S:
                diff[t] = float(np.abs(_gray(f) - first).mean())
    assert len(diff) == 3 and min(diff, key=diff.__getitem__) == res.actual_start_ns, diff


def test_exact_mode_clamps_a_window_reaching_before_the_source(vtest, tmp_path):
    res = write_clip(vtest, trig(-(2**62), 2 * S), tmp_path, 1, mode="exact")
    frames, _ = decoded(res.path)
    assert res.actual_start_ns == 0
    assert_one_frame_apart(frames, VTEST_FRAME_NS, 21)  # 0.0 ... 2.0 s


# ---------------------------------------------------------------- PCM audio

@pytest.mark.parametrize("kind", ["mov", "mkv"])
def test_pcm_audio_goes_to_matroska_with_the_clip(pcm_sources, tmp_path, kind):
    res = write_clip(pcm_sources[kind], trig(7 * S, 9 * S), tmp_path, 1)
    assert res.path.suffix == ".mkv" and res.container == "matroska"
    # the keyframe at or before 7 s is at 6.006 s (Matroska: its dts, unset after a seek, was
    # filled in; skipping those packets used to start the clip at the next keyframe, 9.009 s)
    assert res.actual_start_ns == pytest.approx(144 * SAMPLE_FRAME * S, abs=1e6)
    frames, audio = decoded(res.path)
    one = float(SAMPLE_FRAME * S)
    count = math.ceil((9 * S - res.actual_start_ns) / one)
    shown = sorted(f for f in frames if f < 9 * S - res.actual_start_ns)
    assert shown == pytest.approx([k * one for k in range(count)], abs=1.5e6), \
        "every frame from the keyframe to the requested end decodes"
    with av.open(str(res.path)) as c:
        assert c.streams.audio[0].codec_context.name == "pcm_s16le", "audio cut along, as is"
    assert audio[0][0] <= 0.03 * S and audio[-1][1] >= (9 * S - res.actual_start_ns) - 0.03 * S
    meta = json.loads(res.sidecar.read_text())
    assert meta["codecs"] == {"video": "h264", "audio": "pcm_s16le"}


def test_exact_mode_encodes_pcm_audio_to_aac_in_mp4(pcm_sources, tmp_path):
    res = write_clip(pcm_sources["mkv"], trig(7 * S, 9 * S), tmp_path, 1, mode="exact")
    assert res.path.suffix == ".mp4"
    frames, audio = decoded(res.path)
    one = float(SAMPLE_FRAME * S)
    assert 7 * S <= res.actual_start_ns <= 7 * S + one + 1e6  # Matroska rounds to 1 ms
    assert abs(len(frames) - 48) <= 1 and audio
    with av.open(str(res.path)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"


def test_mkv_demanded_for_the_sample_holds_h264_and_aac(sample, tmp_path):
    res = write_clip(str(sample("WolfgangLanger_Pexels.mp4")), trig(7 * S, 9 * S), tmp_path, 1,
                     clip_format="mkv")
    assert res.path.suffix == ".mkv"
    with av.open(str(res.path)) as c:
        assert [s.codec_context.name for s in c.streams] == ["h264", "aac"]
        assert sum(1 for _ in c.decode(video=0)) == res.video_packets
