"""The clip cutter's edges on the real sample (H.264 with B-frames + AAC, keyframes every
3.003 s, 472 frames): copy and exact modes, windows clamped to the source, failure sidecars,
idempotent re-cuts. Other containers and codecs: tests/test_clip_formats.py."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from momentbus.clip.cutter import (ClipError, ClipOptionError, ClipSourceError, EmptyWindowError,
                                   clip_name, cut_copy, existing_clip, safe_name, write_clip,
                                   write_failure_sidecar)
from momentbus.clip.window import clamp_window
from momentbus.ipc.schema import Trig

S = 1_000_000_000
FRAME = Fraction(1001, 24000)  # the sample's frame duration


@pytest.fixture(scope="module")
def video(sample):
    return str(sample("WolfgangLanger_Pexels.mp4"))


@pytest.fixture(scope="module")
def keyframes_ns(video) -> list[int]:
    with av.open(video) as c:
        v = c.streams.video[0]
        return [int(p.pts * p.time_base * S) for p in c.demux(v)
                if p.is_keyframe and p.pts is not None]


def trig(start_ns: int, end_ns: int, rule: str = "smile") -> Trig:
    return Trig(rule=rule, rule_kind="expression_spike", source_id="s",
                t_event_ns=start_ns, t_start_ns=start_ns, t_end_ns=end_ns, score=1.0)


def frames_of(path) -> list[int]:
    """Presentation times (ns, clip clock) of every decoded video frame."""
    with av.open(str(path)) as c:
        return [int(f.pts * f.time_base * S) for f in c.decode(video=0)]


def assert_every_frame_until(frames: list[int], end_ns: int) -> None:
    """The clip shows every frame of the source from its start to ``end_ns`` (clip clock)."""
    expected = [round(k * FRAME * S) for k in range(math.ceil(end_ns / (FRAME * S)))]
    shown = sorted(f for f in frames if f < end_ns)
    assert shown == pytest.approx(expected, abs=1e6)


def test_a_window_at_a_keyframe_starts_exactly_there(video, keyframes_ns, tmp_path):
    k = keyframes_ns[2]  # 6.006 s
    res = write_clip(video, trig(k, k + 2 * S), tmp_path, 1)
    assert res.actual_start_ns == k
    frames = frames_of(res.path)
    assert frames[0] == 0, "the clip's clock starts at its first frame"
    assert_every_frame_until(frames, res.requested_end_ns - k)
    assert res.actual_end_ns >= res.requested_end_ns


def test_a_window_between_keyframes_starts_at_the_keyframe_before(video, keyframes_ns, tmp_path):
    start = keyframes_ns[2] + 1 * S  # 7.006 s: 1 s after a keyframe
    res = write_clip(video, trig(start, start + 3 * S), tmp_path, 1)
    assert res.actual_start_ns == keyframes_ns[2] <= res.requested_start_ns
    assert res.actual_end_ns >= res.requested_end_ns, "the post-roll is all there"
    assert_every_frame_until(frames_of(res.path), res.requested_end_ns - res.actual_start_ns)
    with av.open(str(res.path)) as c:
        first = next(iter(c.demux(video=0)))
        assert first.is_keyframe, "a copy-mode clip starts on a keyframe"
        assert c.streams.audio, "audio is cut along"


def test_a_window_past_the_end_stops_at_the_last_frame(video, tmp_path):
    res = write_clip(video, trig(18 * S, 60 * S), tmp_path, 1, duration_ns=19_686_000_000)
    frames = frames_of(res.path)
    last_frame_ns = int(471 * FRAME * S)  # frame 471 is the file's last
    assert res.actual_start_ns + frames[-1] == pytest.approx(last_frame_ns, abs=1e6)
    assert res.actual_end_ns <= 19_700_000_000


def test_a_window_from_zero_starts_at_the_first_frame(video, tmp_path):
    res = write_clip(video, trig(0, 1 * S), tmp_path, 1)
    assert res.actual_start_ns == 0 and frames_of(res.path)[0] == 0


def test_a_window_beyond_the_video_is_an_error_with_a_failure_sidecar_and_no_clip(video,
                                                                                  tmp_path):
    with pytest.raises(EmptyWindowError) as err:
        write_clip(video, trig(40 * S, 45 * S), tmp_path, 1)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [err.value.sidecar] == [tmp_path / "001_smile_0040_000s.json"], \
        "the sidecar alone: no clip, no partial file"
    meta = json.loads(err.value.sidecar.read_text())
    assert meta["ok"] is False and meta["clip"] is None and meta["actual"] is None
    assert meta["requested"] == {"t_start_ns": 40 * S, "t_end_ns": 45 * S}
    assert meta["error_type"] == "EmptyWindowError" and "holds nothing" in meta["error"]
    assert meta["trig"]["rule"] == "smile"


def test_the_sidecar_holds_requested_and_actual_edges(video, keyframes_ns, tmp_path):
    res = write_clip(video, trig(7 * S, 9 * S), tmp_path, 3)
    meta = json.loads(res.sidecar.read_text())
    assert meta["requested"] == {"t_start_ns": 7 * S, "t_end_ns": 9 * S}
    assert meta["actual"] == {"t_start_ns": res.actual_start_ns, "t_end_ns": res.actual_end_ns}
    assert meta["trig"]["rule"] == "smile" and meta["clip"] == res.path.name
    assert res.path.name.startswith("003_smile_0007_000s")
    assert meta["ok"] is True and meta["mode"] == "copy" and meta["container"] == "mp4"
    assert meta["codecs"] == {"video": "h264", "audio": "aac"}
    assert meta["bytes"] == res.path.stat().st_size
    for key in ("clip", "source", "mode", "audio_only", "requested", "actual", "video_packets",
                "audio_packets", "trailing_frames", "trig"):
        assert key in meta, "the fields readers already use stay"


@pytest.mark.parametrize("text,expected", [
    ("smile", "smile"), ("../../etc/passwd", "etc_passwd"), ("a b/c\\d", "a_b_c_d"),
    ("", "clip"), ("..", "clip"), ("x" * 100, "x" * 48)])
def test_names_never_come_from_unsanitised_strings(text, expected):
    assert safe_name(text) == expected
    name = clip_name(1, trig(1 * S, 2 * S, rule="smile"))
    assert "/" not in name and ".." not in name


# ---------------------------------------------------------------- windows clamped to the source

@pytest.mark.parametrize("start,end", [(-(2**62), 2**62), (-(2**63), 2**63), (-60 * S, 60 * S)])
def test_a_window_wider_than_the_source_is_exactly_the_source(video, tmp_path, start, end):
    t = Trig(rule="all", rule_kind="k", source_id="s", t_event_ns=0, t_start_ns=start,
             t_end_ns=end, score=1.0)
    res = write_clip(video, t, tmp_path, 1)
    frames = frames_of(res.path)
    assert len(frames) == 472 and res.actual_start_ns == 0 and frames[0] == 0
    assert res.actual_end_ns == pytest.approx(472 * FRAME * S, abs=1e6)
    with av.open(str(res.path)) as c:
        assert c.streams.audio[0].frames == 923, "every audio packet of the source"
    meta = json.loads(res.sidecar.read_text())
    assert meta["requested"] == {"t_start_ns": start, "t_end_ns": end}
    assert meta["clamped"] == {"t_start_ns": 0, "t_end_ns": 19_690_000_000}


def test_a_window_starting_before_the_source_starts_at_its_first_frame(video, tmp_path):
    res = write_clip(video, trig(-3 * S, 1 * S), tmp_path, 1)
    assert res.actual_start_ns == 0 and res.requested_start_ns == -3 * S
    assert_every_frame_until(frames_of(res.path), 1 * S)


@pytest.mark.parametrize("start,end", [(-10 * S, -5 * S), (20 * S, 2**63), (2**62, 2**63)])
def test_a_window_outside_the_source_is_an_empty_window_error(video, tmp_path, start, end):
    t = Trig(rule="out", rule_kind="k", source_id="s", t_event_ns=0, t_start_ns=start,
             t_end_ns=end, score=1.0)
    with pytest.raises(EmptyWindowError):
        write_clip(video, t, tmp_path, 1)


@given(st.integers(-(2**70), 2**70), st.integers(-(2**70), 2**70),
       st.integers(-(2**40), 2**40), st.integers(0, 2**40))
def test_a_clamped_window_lies_inside_the_source_or_is_an_error(a, b, src_start, length):
    src_end = src_start + length
    try:
        lo, hi = clamp_window(a, b, src_start, src_end)
    except EmptyWindowError:
        # nothing of the closed window lies in the source's [start, end)
        assert not (a <= b and b >= src_start and a < src_end and src_start < src_end)
        return
    assert src_start <= lo <= hi <= src_end and lo < src_end
    assert (lo, hi) == (max(a, src_start), min(b, src_end))


# ---------------------------------------------------------------- exact mode

def test_exact_mode_starts_and_ends_on_the_requested_frames(video, tmp_path):
    start, end = 7_020_000_000, 9_030_000_000  # between frames: 7.0070 < 7.02 < 7.0487 s
    first = math.ceil(Fraction(start, S) / FRAME)  # the first frame at or after start: 169
    last = math.floor(Fraction(end, S) / FRAME)  # the last at or before end: 216
    res = write_clip(video, trig(start, end), tmp_path, 1, mode="exact")
    frames = frames_of(res.path)
    one = float(FRAME * S)
    assert res.actual_start_ns + frames[0] == pytest.approx(first * one, abs=one)
    assert res.actual_start_ns + frames[-1] == pytest.approx(last * one, abs=one)
    assert start <= res.actual_start_ns < start + one
    # every frame of the window, each once, one frame apart
    assert len(frames) == pytest.approx(last - first + 1, abs=1)
    assert frames == pytest.approx([round(k * one) for k in range(len(frames))], abs=1e6)
    with av.open(str(res.path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        audio = [(f.time, f.samples / f.sample_rate) for f in c.decode(audio=0)]
    assert audio[0][0] == pytest.approx(0, abs=0.001), "audio starts with the first frame"
    assert audio[-1][0] + audio[-1][1] == pytest.approx((end - res.actual_start_ns) / S,
                                                        abs=0.05)
    meta = json.loads(res.sidecar.read_text())
    assert meta["mode"] == "exact" and meta["codecs"] == {"video": "h264", "audio": "aac"}
    assert meta["actual"] == {"t_start_ns": res.actual_start_ns, "t_end_ns": res.actual_end_ns}
    assert meta["trailing_frames"] == 0


# ---------------------------------------------------------------- failures, atomic writes

def test_a_cut_failing_after_it_began_writing_leaves_no_part_file(video, tmp_path):
    # the keyframe at 18.018 s is found and its GOP muxed; no frame reaches 19.69 s (the last
    # ends at 19.686 s): the cut fails with the file half written
    dest = tmp_path / "clip.mp4"
    with pytest.raises(EmptyWindowError):
        cut_copy(video, 19_690_000_000, 19_700_000_000, dest)
    assert list(tmp_path.iterdir()) == []


def test_a_source_that_is_not_media_is_a_clip_error_with_its_sidecar(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(ClipSourceError) as err:
        write_clip(str(text), trig(1 * S, 2 * S), tmp_path / "clips", 4)
    meta = json.loads(err.value.sidecar.read_text())
    assert err.value.sidecar.name == f"{clip_name(4, trig(1 * S, 2 * S))}.json"
    assert meta["ok"] is False and "cannot open" in meta["error"]
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == [err.value.sidecar.name]


def test_an_unknown_mode_or_format_is_an_option_error(video, tmp_path):
    with pytest.raises(ClipOptionError):
        write_clip(video, trig(1 * S, 2 * S), tmp_path, 1, mode="fast")
    with pytest.raises(ClipOptionError):
        write_clip(video, trig(1 * S, 2 * S), tmp_path, 1, clip_format="avi")


def test_a_failure_sidecar_has_the_clip_name_and_replaces_an_earlier_clip(video, tmp_path):
    res = write_clip(video, trig(7 * S, 8 * S), tmp_path, 2)
    path = write_failure_sidecar(video, trig(7 * S, 8 * S), tmp_path, 2, ClipError("disk full"))
    assert path == res.sidecar and not res.path.exists(), "one name, one truth"
    meta = json.loads(path.read_text())
    assert (meta["ok"], meta["error"], meta["error_type"]) == (False, "disk full", "ClipError")


# ---------------------------------------------------------------- idempotent re-cuts

def test_the_same_trig_cut_twice_is_one_clip_reused(video, tmp_path):
    t = trig(7 * S, 9 * S)
    first = write_clip(video, t, tmp_path, 5)
    stamp = first.path.stat().st_mtime_ns, first.sidecar.stat().st_mtime_ns
    again = write_clip(video, t, tmp_path, 5)
    assert again.reused and not first.reused
    assert (again.path, again.sidecar) == (first.path, first.sidecar)
    assert (again.actual_start_ns, again.actual_end_ns) == (first.actual_start_ns,
                                                            first.actual_end_ns)
    assert (first.path.stat().st_mtime_ns, first.sidecar.stat().st_mtime_ns) == stamp, \
        "nothing was rewritten"
    assert existing_clip(video, t, tmp_path, 5) == again
    forced = write_clip(video, t, tmp_path, 5, reuse=False)
    assert not forced.reused and forced.path == first.path
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.sidecar.name, first.path.name]


def test_a_recut_with_other_options_replaces_the_clip(video, tmp_path):
    t = trig(7 * S, 9 * S)
    mp4 = write_clip(video, t, tmp_path, 1)
    assert existing_clip(video, t, tmp_path, 1, clip_format="mkv") is None
    mkv = write_clip(video, t, tmp_path, 1, clip_format="mkv")
    assert not mkv.reused and mkv.path.suffix == ".mkv" and mkv.sidecar == mp4.sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == [mkv.sidecar.name, mkv.path.name], \
        "the mp4 of the same name is gone: every clip has its sidecar"


def test_a_damaged_clip_is_cut_again(video, tmp_path):
    t = trig(7 * S, 9 * S)
    res = write_clip(video, t, tmp_path, 1)
    res.path.write_bytes(res.path.read_bytes()[:1000])  # truncated behind our back
    assert existing_clip(video, t, tmp_path, 1) is None
    assert not write_clip(video, t, tmp_path, 1).reused
