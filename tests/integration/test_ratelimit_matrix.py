"""The rate limiter in every variant under every migration kind (the ratelimit rows of
scenarios/matrix.yaml), on the real emulation: does a migrated connection stay under its one
token bucket?"""

from __future__ import annotations

import pytest

from tests.integration.conftest import records_of_function

pytestmark = pytest.mark.integration
KINDS = ("nat-rebind", "addr-rebind", "active")
BURST_BYTES = 4000 * 1000 // 8  # scenarios/matrix.yaml: burst_kbit 4000
# Keeps its bucket across the migration: no leakage expected.
KEEPS_BUCKET = {"tuple": set(), "cid": {"nat-rebind", "addr-rebind"}, "qasm": set(KINDS)}


@pytest.fixture(scope="module")
def records(matrix_run):
    return records_of_function(matrix_run, "ratelimit")


@pytest.mark.parametrize("kind", KINDS)
def test_every_variant_completes_because_a_rate_limiter_does_not_drop_paths(records, kind):
    for variant in ("baseline", *KEEPS_BUCKET):
        record = records[(variant, kind)]
        assert record["completed"] and record["verified"], (variant, record["failure"])
    assert records[("baseline", kind)]["leakage_bytes"] is None  # no limit applied


@pytest.mark.parametrize("variant", sorted(KEEPS_BUCKET))
@pytest.mark.parametrize("kind", KINDS)
def test_leakage_only_where_the_variant_loses_the_connection(records, variant, kind):
    leaked = records[(variant, kind)]["leakage_bytes"]
    if kind in KEEPS_BUCKET[variant]:
        assert leaked == 0
    else:
        # A fresh bucket lets about one more burst through (a lower bound: payload vs frames).
        assert leaked > BURST_BYTES // 3, leaked


def test_a_connection_first_seen_mid_flight_is_not_copied_to_the_controller(records):
    # cid meets active migration's new DCID as a new connection without a handshake.
    assert records[("cid", "active")]["packet_ins"] < 100
