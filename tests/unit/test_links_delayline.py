"""The delay line's schedule and netlink messages, without a kernel."""

from __future__ import annotations

import argparse
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.emulation import delayline
from testbed.emulation.delayline import DelaySchedule, QueueSpec


def test_constant_delay_releases_in_order_at_due_time():
    schedule = DelaySchedule(delay_s=0.010, jitter_s=0, limit=10)
    assert schedule.arrive(1, now=1.000) == pytest.approx(1.010)
    assert schedule.arrive(2, now=1.002) == pytest.approx(1.012)
    assert schedule.release(1.009) is None
    assert schedule.next_due() == pytest.approx(1.010)
    assert schedule.release(1.0111) == 1
    assert schedule.release(2.0) == 2
    assert schedule.counters()["released"] == 2


def test_full_queue_drops_and_counts():
    schedule = DelaySchedule(delay_s=1, jitter_s=0, limit=2)
    assert schedule.arrive(1, 0) is not None
    assert schedule.arrive(2, 0) is not None
    assert schedule.arrive(3, 0) is None
    assert schedule.counters() == {
        "received": 3,
        "released": 0,
        "dropped_full": 1,
        "max_held": 2,
        "held": 2,
    }
    assert schedule.release_all() == 2


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=0.02), min_size=1, max_size=200),
    seed=st.integers(0, 2**32),
)
def test_jitter_never_reorders_and_stays_within_bounds(gaps, seed):
    schedule = DelaySchedule(delay_s=0.010, jitter_s=0.005, limit=1000, rng=random.Random(seed))
    now, dues = 0.0, []
    for packet_id, gap in enumerate(gaps):
        now += gap
        due = schedule.arrive(packet_id, now)
        assert due >= now + 0.005  # never earlier than delay - jitter
        dues.append(due)
    assert dues == sorted(dues)  # FIFO: a link does not reorder
    released = []
    while schedule.held:
        released.append(schedule.release(schedule.next_due()))
    assert released == sorted(released)


def test_jitter_is_uniform_around_the_delay_when_packets_are_spaced():
    schedule = DelaySchedule(delay_s=0.050, jitter_s=0.005, limit=10, rng=random.Random(1))
    delays = []
    for packet_id in range(2000):
        now = packet_id * 0.1  # spaced wider than 2 × jitter: no FIFO clamping
        delays.append(schedule.arrive(packet_id, now) - now)
        schedule.release(now + 1)
    assert min(delays) >= 0.045 and max(delays) <= 0.055
    assert sum(delays) / len(delays) == pytest.approx(0.050, abs=0.0003)


def test_verdict_batch_message_layout():
    message = delayline.verdict_message(
        queue=7, packet_id=42, verdict=delayline.NF_ACCEPT, batch=True
    )
    length, kind, flags, _, _ = delayline.NLMSG_HDR.unpack_from(message)
    assert length == len(message) == 16 + 4 + 12
    assert kind == (3 << 8) | 3  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_VERDICT_BATCH
    assert flags == delayline.NLM_F_REQUEST
    assert struct.unpack_from("!BBH", message, 16) == (0, 0, 7)
    assert struct.unpack_from("=HH", message, 20) == (12, delayline.NFQA_VERDICT_HDR)
    assert struct.unpack_from("!II", message, 24) == (1, 42)


def test_params_message_asks_for_metadata_only_and_the_bound():
    message = delayline.params_message(queue=3, limit=500, seq=9)
    assert struct.unpack_from("=HH", message, 20) == (9, delayline.NFQA_CFG_PARAMS)
    assert struct.unpack_from("!IB", message, 24) == (0, delayline.NFQNL_COPY_META)
    assert struct.unpack_from("=HH", message, 32) == (8, delayline.NFQA_CFG_QUEUE_MAXLEN)
    assert struct.unpack_from("!I", message, 36) == (500,)


def _packet_message(queue: int, packet_id: int, first_attribute: bytes = b"") -> bytes:
    header = (
        struct.pack("=HH", 11, delayline.NFQA_PACKET_HDR)
        + struct.pack("!IHB", packet_id, 0x0800, 3)
        + b"\0"
    )
    body = struct.pack("!BBH", 2, 0, queue) + first_attribute + header
    return delayline.NLMSG_HDR.pack(16 + len(body), delayline.PACKET_MESSAGE_TYPE, 0, 0, 0) + body


def test_parse_packet_finds_queue_and_id():
    message = _packet_message(queue=11, packet_id=0xDEADBEEF)
    assert delayline.parse_packet(message, len(message)) == (11, 0xDEADBEEF)
    mark = struct.pack("=HH", 8, 3) + struct.pack("!I", 1)  # NFQA_MARK before the header
    message = _packet_message(queue=1, packet_id=5, first_attribute=mark)
    assert delayline.parse_packet(message, len(message)) == (1, 5)


def test_parse_ignores_other_messages():
    ack = (
        delayline.NLMSG_HDR.pack(36, delayline.NLMSG_ERROR, 0, 1, 0)
        + struct.pack("=i", 0)
        + b"\0" * 16
    )
    assert delayline.parse_packet(ack, len(ack)) is None
    assert delayline.parse_error(ack, len(ack)) == 0
    busy = ack[:16] + struct.pack("=i", -16) + ack[20:]
    assert delayline.parse_error(busy, len(busy)) == -16
    assert delayline.parse_packet(b"\0" * 8, 8) is None


@pytest.mark.parametrize("text", ["1:2", "x:1:0", "70000:1:0", "1:5:6", "1:-1:0"])
def test_queue_spec_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        QueueSpec.parse(text)


def test_queue_spec_round_trip():
    assert QueueSpec.parse("4:12.5:2").argument() == "4:12.5:2"


def test_cli_refuses_duplicate_queues():
    with pytest.raises(SystemExit):
        delayline.main(["--queue", "1:1:0", "--queue", "1:2:0", "--lifetime-s", "1"])
