"""The batch's schedule and its live progress: longest chapters first, and a line that says
which chapters are running, for how long, and about how long the rest will take.

Chapters run on ``jobs`` workers that take the next chapter in order as soon as one is free
(``ProcessPoolExecutor``'s first-in first-out queue), so the start of each chapter is known
from the finishes alone: the first ``jobs`` start at once, and each finish starts the next.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def last_wall_times(chapters: list[Path], results: Path, also: Path | None = None) -> dict[str, float]:
    """Each chapter's last recorded ``wall_s`` in ``results``, else in ``also`` (a plain full run
    estimates from the committed results/full/), 0 when neither records one."""
    def last(p: Path) -> float:
        for folder in (results, also):
            f = folder / f"{p.stem}.json" if folder is not None else None
            if f is not None and f.is_file():
                return float(json.loads(f.read_text()).get("wall_s", 0.0))
        return 0.0
    return {p.stem: last(p) for p in chapters}


def makespan(durations: list[float], workers: int, busy: list[float] | None = None) -> float:
    """The wall time of running ``durations`` in order, each on the least-loaded of ``workers``
    (whose loads start at ``busy``)."""
    load = sorted(busy or []) + [0.0] * max(0, max(1, workers) - len(busy or []))
    for d in durations:
        load[load.index(min(load))] += d
    return max(load) if load else 0.0


def longest_first(chapters: list[Path], results: Path, jobs: int,
                  also: Path | None = None) -> tuple[list[Path], float]:
    """The chapters ordered by their last recorded wall time (``last_wall_times``), longest first
    (so ``jobs`` workers finish together; unknown ones last), and the estimated wall time of the batch."""
    last = last_wall_times(chapters, results, also)
    ordered = sorted(chapters, key=lambda p: last[p.stem], reverse=True)
    return ordered, makespan([last[p.stem] for p in ordered], min(jobs, len(chapters)))


class Progress:
    """Running chapters and their start times, from the finishes (see the module docstring)."""

    def __init__(self, stems: list[str], jobs: int, estimates: dict[str, float], clock=time.perf_counter):
        self.clock, self.t0, self.jobs = clock, clock(), max(1, jobs)
        self.pending, self.estimates, self.done = list(stems), estimates, 0
        self.running: dict[str, float] = {}
        for _ in range(min(self.jobs, len(self.pending))):
            self.running[self.pending.pop(0)] = self.t0

    def finished(self, stem: str) -> None:
        """``stem`` is done: the next pending chapter starts now."""
        self.running.pop(stem, None)
        self.done += 1
        if self.pending:
            self.running[self.pending.pop(0)] = self.clock()

    def left(self) -> float:
        """Seconds left by the estimates: what the running chapters still need, then the rest."""
        now = self.clock()
        busy = [max(0.0, self.estimates.get(s, 0.0) - (now - t)) for s, t in self.running.items()]
        return makespan([self.estimates.get(s, 0.0) for s in self.pending], self.jobs, busy)

    def line(self) -> str:
        """``running: 03 (120 s, ~827), 01 (30 s, ~848); 2 of 7 done; 150 s elapsed, about 900 s left``."""
        now = self.clock()
        est = lambda s: f"~{self.estimates[s]:.0f}" if self.estimates.get(s) else "no estimate"
        run = ", ".join(f"{s} ({now - t:.0f} s, {est(s)})" for s, t in self.running.items())
        total = self.done + len(self.running) + len(self.pending)
        unknown = [s for s in [*self.running, *self.pending] if not self.estimates.get(s)]
        over = [s for s, t in self.running.items() if self.estimates.get(s) and now - t > self.estimates[s]]
        left = f"about {self.left():.0f} s left"
        left += f" + {len(unknown)} chapter(s) never timed" if unknown else ""
        left += f" + {len(over)} chapter(s) past their estimate" if over else ""
        return f"running: {run or 'none'}; {self.done} of {total} done; {now - self.t0:.0f} s elapsed, {left}"
