"""Damage accounting on real damaged files: 1,000 random bytes in the sample's media data.

The sample (WolfgangLanger_Pexels.mp4, 472 frames at 24000/1001 fps, 19.685 s) is a faststart
mp4: ``ftyp``, ``moov`` (the index: every packet's offset, size and time), then ``mdat``.

* Bytes **overwritten** in ``mdat`` damage the packets they land in: the index is intact, so the
  reader knows which frame times are missing and reads every frame after them.
* Bytes **inserted** in ``mdat`` shift every later packet by 1,000 bytes against the index: from
  there on every packet is garbage (the issue's case: 226 of 472 frames, 243 decode errors).
* Bytes in ``moov`` (the index) make the file unreadable up front (a one-line error, exit 2), or,
  when they land in a timing table, read with nonsense times: no decode error at all, which only
  the frame count against the container's says (see ``test_damage_in_the_index...``).
"""

from __future__ import annotations

import random
from pathlib import Path

import av
import pytest

from momentbus.damage import Damage, merge_spans
from momentbus.ipc.schema import Frame
from momentbus.media import FileSource, NotMediaError, probe

SAMPLE = "WolfgangLanger_Pexels.mp4"
FRAMES = 472
END_NS = 19_685_000_000  # 472440 / 24000 s: the video stream's announced end
FRAME_NS = 1001 * 10**9 // 24000  # 41.7 ms
JUNK = bytes(random.Random(20240612).getrandbits(8) for _ in range(1000))


def splice_point(path: Path) -> tuple[int, int]:
    """(byte offset, pts in ns) of the start of the video packet nearest the file's middle
    that has room for the 1,000 bytes, from PyAV's packet positions. At a packet's start the
    bytes replace its NAL length prefix, which the decoder always notices; inside the data of a
    P-frame they can decode, silently, to a wrong picture (no decoder can report that)."""
    middle = path.stat().st_size // 2
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        packets = [(p.pos, p.size, p.pts) for p in c.demux(video)
                   if p.pos is not None and p.size >= 3 * len(JUNK)]
        tb = video.time_base
    pos, size, pts = min(packets, key=lambda p: abs(p[0] + p[1] // 2 - middle))
    return pos, round(pts * tb * 10**9)


def spliced(src: Path, dest: Path, at: int, *, insert: bool) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[:at] + JUNK + data[at + (0 if insert else len(JUNK)):])
    return dest


def read(path: Path, audio: bool = False) -> tuple[list[Frame], Damage]:
    with FileSource(path) as src:
        frames = [f for f in src.items(audio=audio) if isinstance(f, Frame)]
        return frames, src.damage


def test_a_clean_file_reports_no_damage(sample):
    frames, damage = read(sample(SAMPLE), audio=True)
    assert len(frames) == FRAMES
    assert damage == Damage(frames_read=FRAMES, frames_expected=FRAMES)
    assert not damage.lossy


def test_overwritten_bytes_give_one_short_span_and_reading_goes_on(sample, tmp_path):
    src = sample(SAMPLE)
    at, t_hit = splice_point(src)
    frames, damage = read(spliced(src, tmp_path / "overwritten.mp4", at, insert=False))
    assert damage.lossy and damage.decode_errors >= 1
    assert damage.frames_expected == FRAMES and damage.frames_read == len(frames) < FRAMES
    assert len(damage.spans) == 1
    t0, t1 = damage.spans[0]
    # the span is bounded by good frames around the frame the bytes landed in
    assert t0 < t_hit < t1 and t1 - t0 <= 8 * FRAME_NS
    times = {f.t_ns for f in frames}
    assert t0 in times and t1 in times and t_hit not in times
    # frames after the damage are still read, to the end of the file
    after = [f for f in frames if f.t_ns > t1]
    assert len(after) > 200 and after[-1].t_ns > END_NS - 2 * FRAME_NS
    assert [f.seq for f in frames] == list(range(len(frames))), "seq stays gap-free"


def test_inserted_bytes_lose_everything_after_them_and_say_so(sample, tmp_path):
    src = sample(SAMPLE)
    at, t_hit = splice_point(src)
    frames, damage = read(spliced(src, tmp_path / "inserted.mp4", at, insert=True))
    assert damage.lossy and damage.decode_errors > 100
    assert damage.frames_read == len(frames) < FRAMES // 2 + 10
    assert damage.spans == ((frames[-1].t_ns, END_NS),), "from the last good frame to the end"
    # the B-frames shown before the hit P-frame are decoded after it (and from it): they are
    # lost too, so the last good frame is up to one mini-GOP (here 6 frames) before the hit
    assert t_hit - 8 * FRAME_NS <= frames[-1].t_ns < t_hit
    text = damage.describe()
    assert text.startswith(f"{len(frames)} of {FRAMES} frames read; damaged ")
    assert f"({damage.decode_errors} decode errors)" in text


def test_a_file_cut_in_its_last_second_reports_its_unread_tail(sample, tmp_path):
    """The up-front check (probe) passes a file cut less than a second short; the read says."""
    data = sample(SAMPLE).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) - 20_000])  # the last ~12 frames' bytes
    probe(cut)
    frames, damage = read(cut)
    assert damage.lossy and damage.unread_tail_ns > FRAME_NS
    assert damage.frames_read == len(frames) < FRAMES
    assert damage.spans[-1][1] == END_NS
    assert "never arrived" in damage.describe()


def test_stopping_early_is_not_damage(sample):
    with FileSource(sample(SAMPLE)) as src:
        for item in src.items():
            if item.seq == 10:
                break
        damage = src.damage
    assert not damage.complete and not damage.lossy and damage.frames_read == 11


def test_damage_in_the_index_is_refused_up_front_or_counted(sample, tmp_path):
    """Bytes inserted in the moov atom: the file is refused before anything starts (exit 2 in
    the CLI). Bytes overwriting its timing table: no decode error at all, but the frames read
    fall short of what the container announced, and that is reported."""
    src = sample(SAMPLE)
    with pytest.raises(NotMediaError, match="no decodable frame"):
        probe(spliced(src, tmp_path / "moov-insert.mp4", 3032, insert=True))
    frames, damage = read(spliced(src, tmp_path / "moov-overwrite.mp4", 3032, insert=False))
    assert damage.decode_errors == 0
    assert damage.lossy and len(frames) < FRAMES


@pytest.mark.skipif(not Path("/usr/bin/ffmpeg").exists(), reason="needs the ffmpeg CLI to make "
                    "an mp4 with an edit list (PyAV's muxer writes none)")
def test_frames_an_edit_list_hides_are_not_missing(sample, tmp_path):
    """``ffmpeg -ss 1.3 -c copy`` keeps the packets from the keyframe before 1.3 s and hides
    them with an edit list: the container counts them, the decoder never shows them."""
    import subprocess

    trimmed = tmp_path / "trimmed.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-ss", "1.3", "-i", str(sample(SAMPLE)),
                    "-t", "4", "-c", "copy", str(trimmed)], check=True, timeout=60)
    frames, damage = read(trimmed, audio=True)
    assert not damage.lossy, damage
    assert damage.frames_read == damage.frames_expected == len(frames)


def test_spans_merge_when_they_overlap_or_touch():
    assert merge_spans([(5, 7), (0, 2), (2, 3), (6, 9)]) == ((0, 3), (5, 9))
    assert merge_spans([]) == ()


def test_damage_survives_the_trace_and_malformed_reports_are_ignored():
    damage = Damage(decode_errors=243, spans=((9_384_375_000, END_NS),), frames_read=226,
                    frames_expected=FRAMES)
    fields = damage.to_trace()
    assert fields["lossy"] is True and fields["spans"] == [[9_384_375_000, END_NS]]
    assert Damage.from_trace(fields) == damage
    assert Damage.from_trace({"decode_errors": -1}) is None
    assert Damage.from_trace("nonsense") is None
    assert damage.describe() == "226 of 472 frames read; damaged 9.38-19.68 s (243 decode errors)"
