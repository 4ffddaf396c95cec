"""How many processes of each extractor kind a local run starts, and how many model threads each
gets (``momentbus run --workers auto``, the default).

A kind's processes are members of one group: the frame bus deals the group's frames out among
them, and fusion takes the group's watermark as the minimum over its members, so two face
processes give exactly the triggers one gives (tests/test_chaos.py). Splitting only helps when
one kind's per-frame work is larger than its share of the machine.

The plan, for ``C`` usable cores (``os.sched_getaffinity``) and each kind's cost ``c`` (ms per
frame, :data:`COST_MS`): a run of ``N`` frames needs at least ``N * max(sum(c) / C, max(c / n))``
of wall time, where ``n`` is a kind's number of processes (the OS time-slices processes, so work
packs onto the cores as long as no single process has more than a core's share; McNaughton's
bound for preemptive scheduling). Starting from one process a kind, the planner adds a process to
the kind with the largest ``c / n`` while that is above ``sum(c) / C`` (the slowest kind would
leave cores idle), up to ``C`` processes for that kind. Kinds that read audio are one process:
a speech segment spans chunks, so its stream cannot be dealt out.

Model threads: a process's intra-op threads are ``max(1, C // processes)`` so that the run's
processes together do not oversubscribe the cores (onnxruntime, given no number, starts one
thread per core in every process). Speech takes at least 2 (faster-whisper's ``cpu_threads``; its
real-time factor, 0.13 on 2 threads here, leaves room).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Per-frame cost of each kind's default backend, ms at 640x360 on this 2-core machine
#: (bench/extractors.py, README "Extractors"). Only the ratios matter to the plan. Speech: the
#: CPU of 0.1 s of audio at its real-time factor of 0.13 (bench/extractors.py), the same unit as
#: a frame at the default 10 fps.
COST_MS: dict[str, float] = {"face": 36.4, "pose": 19.5, "gesture": 25.3, "quality": 0.7,
                             "speech": 13.0}
#: Kinds whose items can be dealt out among several processes of one group (per-frame kinds).
SPLITTABLE = frozenset({"face", "pose", "gesture", "quality"})
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
        share = sum(COST_MS.get(k, 0.0) for k in requested) / cores
        while free:
            slowest = max(free, key=lambda k: COST_MS.get(k, 0.0) / processes[k])
            if (COST_MS.get(slowest, 0.0) / processes[slowest] <= share
                    or processes[slowest] >= cores):
                break
            processes[slowest] += 1
    total = sum(processes.values())
    threads = {k: max(1, cores // total) for k in processes}
    if "speech" in threads:
        threads["speech"] = max(threads["speech"], MIN_SPEECH_THREADS)
    return WorkerPlan(processes, threads)
