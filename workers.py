"""How many processes of each extractor kind a local run starts, and how many model threads each
gets (``momentbus run --workers auto``, the default).

A kind's processes are members of one group: the frame bus deals the group's frames out among
them, and fusion takes the group's watermark as the minimum over its members, so two face
processes give exactly the triggers one gives (tests/test_chaos.py, tests/test_run_e2e.py).

The plan, for ``C`` usable cores (``os.sched_getaffinity``) and each kind's cost ``c`` (ms per
frame, :data:`COST_MS`; a kind split into ``n`` processes is ``n`` jobs of ``c / n``): the
groups move in lock-step (a fast group runs at most its queue of 8 frames ahead of the slowest,
ipc/framebus.py), so a frame's work has to pack onto the cores frame after frame, and a process
is not cut into pieces across cores within a frame. The planner therefore scores a plan by the
makespan of Graham's LPT packing (longest job first, onto the least-loaded core; within 4/3 of
the optimum) against the ideal ``sum(c) / C``. Starting from one process a kind, it adds the
process that shortens the makespan most (ties: the plan whose longest job is shorter), while the
makespan is more than :data:`PACKING_SLACK` above the ideal and a process still shortens it, up
to ``C`` processes a kind and :data:`AUTO_MAX_PER_KIND`, never splitting a job already under a
quarter of the ideal. On 2 cores: ``face,quality`` -> face:2 (one face job of 30.3 ms would
leave a core idle); ``face,pose,gesture,quality`` -> face:2 (packings 40.8 ms -> 36.0 ms a
frame, ideal 35.8; measured on the 118 s video: 58.8 s with face:1, 52.1-53.7 s with face:2;
face:3, pose:2, gesture:2 measured slower, 58.5 s). Kinds that read audio are one process: a
speech segment spans chunks, so its stream cannot be dealt out.

Model threads: a process's intra-op threads are ``max(1, C // processes)`` so that the run's
processes together do not oversubscribe the cores (onnxruntime, given no number, starts one
thread per core in every process). Speech takes at least 2 (faster-whisper's ``cpu_threads``; its
real-time factor, 0.08 on 2 threads here, leaves room).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Per-frame cost of each kind's default backend, ms at 640x360 on this 2-core machine
#: (``uv run python bench/extractors.py``, medians; README "Extractors"). Only the ratios matter
#: to the plan. Speech: the CPU of 0.1 s of audio at its real-time factor of 0.08 (the same
#: bench), the same unit as a frame at the default 10 fps.
COST_MS: dict[str, float] = {"face": 30.3, "pose": 20.0, "gesture": 20.8, "quality": 0.4,
                             "speech": 8.0}
#: Kinds whose items can be dealt out among several processes of one group (per-frame kinds).
SPLITTABLE = frozenset({"face", "pose", "gesture", "quality"})
#: How far above the ideal ``sum(cost) / cores`` a plan's packing may stay (the costs are
#: medians of a noisy 2-core machine: closer is not measurable).
PACKING_SLACK = 0.05
#: Processes ``auto`` gives one kind at most, whatever the cores: each loads its own model
#: (a face process is ~150 MB of PSS here, bench/pipeline.py); ``KIND:N`` may ask for more.
AUTO_MAX_PER_KIND = 8
#: Threads for the speech model at least (faster-whisper ``cpu_threads``).
MIN_SPEECH_THREADS = 2


@dataclass(frozen=True)
class WorkerPlan:
    """``processes``: kind -> processes of its group; ``threads``: kind -> model threads in each."""

    processes: dict[str, int]
    threads: dict[str, int]

    def describe(self) -> str:
        """``face:2 (1 thread), quality:1 (1 thread)``"""
        return ", ".join(f"{k}:{n} ({self.threads[k]} thread{'s' * (self.threads[k] > 1)})"
                         for k, n in self.processes.items())


def lpt_makespan(processes: Mapping[str, int], cores: int) -> float:
    """Per-frame time (ms) of the kinds' jobs (``n`` jobs of ``COST_MS[kind] / n``) packed onto
    ``cores`` by Graham's LPT rule: the longest job first, each onto the least-loaded core."""
    jobs = sorted((COST_MS.get(k, 0.0) / n for k, n in processes.items() for _ in range(n)),
                  reverse=True)
    loads = [0.0] * cores
    for job in jobs:
        loads[loads.index(min(loads))] += job
    return max(loads)


def _score(processes: Mapping[str, int], cores: int) -> tuple[float, float]:
    return (round(lpt_makespan(processes, cores), 6),
            max((COST_MS.get(k, 0.0) / n for k, n in processes.items()), default=0.0))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, as ``taskset`` or a container sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_workers(requested: Mapping[str, int | None], workers: str = "auto",
                 cores: int | None = None) -> WorkerPlan:
    """The processes and threads of every kind.

    Args:
        requested: kind -> processes the user asked for (``face:2``), or ``None`` (``face``):
            those are planned.
        workers: ``auto`` (plan from :data:`COST_MS` and the cores) or a number of processes for
            every kind left to plan (``1``: one process a kind).
        cores: usable cores (default: :func:`usable_cores`).

    Raises:
        ValueError: ``workers`` is neither ``auto`` nor a positive integer.
    """
    cores = cores or usable_cores()
    if workers != "auto":
        if not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"--workers {workers!r}: expected auto or a number of processes "
                             "(1 or more)")
        fixed = int(workers)
        processes = {k: n if n is not None else (fixed if k in SPLITTABLE else 1)
                     for k, n in requested.items()}
    else:
        processes = {k: n or 1 for k, n in requested.items()}
        free = [k for k, n in requested.items() if n is None and k in SPLITTABLE]
        ideal = sum(COST_MS.get(k, 0.0) for k in requested) / cores
        current = lpt_makespan(processes, cores)
        while current > ideal * (1 + PACKING_SLACK):
            # a job under a quarter of a core's share always fits in the gaps: never worth the
            # memory of another process (quality's 0.4 ms)
            # ties on the makespan go to the plan whose largest job is shorter (two kinds of
            # about the same cost must both be split before the makespan moves)
            options = [(_score({**processes, k: processes[k] + 1}, cores), k)
                       for k in free if processes[k] < min(cores, AUTO_MAX_PER_KIND)
                       and COST_MS.get(k, 0.0) / processes[k] >= ideal / 4]
            if not options or min(options)[0] >= _score(processes, cores):
                break
            (current, _), kind = min(options)
            processes[kind] += 1
    total = sum(processes.values())
    threads = {k: max(1, cores // total) for k in processes}
    if "speech" in threads:
        threads["speech"] = max(threads["speech"], MIN_SPEECH_THREADS)
    return WorkerPlan(processes, threads)
