"""The clip cutter's edges on the real sample (H.264, keyframes every 3.003 s, 472 frames)."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import pytest

from momentbus.clip.cutter import ClipError, clip_name, safe_name, write_clip
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


def test_a_window_beyond_the_video_is_an_error_and_leaves_no_file(video, tmp_path):
    with pytest.raises(ClipError):
        write_clip(video, trig(40 * S, 45 * S), tmp_path, 1)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "no partial clip, no sidecar"


def test_the_sidecar_holds_requested_and_actual_edges(video, keyframes_ns, tmp_path):
    import json

    res = write_clip(video, trig(7 * S, 9 * S), tmp_path, 3)
    meta = json.loads(res.sidecar.read_text())
    assert meta["requested"] == {"t_start_ns": 7 * S, "t_end_ns": 9 * S}
    assert meta["actual"] == {"t_start_ns": res.actual_start_ns, "t_end_ns": res.actual_end_ns}
    assert meta["trig"]["rule"] == "smile" and meta["clip"] == res.path.name
    assert res.path.name.startswith("003_smile_0007_000s")


@pytest.mark.parametrize("text,expected", [
    ("smile", "smile"), ("../../etc/passwd", "etc_passwd"), ("a b/c\\d", "a_b_c_d"),
    ("", "clip"), ("..", "clip"), ("x" * 100, "x" * 48)])
def test_names_never_come_from_unsanitised_strings(text, expected):
    assert safe_name(text) == expected
    name = clip_name(1, trig(1 * S, 2 * S, rule="smile"))
    assert "/" not in name and ".." not in name
