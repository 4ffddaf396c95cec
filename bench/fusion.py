"""Fusion: trigger latency after the last needed observation arrives, watermark aligner vs a
fixed 100 ms window aligner (the design momentbus replaces), and the aligner's throughput.

    uv run python bench/fusion.py [--minutes 10] [--seed 1] [--json FILE]

Both aligners get the same observations in the same arrival order, on a simulated clock: two
extractor groups at 10 fps each (face: 40-120 ms processing, quality: 2-8 ms), a smile rule
gated by quality (so it needs both), a smile every 20 s. "Latency" is simulated wall time from
the arrival of the last observation a trigger needs to the trigger's emission, plus the real CPU
time the aligner spent on that call. The fixed-window aligner, like the system this design came
from, collects what arrived in each 100 ms of wall time, evaluates at the window's end and drops
observations older than what it already evaluated. Throughput: real wall time to push all
observations through the watermark aligner.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from momentbus.fusion.aligner import Aligner
from momentbus.fusion.rules import build_rules, parse_rules
from momentbus.ipc.payloads import Box, Expression, Face, Faces, Point2, QualityReading
from momentbus.ipc.schema import Obs
from momentbus.traces.summary import percentile


RULES = """
[[rule]]
name = "smile"
kind = "expression_spike"
[[rule]]
name = "usable"
kind = "quality_gate"
"""
MS = 1_000_000
PERIOD = 100 * MS
FIVE_POINTS = [Point2(0.4, 0.4), Point2(0.5, 0.4), Point2(0.45, 0.5), Point2(0.42, 0.6),
               Point2(0.48, 0.6)]


def make_observations(minutes: float, seed: int) -> list[tuple[int, Obs]]:
    """(arrival wall ns, obs) sorted by arrival."""
    rng = random.Random(seed)
    out = []
    n = int(minutes * 60 * 1e9 / PERIOD)
    for i in range(n):
        t = i * PERIOD
        happy = 0.9 if (t // 1_000_000_000) % 20 in (10, 11, 12) else 0.05
        face = Face(track_id=1, box=Box(0.3, 0.2, 0.6, 0.7), score=0.9, landmarks=FIVE_POINTS,
                    expression=Expression(happy=happy, neutral=round(1 - happy, 4)),
                    area_ratio=0.1)
        f = Obs(source_id="s", group="face", component="extractor:face#1", seq=i, t_ns=t,
                watermark_ns=t, payload=Faces(faces=[face]))
        q = Obs(source_id="s", group="quality", component="extractor:quality#1", seq=i, t_ns=t,
                watermark_ns=t, payload=QualityReading(blur=300.0, brightness=0.5, contrast=0.2,
                                                       gate=True))
        out.append((t + rng.randint(40, 120) * MS, f))
        out.append((t + rng.randint(2, 8) * MS, q))
    out.sort(key=lambda a: (a[0], a[1].group))
    return out


def needed_arrival(arrivals: dict[tuple[str, int], int], t_confirm: int) -> int:
    """Arrival of the last observation the trigger needs: both groups' obs at or before the
    confirming time (the rule is complete up to there only once both arrived)."""
    return max(arrivals[("face", t_confirm)], arrivals[("quality", t_confirm)])


def run_watermark(observations: list[tuple[int, Obs]]) -> tuple[list[float], int]:
    aligner = Aligner(build_rules(parse_rules(RULES)), ["face", "quality"])
    arrivals: dict[tuple[str, int], int] = {}
    latencies, fired = [], 0
    for arrival, obs in observations:
        arrivals[(obs.group, obs.t_ns)] = arrival
        c0 = time.perf_counter_ns()
        out = aligner.on_obs(obs, arrival)
        cpu = time.perf_counter_ns() - c0
        for trig in out.trigs:
            fired += 1
            t_confirm = trig.evidence[1].t_ns
            latencies.append((arrival - needed_arrival(arrivals, t_confirm) + cpu) / MS)
    return latencies, fired


def run_fixed_window(observations: list[tuple[int, Obs]], window_ns: int = 100 * MS
                     ) -> tuple[list[float], int, int]:
    rules = build_rules(parse_rules(RULES))
    arrivals: dict[tuple[str, int], int] = {}
    latencies, fired, dropped = [], 0, 0
    evaluated_until = -1
    i = 0
    window_end = window_ns
    while i < len(observations):
        batch = []
        while i < len(observations) and observations[i][0] < window_end:
            arrival, obs = observations[i]
            arrivals[(obs.group, obs.t_ns)] = arrival
            batch.append(obs)
            i += 1
        c0 = time.perf_counter_ns()
        batch.sort(key=lambda o: (o.t_ns, o.group))
        trigs = []
        for obs in batch:
            if obs.t_ns <= evaluated_until:
                dropped += 1  # late for this window: lost
                continue
            for rule in rules:
                trigs += rule.on_obs(obs)
        if batch:
            evaluated_until = max(evaluated_until, max(o.t_ns for o in batch))
        cpu = time.perf_counter_ns() - c0
        for trig in trigs:
            fired += 1
            t_confirm = trig.evidence[1].t_ns
            latencies.append((window_end - needed_arrival(arrivals, t_confirm) + cpu) / MS)
        window_end += window_ns
    return latencies, fired, dropped


def pct(values: list[float], q: float) -> float:
    p = percentile(values, q)
    return float("nan") if p is None else p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (default 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    observations = make_observations(args.minutes, args.seed)
    expected = int(args.minutes * 60 / 20)
    wm_lat, wm_fired = run_watermark(observations)
    fx_lat, fx_fired, fx_dropped = run_fixed_window(observations)
    t0 = time.perf_counter()
    aligner = Aligner(build_rules(parse_rules(RULES)), ["face", "quality"])
    for arrival, obs in observations:
        aligner.on_obs(obs, arrival)
    wall = time.perf_counter() - t0
    rate = len(observations) / wall
    print(f"{len(observations)} observations, {args.minutes:g} simulated minutes, "
          f"{expected} smiles")
    print(f"{'aligner':22} {'triggers':>8} {'dropped':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'watermark (momentbus)':22} {wm_fired:8d} {0:8d} {pct(wm_lat, 50):8.2f} "
          f"{pct(wm_lat, 99):8.2f}")
    print(f"{'fixed 100 ms window':22} {fx_fired:8d} {fx_dropped:8d} {pct(fx_lat, 50):8.2f} "
          f"{pct(fx_lat, 99):8.2f}")
    ratio50 = pct(fx_lat, 50) / max(pct(wm_lat, 50), 1e-3)
    print(f"latency ratio fixed/watermark: p50 {ratio50:.0f}x, "
          f"p99 {pct(fx_lat, 99) / max(pct(wm_lat, 99), 1e-3):.0f}x")
    print(f"watermark aligner throughput: {rate:,.0f} obs/s ({wall:.2f} s for all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"system": "watermark", "triggers": wm_fired, "dropped": 0,
                        "p50_ms": pct(wm_lat, 50), "p99_ms": pct(wm_lat, 99),
                        "throughput_obs_s": rate},
                       {"system": "fixed_100ms", "triggers": fx_fired, "dropped": fx_dropped,
                        "p50_ms": pct(fx_lat, 50), "p99_ms": pct(fx_lat, 99)}], f, indent=1)


if __name__ == "__main__":
    main()
