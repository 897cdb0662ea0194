"""Progress of an experiment: which run, which repetition, elapsed, ETA.

On a terminal a status line shows the run in progress and is replaced by the run's result
line when it ends; elsewhere (CI logs, pipes) only the result lines are written, one per run,
so a log never fills with carriage returns. The ETA is the mean duration of finished runs
times the runs left: runs of one scenario take similar times, and it needs no model.

A run's outcome is one line however many clients it had (the runner groups failures by
reason); a reason that spans lines (a process's stderr) is joined into it, so a log keeps
one line per run.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    def __init__(
        self, total: int, stream: TextIO | None = None, clock=time.monotonic, done_before: int = 0
    ) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.clock = clock
        self.started = clock()
        self.finished = 0  # by this process
        self.done_before = done_before  # a resumed run's runs finished before it
        self.interactive = self.stream.isatty()

    def eta(self) -> str:
        if not self.finished:
            return "?"
        elapsed = self.clock() - self.started
        left = self.total - self.done_before - self.finished
        return _clock(elapsed / self.finished * left)

    def status(self) -> str:
        return f"elapsed {_clock(self.clock() - self.started)}, ETA {self.eta()}"

    def begin(self, index: int, what: str) -> None:
        if self.interactive:
            line = f"[{index}/{self.total}] {what} running… ({self.status()})"
            self.stream.write("\r\033[K" + line)
            self.stream.flush()

    def end(self, index: int, what: str, outcome: str, seconds: float) -> None:
        self.finished += 1
        outcome = " ".join(outcome.split())
        line = f"[{index}/{self.total}] {what}: {outcome} ({seconds:.1f} s; {self.status()})"
        self.stream.write(("\r\033[K" if self.interactive else "") + line + "\n")
        self.stream.flush()
