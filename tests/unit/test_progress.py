"""Progress lines: plain when not on a terminal, ETA from the finished runs."""

from __future__ import annotations

import io

from testbed.emulation.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_stream_gets_one_line_per_finished_run_with_eta():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(4, stream, clock)
    progress.begin(1, "baseline active rep 0")
    assert stream.getvalue() == ""  # no status lines in a log
    clock.now = 30.0
    progress.end(1, "baseline active rep 0", "ok", 30.0)
    clock.now = 60.0
    progress.end(2, "qasm active rep 0", "FAILED (idle timeout)", 30.0)
    first, second = stream.getvalue().splitlines()
    assert first == "[1/4] baseline active rep 0: ok (30.0 s; elapsed 0:30, ETA 1:30)"
    assert (
        second == "[2/4] qasm active rep 0: FAILED (idle timeout) (30.0 s; elapsed 1:00, ETA 1:00)"
    )
    assert "\r" not in stream.getvalue()


def test_terminal_shows_the_running_run_and_replaces_it():
    clock, stream = FakeClock(), Terminal()
    progress = Progress(2, stream, clock)
    progress.begin(1, "tuple nat-rebind rep 1")
    assert stream.getvalue().endswith("[1/2] tuple nat-rebind rep 1 running… (elapsed 0:00, ETA ?)")
    clock.now = 3725.0
    progress.end(1, "tuple nat-rebind rep 1", "ok", 3725.0)
    assert stream.getvalue().endswith(
        "\r\033[K[1/2] tuple nat-rebind rep 1: ok (3725.0 s; elapsed 1:02:05, ETA 1:02:05)\n"
    )


def test_an_outcome_spanning_lines_stays_one_line_per_run():
    stream = io.StringIO()
    progress = Progress(1, stream, FakeClock())
    progress.end(1, "qasm active rep 0", "FAILED (server exited:\n  Traceback ...\n)", 2.0)
    assert stream.getvalue() == (
        "[1/1] qasm active rep 0: FAILED (server exited: Traceback ... ) "
        "(2.0 s; elapsed 0:00, ETA 0:00)\n"
    )


def test_a_resumed_run_counts_only_the_runs_left_in_its_eta():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(10, stream, clock, done_before=6)  # 4 left
    clock.now = 20.0
    progress.end(7, "tuple active rep 1", "ok", 20.0)
    assert stream.getvalue().endswith("(20.0 s; elapsed 0:20, ETA 1:00)\n")
