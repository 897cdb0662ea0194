"""RTT observers (RFC 9312 §3.8): synthetic signals and a real aioquic exchange."""

from __future__ import annotations

import random

import pytest

from qasm.wire import (
    QUIC_V1,
    HandshakeRttObserver,
    HeaderForm,
    PacketHeader,
    PacketType,
    SpinBitRttEstimator,
    parse_datagram,
)
from tests.wire.conftest import ONE_WAY_DELAY


def short(spin: bool, dcid: bytes = b"\x01" * 8) -> PacketHeader:
    return PacketHeader(
        form=HeaderForm.SHORT,
        packet_type=PacketType.ONE_RTT,
        version=None,
        dcid=dcid,
        scid=b"",
        token=b"",
        first_byte=0x40 | (0x20 if spin else 0),
        offset=0,
        length=100,
    )


def long(packet_type: PacketType) -> PacketHeader:
    return PacketHeader(
        form=HeaderForm.LONG,
        packet_type=packet_type,
        version=QUIC_V1,
        dcid=b"",
        scid=b"",
        token=b"",
        first_byte=0xC0,
        offset=0,
        length=100,
    )


def spin_signal(rtt: float, gap: float, duration: float) -> list[tuple[float, bool]]:
    """Packets every `gap` seconds whose spin value flips every `rtt` seconds."""
    per_rtt = round(rtt / gap)
    return [(i * gap, (i // per_rtt) % 2 == 1) for i in range(round(duration / gap))]


def feed(estimator: SpinBitRttEstimator, signal) -> list[float]:
    samples = [estimator.observe(short(spin), now) for now, spin in signal]
    return [sample for sample in samples if sample is not None]


def test_handshake_rtt_adds_both_components():
    observer = HandshakeRttObserver()
    observer.observe(long(PacketType.INITIAL), from_client=True, now=0.000)
    observer.observe(long(PacketType.INITIAL), from_client=False, now=0.030)  # server side 30
    observer.observe(long(PacketType.HANDSHAKE), from_client=False, now=0.031)
    observer.observe(long(PacketType.INITIAL), from_client=True, now=0.040)  # ignored
    observer.observe(long(PacketType.HANDSHAKE), from_client=True, now=0.051)  # client side 20
    assert observer.server_side_rtt == 0.030
    assert abs(observer.client_side_rtt - 0.020) < 1e-9
    assert abs(observer.handshake_rtt - 0.050) < 1e-9


def test_retry_restarts_the_server_side_measurement():
    observer = HandshakeRttObserver()
    observer.observe(long(PacketType.INITIAL), from_client=True, now=0.0)
    observer.observe(long(PacketType.RETRY), from_client=False, now=0.010)
    observer.observe(long(PacketType.INITIAL), from_client=True, now=0.012)
    observer.observe(long(PacketType.INITIAL), from_client=False, now=0.025)
    assert abs(observer.server_side_rtt - 0.013) < 1e-9
    assert observer.handshake_rtt is None  # no Handshake flight seen yet


def test_periodic_spin_gives_the_rtt():
    estimator = SpinBitRttEstimator()
    samples = feed(estimator, spin_signal(rtt=0.050, gap=0.002, duration=1.0))
    assert len(samples) >= 15
    assert all(abs(sample - 0.050) <= 0.0021 for sample in samples)
    assert abs(estimator.rtt - 0.050) <= 0.0021
    assert estimator.spin_usable is True


def test_reordering_across_a_flip_is_rejected_and_does_not_shift_later_samples():
    signal = spin_signal(rtt=0.050, gap=0.002, duration=0.5)
    # Swap the packet just after the third flip with the one before it.
    flip = round(0.150 / 0.002)
    assert signal[flip][1] != signal[flip - 1][1]
    (t1, s1), (t2, s2) = signal[flip - 1], signal[flip]
    signal[flip - 1], signal[flip] = (t1, s2), (t2, s1)
    estimator = SpinBitRttEstimator()
    samples = feed(estimator, signal)
    reasons = [sample.reason for sample in estimator.samples]
    assert "too short (reordering)" in reasons
    assert all(abs(sample - 0.050) <= 0.0041 for sample in samples)


def test_a_sender_pause_is_rejected_as_too_long():
    signal = spin_signal(rtt=0.050, gap=0.002, duration=0.4)
    paused = [(now + (0.5 if now >= 0.26 else 0.0), spin) for now, spin in signal]
    estimator = SpinBitRttEstimator()
    samples = feed(estimator, paused)
    assert any(sample.reason == "too long (sender paused)" for sample in estimator.samples)
    assert max(samples) < 0.06


def test_handshake_rtt_as_reference_rejects_an_early_spurious_edge():
    estimator = SpinBitRttEstimator(initial_rtt=0.050)
    assert estimator.observe(short(False), 0.000) is None
    assert estimator.observe(short(True), 0.050) is None  # first edge starts the clock
    assert estimator.observe(short(False), 0.052) is None  # 2 ms: reordering, not an RTT
    assert estimator.observe(short(True), 0.053) is None
    assert estimator.observe(short(False), 0.100) == pytest.approx(0.050)


def test_random_spin_is_judged_unusable():
    rng = random.Random(7)
    estimator = SpinBitRttEstimator(initial_rtt=0.050)
    for index in range(500):
        estimator.observe(short(rng.random() < 0.5), index * 0.001)
    assert estimator.spin_usable is False


def test_constant_spin_yields_no_estimate():
    estimator = SpinBitRttEstimator()
    for index in range(500):
        estimator.observe(short(False), index * 0.001)
    assert estimator.rtt is None and estimator.spin_usable is None


def test_a_new_dcid_restarts_the_edge_clock():
    estimator = SpinBitRttEstimator()
    estimator.observe(short(False), 0.0)
    estimator.observe(short(True), 0.05)
    # The endpoint switched CID and reset its spin to 0: not an edge of the old signal.
    assert estimator.observe(short(False, dcid=b"\x02" * 8), 0.06) is None
    assert estimator.observe(short(True, dcid=b"\x02" * 8), 0.07) is None
    assert estimator.observe(short(False, dcid=b"\x02" * 8), 0.12) == pytest.approx(0.05)


def test_long_headers_and_backwards_clocks_are_ignored():
    estimator = SpinBitRttEstimator()
    assert estimator.observe(long(PacketType.HANDSHAKE), 0.0) is None
    estimator.observe(short(False), 1.0)
    assert estimator.observe(short(True), 0.5) is None
    assert estimator.edges == 0


def test_observers_measure_a_real_aioquic_exchange(handshake):
    observer = HandshakeRttObserver()
    spin = SpinBitRttEstimator()
    for datagram in handshake.datagrams:
        for header in parse_datagram(datagram.payload, 8):
            observer.observe(header, from_client=datagram.from_client, now=datagram.time)
            if datagram.from_client:
                spin.observe(header, datagram.time)
    path_rtt = 2 * ONE_WAY_DELAY
    # The relay is the observer: each component spans one relay->peer->relay round trip.
    assert path_rtt <= observer.handshake_rtt < path_rtt + 0.1
    assert spin.rtt is not None and len([s for s in spin.samples if s.accepted]) >= 3
    assert path_rtt <= spin.rtt < path_rtt + 0.1
