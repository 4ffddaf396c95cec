"""Frame sampling at a wanted rate, on event time (shared by the frame bus and `momentbus extract`)."""

from __future__ import annotations


class FpsSampler:
    """Picks frames at ``fps`` from a stream of increasing ``t_ns``.

    Slots lie on a grid of ``1/fps`` started by the first frame, so the rate stays exact on
    average whatever the source's frame rate or VFR jitter; a frame up to a quarter period early
    takes its slot (23.976 fps sampled at 10 fps gives 10 fps, not 8). ``fps=None``: every frame.
    """

    def __init__(self, fps: float | None) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.fps = fps
        self.period_ns = round(1e9 / fps) if fps else 0
        self.next_due_ns: int | None = None

    def __call__(self, t_ns: int) -> bool:
        """Whether the frame at ``t_ns`` is due."""
        if not self.due(t_ns):
            return False
        if self.fps is not None:
            early = t_ns + self.period_ns // 4  # a quarter period early still takes the slot
            start = t_ns if self.next_due_ns is None else self.next_due_ns
            self.next_due_ns = start + ((early - start) // self.period_ns + 1) * self.period_ns
        return True

    def due(self, t_ns: int) -> bool:
        """What calling the sampler with ``t_ns`` would answer, without taking the slot."""
        if self.fps is None or self.next_due_ns is None:
            return True
        return t_ns + self.period_ns // 4 >= self.next_due_ns

    def state(self) -> int | None:
        """The next due time (ns): with it, :meth:`restore` continues the same grid (a daemon
        resuming a file samples exactly the frames it sampled before)."""
        return self.next_due_ns

    def restore(self, next_due_ns: int | None) -> None:
        self.next_due_ns = next_due_ns
