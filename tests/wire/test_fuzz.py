"""`make fuzz`: a million mutated packets through every public parser of the wire library."""

from __future__ import annotations

import os

import pytest

from tests.wire.mutation import WireFuzzer

FUZZ_CASES = int(os.environ.get("QASM_FUZZ_CASES", "1000000"))
FUZZ_SEED = int(os.environ.get("QASM_FUZZ_SEED", "20240501"))


@pytest.mark.fuzz
def test_a_million_mutated_packets_end_in_results_or_wire_errors():
    fuzzer = WireFuzzer(FUZZ_SEED)
    report = fuzzer.run(FUZZ_CASES)
    summary = (
        f"fuzz: {report.cases} mutated inputs ({report.calls} parser calls) in "
        f"{report.seconds:.1f} s (seed {FUZZ_SEED}), {report.wire_errors} WireErrors, "
        f"slowest call {report.slowest * 1e3:.2f} ms, "
        f"per target {report.per_target}"
    )
    print(summary)
    assert report.cases >= FUZZ_CASES
