"""LiveClock on synthetic timelines: one test per invariant, seeded jitter, Hypothesis."""

from __future__ import annotations

import random
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from momentbus.daemon.liveclock import (
    MAX_BEHIND_NS,
    LiveClock,
    NoGenerationError,
    Reanchor,
)

TB90K = Fraction(1, 90_000)
MS = 1_000_000
S = 1_000_000_000
FRAME_90K = 3600  # 25 fps at 90 kHz: 40 ms


class FakeNow:
    """A monotonic clock the test moves by hand (ns)."""

    def __init__(self, t: int = 1_000 * S) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    def advance(self, ns: int) -> None:
        assert ns >= 0
        self.t += ns


def make_clock(now: FakeNow | None = None, events: list[Reanchor] | None = None) -> LiveClock:
    clock = LiveClock(now or FakeNow(), on_reanchor=events.append if events is not None else None)
    clock.start_generation()
    return clock


def test_stamping_before_start_generation_raises() -> None:
    clock = LiveClock(FakeNow())
    with pytest.raises(NoGenerationError):
        clock.stamp_packet(0, TB90K)
    with pytest.raises(NoGenerationError):
        clock.stamp_frame(0, TB90K)


def test_generations_are_numbered_from_one() -> None:
    clock = LiveClock(FakeNow())
    assert clock.generation == 0
    assert clock.start_generation() == 1
    assert clock.start_generation() == 2


def test_first_packet_is_anchored_to_its_arrival() -> None:
    now = FakeNow()
    clock = make_clock(now)
    assert clock.stamp_packet(123_456, TB90K) == now.t
    assert clock.anchored


def test_packets_follow_their_dts_exactly_after_the_anchor() -> None:
    now = FakeNow()
    clock = make_clock(now)
    t0 = clock.stamp_packet(1_000, TB90K)
    now.advance(200 * MS)  # arrives late, within 2 s: no re-anchor
    # 3003 ticks of 1/90000 s = 33_366_666.67 ns, rounded half away from zero
    assert clock.stamp_packet(1_000 + 3003, TB90K) == t0 + 33_366_667
    assert clock.reanchors == 0


def test_frames_are_stamped_by_pts_on_the_packets_anchor() -> None:
    now = FakeNow()
    clock = make_clock(now)
    t0 = clock.stamp_packet(0, TB90K)  # dts 0
    now.advance(100 * MS)
    # a frame whose pts is 2 frames after the anchored dts (B-frame reorder delay)
    assert clock.stamp_frame(2 * FRAME_90K, TB90K) == t0 + 80 * MS


def test_b_frames_in_presentation_order_come_out_strictly_increasing() -> None:
    # the sample's pattern (tests/LIVE_NOTES.md): decode order I P B b b P B b b ...
    # with pts in frames: 0 4 2 1 3 8 6 5 7 ..., dts = index - 2
    pattern = [0, 4, 2, 1, 3]
    pts_frames = pattern + [p + 4 * k for k in range(1, 20) for p in (4, 2, 1, 3)]
    now = FakeNow()
    clock = make_clock(now)
    emitted: list[int] = []
    pending: list[int] = []
    for i, p in enumerate(pts_frames):
        clock.stamp_packet((i - 2) * FRAME_90K, TB90K)
        pending.append(p)
        if len(pending) > 2:  # a decoder with a 2-frame reorder delay
            p_out = min(pending)
            pending.remove(p_out)
            emitted.append(clock.stamp_frame(p_out * FRAME_90K, TB90K))
        now.advance(40 * MS)
    assert all(b > a for a, b in pairwise(emitted))
    assert {b - a for a, b in pairwise(emitted)} == {40 * MS}


def test_reanchors_when_the_mapped_time_runs_ahead_of_now() -> None:
    events: list[Reanchor] = []
    now = FakeNow()
    clock = make_clock(now, events)
    clock.stamp_packet(0, TB90K)
    now.advance(40 * MS)
    t = clock.stamp_packet(90_000, TB90K)  # dts says 1 s later, only 40 ms passed
    assert t == now.t
    assert [(e.reason, e.by, e.step_ns) for e in events] == [("ahead", "packet", -960 * MS)]


def test_reanchors_when_more_than_2s_behind_now() -> None:
    events: list[Reanchor] = []
    now = FakeNow()
    clock = make_clock(now, events)
    clock.stamp_packet(0, TB90K)
    now.advance(MAX_BEHIND_NS + 500 * MS)  # a stall, then the next packet is only 40 ms later
    t = clock.stamp_packet(FRAME_90K, TB90K)
    assert t == now.t
    assert [(e.reason, e.step_ns) for e in events] == [("behind", 2_460 * MS)]


def test_does_not_reanchor_up_to_2s_behind_now() -> None:
    now = FakeNow()
    clock = make_clock(now)
    t0 = clock.stamp_packet(0, TB90K)
    now.advance(MAX_BEHIND_NS + 40 * MS)
    assert clock.stamp_packet(FRAME_90K, TB90K) == t0 + 40 * MS  # exactly 2 s behind
    assert clock.reanchors == 0


def test_nothing_is_stamped_in_the_future() -> None:
    now = FakeNow()
    clock = make_clock(now)
    clock.stamp_packet(0, TB90K)
    for i in range(1, 50):
        now.advance(10 * MS)  # frames every 40 ms of dts, arriving every 10 ms: a burst
        assert clock.stamp_packet(i * FRAME_90K, TB90K) <= now.t
        assert clock.stamp_frame(i * FRAME_90K, TB90K) <= now.t


def test_t_ns_never_goes_backwards_across_reanchors() -> None:
    now = FakeNow()
    clock = make_clock(now)
    out = [clock.stamp_packet(0, TB90K)]
    now.advance(1 * MS)
    out.append(clock.stamp_packet(90_000, TB90K))  # ahead: re-anchor to now
    out.append(clock.stamp_packet(90_000 + 1, TB90K))  # same instant: maps to now + 11 µs ...
    now.advance(0)
    out.append(clock.stamp_packet(90_000 - 9_000, TB90K))  # dts went back 100 ms
    assert all(b > a for a, b in pairwise(out))


def test_t_ns_never_goes_backwards_across_generations() -> None:
    now = FakeNow()
    clock = make_clock(now)
    packets = [clock.stamp_packet(i * FRAME_90K, TB90K) for i in range(5)]
    frames = [clock.stamp_frame((i + 2) * FRAME_90K, TB90K) for i in range(5)]
    clock.start_generation()  # reconnect at the same instant; the sender's clock restarts
    packets.append(clock.stamp_packet(0, TB90K))
    frames.append(clock.stamp_frame(-2 * FRAME_90K, TB90K))  # leading frame before the anchor
    frames.append(clock.stamp_frame(0, TB90K))
    assert all(b > a for a, b in pairwise(packets))
    assert all(b > a for a, b in pairwise(frames))


def test_t_ns_never_repeats_when_the_clock_does_not_advance() -> None:
    clock = make_clock(FakeNow())
    out = [clock.stamp_packet(None, TB90K) for _ in range(5)]
    assert out == sorted(set(out)) and len(out) == 5


def test_missing_dts_before_the_anchor_gets_the_arrival_time_and_does_not_anchor() -> None:
    # FFmpeg's RTSP client, measured (LIVE_NOTES.md): (pts, dts) of a connection's first packets
    first = [(None, None), (15015, None), (7507, None), (3753, 3753), (11261, 7507)]
    now = FakeNow()
    clock = make_clock(now)
    out = []
    for _pts, dts in first[:3]:
        out.append(clock.stamp_packet(dts, TB90K))
        assert out[-1] == now.t and not clock.anchored
        now.advance(40 * MS)
    anchor = clock.stamp_packet(first[3][1], TB90K)
    assert anchor == now.t and clock.anchored
    now.advance(50 * MS)
    assert clock.stamp_packet(first[4][1], TB90K) == anchor + round(3754 * S / 90_000)
    assert all(b > a for a, b in pairwise([*out, anchor]))


def test_missing_dts_after_the_anchor_is_predicted_from_the_last_step() -> None:
    now = FakeNow()
    clock = make_clock(now)
    t0 = clock.stamp_packet(0, TB90K)
    now.advance(40 * MS)
    clock.stamp_packet(FRAME_90K, TB90K)
    now.advance(40 * MS)
    assert clock.stamp_packet(None, TB90K) == t0 + 80 * MS
    now.advance(40 * MS)
    assert clock.stamp_packet(None, TB90K) == t0 + 120 * MS  # keeps advancing
    now.advance(40 * MS)
    assert clock.stamp_packet(4 * FRAME_90K, TB90K) == t0 + 160 * MS


def test_missing_pts_frame_continues_from_the_previous_frame() -> None:
    now = FakeNow()
    clock = make_clock(now)
    clock.stamp_packet(0, TB90K)
    now.advance(100 * MS)
    a = clock.stamp_frame(0, TB90K)
    b = clock.stamp_frame(FRAME_90K, TB90K)
    assert clock.stamp_frame(None, TB90K) == b + (b - a)


def test_frame_without_pts_before_any_frame_gets_now() -> None:
    now = FakeNow()
    clock = make_clock(now)
    assert clock.stamp_frame(None, TB90K) == now.t


def test_slow_decoder_frames_do_not_reanchor() -> None:
    now = FakeNow()
    clock = make_clock(now)
    t0 = clock.stamp_packet(0, TB90K)
    now.advance(5 * S)  # the decoder is 5 s late
    assert clock.stamp_frame(0, TB90K) == t0
    assert clock.reanchors == 0


def test_frame_running_ahead_reanchors_for_packets_too() -> None:
    now = FakeNow()
    events: list[Reanchor] = []
    clock = make_clock(now, events)
    clock.stamp_packet(0, TB90K)
    assert clock.stamp_frame(90_000, TB90K) == now.t  # pts 1 s ahead of anything that arrived
    assert events[0].by == "frame"
    now.advance(40 * MS)
    # the packets' mapping moved with it: dts 1 s + 40 ms maps to now
    assert clock.stamp_packet(90_000 + FRAME_90K, TB90K) == now.t


def test_time_base_changes_keep_one_mapping_in_seconds() -> None:
    now = FakeNow()
    clock = make_clock(now)
    t0 = clock.stamp_packet(90_000, TB90K)  # 1 s
    now.advance(1 * S)
    assert clock.stamp_frame(48_000 * 2, Fraction(1, 48_000)) == t0 + S  # 2 s in 1/48000


def test_jitter_settles_on_the_least_delayed_arrival() -> None:
    """Seeded network jitter: t_ns tracks capture time + the smallest delay seen so far."""
    rng = random.Random(20261105)
    base_delay, jitter = 30 * MS, 50 * MS
    now = FakeNow()
    clock = make_clock(now)
    capture0 = now.t
    min_delay = None
    prev = None
    for i in range(2_000):  # 80 s at 25 fps
        capture = capture0 + i * 40 * MS
        delay = base_delay + rng.randrange(jitter)
        arrival = max(capture + delay, now.t)  # in order (TCP)
        now.t = arrival
        t = clock.stamp_packet(i * FRAME_90K, TB90K)
        seen = arrival - capture  # the delay this packet really had (held back by the previous)
        min_delay = seen if min_delay is None else min(min_delay, seen)
        assert t <= now.t
        assert prev is None or t > prev
        prev = t
        if i > 100:  # after a few seconds the mapping sits on the least delayed packet
            assert capture + base_delay <= t <= capture + min_delay + 1
    assert clock.reanchors < 60  # each new minimum moves it once; no "behind" jumps


@pytest.mark.parametrize("ppm", [1_000, -1_000])
def test_sender_clock_drift_is_followed(ppm: int) -> None:
    """A sender clock 0.1 % fast keeps re-anchoring earlier in small steps; 0.1 % slow falls
    behind and jumps once it is more than 2 s behind."""
    events: list[Reanchor] = []
    now = FakeNow()
    clock = make_clock(now, events)
    for i in range(60_000):  # 2400 s of 25 fps
        now.t = 1_000 * S + i * 40 * MS
        dts = round(i * FRAME_90K * (1 + ppm / 1e6))
        t = clock.stamp_packet(dts, TB90K)
        assert now.t - MAX_BEHIND_NS <= t <= now.t
    if ppm > 0:
        assert events and all(e.reason == "ahead" and -MS < e.step_ns < 0 for e in events)
    else:
        assert [e.reason for e in events] == ["behind"]


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int | None, int]]:
    ops = []
    for _ in range(draw(st.integers(1, 80))):
        kind = draw(st.sampled_from(["packet", "frame", "generation"]))
        ts = draw(st.one_of(st.none(), st.integers(-10 * 90_000, 10 * 90_000)))
        advance = draw(st.sampled_from([0, 1, 40 * MS, 500 * MS, 3 * S]))
        ops.append((kind, ts, advance))
    return ops


@settings(max_examples=300, deadline=None)
@given(operations())
def test_property_outputs_strictly_increase_and_never_run_ahead_of_now(
        ops: list[tuple[str, int | None, int]]) -> None:
    now = FakeNow()
    clock = make_clock(now)
    last: dict[str, int] = {}
    for kind, ts, advance in ops:
        now.advance(advance)
        if kind == "generation":
            clock.start_generation()
            continue
        t = (clock.stamp_packet if kind == "packet" else clock.stamp_frame)(ts, TB90K)
        prev = last.get(kind)
        assert prev is None or t > prev
        assert t <= max(now.t, (prev or 0) + 1)
        if kind == "packet" and ts is not None:  # a packet with dts is never > 2 s behind
            assert t >= now.t - MAX_BEHIND_NS
        last[kind] = t
