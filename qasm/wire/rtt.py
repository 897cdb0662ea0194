"""Passive RTT observers of RFC 9312 §3.8, fed with parsed headers and the caller's clock.

`HandshakeRttObserver` (§3.8.1) times the Initial and Handshake flights of one connection
seen in both directions. `SpinBitRttEstimator` (§3.8.2) times spin-bit edges of short-header
packets in *one* direction of one flow and rejects samples the way §3.8.2 suggests: against
a reference RTT (the handshake RTT when known, else the median of recent accepted samples),
too-short samples are reordering artefacts and too-long ones application or flow-control
pauses, and a spin signal that is mostly rejected is reported as not usable (endpoints that
do not spin may set the bit randomly, RFC 9000 §17.4).

Both are sans-I/O: `now` (seconds, monotonic) is always an argument.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from qasm.wire.header import HeaderForm, PacketHeader, PacketType


class HandshakeRttObserver:
    """RFC 9312 §3.8.1 handshake RTT of one connection, from a bidirectional observer.

    - observer->server component: first client Initial (ClientHello) to first server
      Initial (ServerHello). A Retry restarts it: the client's next Initial is the one the
      server will answer with a ServerHello (RFC 9000 §17.2.5).
    - observer->client component: first server Handshake packet to the first client
      Handshake packet after it.
    The handshake RTT is their sum. 0-RTT packets are ignored, as §3.8.1 advises.
    """

    __slots__ = (
        "_client_initial_at",
        "_server_handshake_at",
        "server_side_rtt",
        "client_side_rtt",
    )

    def __init__(self) -> None:
        self._client_initial_at: float | None = None
        self._server_handshake_at: float | None = None
        self.server_side_rtt: float | None = None
        self.client_side_rtt: float | None = None

    @property
    def handshake_rtt(self) -> float | None:
        if self.server_side_rtt is None or self.client_side_rtt is None:
            return None
        return self.server_side_rtt + self.client_side_rtt

    def observe(self, header: PacketHeader, *, from_client: bool, now: float) -> None:
        kind = header.packet_type
        if from_client:
            if kind is PacketType.INITIAL and self._client_initial_at is None:
                self._client_initial_at = now
            elif (
                kind is PacketType.HANDSHAKE
                and self._server_handshake_at is not None
                and self.client_side_rtt is None
            ):
                self.client_side_rtt = max(0.0, now - self._server_handshake_at)
            return
        if kind is PacketType.RETRY and self.server_side_rtt is None:
            self._client_initial_at = None
        elif (
            kind is PacketType.INITIAL
            and self._client_initial_at is not None
            and self.server_side_rtt is None
        ):
            self.server_side_rtt = max(0.0, now - self._client_initial_at)
        elif kind is PacketType.HANDSHAKE and self._server_handshake_at is None:
            self._server_handshake_at = now


@dataclass(frozen=True, slots=True)
class SpinSample:
    """One edge-to-edge interval and whether it was kept as an RTT sample."""

    at: float
    interval: float
    accepted: bool
    reason: str  # "accepted", "too short (reordering)", "too long (sender paused)", ...


# Rejection thresholds, relative to the reference RTT. A reordered packet across a flip
# produces two extra edges within a few packet gaps, far below one RTT; an
# application-limited sender stretches an interval to several RTTs (RFC 9312 §3.8.2, "QoF
# rejects component RTTs significantly higher than RTTs over the history of the flow").
DEFAULT_SHORT_FRACTION = 0.25
DEFAULT_LONG_FACTOR = 3.0
DEFAULT_HISTORY = 16
DEFAULT_SAMPLE_LOG = 256
# A packet reordered across a flip makes two spurious edges; more than that between two
# genuine edges means the bit is not spinning once per RTT (e.g. set at random).
MAX_SPURIOUS_EDGES = 2
# Below this many edges the spin signal cannot be judged random or not.
MIN_EDGES_TO_JUDGE = 8


class SpinBitRttEstimator:
    """Spin-bit RTT of one flow direction (RFC 9312 §3.8.2, RFC 9000 §17.4).

    Feed every short-header packet of the direction with `observe(header, now)`; it returns
    the RTT sample when the packet is an accepted edge, else None.

    Edge bookkeeping: the current spin value follows every packet, so a reordered packet and
    the one after it both look like edges; the edge *time* advances only on an edge that is
    not too short, so the spurious pair is measured against the last genuine edge and
    rejected, and the next genuine edge is measured correctly. A too-long interval is
    rejected as a sample but still marks a genuine edge. A change of DCID restarts the
    estimator: endpoints reset their spin value on a new CID (RFC 9000 §17.4).
    """

    __slots__ = (
        "initial_rtt",
        "short_fraction",
        "long_factor",
        "_history",
        "_value",
        "_edge_at",
        "_dcid",
        "_last_now",
        "_min_rtt",
        "_spurious",
        "samples",
        "edges",
        "rejected",
    )

    def __init__(
        self,
        *,
        initial_rtt: float | None = None,
        short_fraction: float = DEFAULT_SHORT_FRACTION,
        long_factor: float = DEFAULT_LONG_FACTOR,
        history: int = DEFAULT_HISTORY,
        sample_log: int = DEFAULT_SAMPLE_LOG,
    ) -> None:
        self.initial_rtt = initial_rtt
        self.short_fraction = short_fraction
        self.long_factor = long_factor
        self._history: deque[float] = deque(maxlen=history)
        self._value: bool | None = None
        self._edge_at: float | None = None
        self._dcid: bytes | None = None
        self._last_now: float | None = None
        self._min_rtt: float | None = None
        self._spurious = 0  # too-short edges since the last genuine edge
        # The last `sample_log` judgements, for inspection; bounded so a long flow does not
        # grow the estimator.
        self.samples: deque[SpinSample] = deque(maxlen=sample_log)
        self.edges = 0
        self.rejected = 0

    @property
    def reference_rtt(self) -> float | None:
        """The median of recent accepted samples, else the handshake RTT it was given."""
        if self._history:
            return statistics.median(self._history)
        return self.initial_rtt

    @property
    def rtt(self) -> float | None:
        """The current estimate: median of recent accepted samples (None before any)."""
        return statistics.median(self._history) if self._history else None

    @property
    def min_rtt(self) -> float | None:
        return self._min_rtt

    @property
    def spin_usable(self) -> bool | None:
        """False when most edges are rejected (a random spin), None while too few edges.

        A constant spin (an endpoint that does not participate) yields no edges at all, so
        `rtt` stays None and this stays None.
        """
        if self.edges < MIN_EDGES_TO_JUDGE:
            return None
        return self.rejected * 2 < self.edges

    def observe(self, header: PacketHeader, now: float) -> float | None:
        if header.form is not HeaderForm.SHORT:
            return None
        if self._last_now is not None and now < self._last_now:
            return None  # a clock going backwards says nothing about the spin signal
        self._last_now = now
        if header.dcid != self._dcid:
            self._dcid = header.dcid
            self._value = None
            self._edge_at = None
        spin = bool(header.spin_bit)
        if self._value is None:
            self._value = spin
            return None
        if spin == self._value:
            return None
        self._value = spin
        if self._edge_at is None:
            self._edge_at = now  # the first edge starts the clock; it is not a sample
            return None
        return self._judge_edge(now)

    def _judge_edge(self, now: float) -> float | None:
        assert self._edge_at is not None
        interval = now - self._edge_at
        self.edges += 1
        reference = self.reference_rtt
        if reference is not None and interval < self.short_fraction * reference:
            self._spurious += 1
            self._record(now, interval, False, "too short (reordering)")
            return None
        self._edge_at = now
        spurious, self._spurious = self._spurious, 0
        if spurious > MAX_SPURIOUS_EDGES:
            # The first edge past the threshold of a noisy signal; timing it would pull the
            # reference down towards the packet gap.
            self._record(now, interval, False, "noisy (spin not once per RTT)")
            return None
        if reference is not None and interval > self.long_factor * reference:
            self._record(now, interval, False, "too long (sender paused)")
            return None
        self._history.append(interval)
        if self._min_rtt is None or interval < self._min_rtt:
            self._min_rtt = interval
        self._record(now, interval, True, "accepted")
        return interval

    def _record(self, now: float, interval: float, accepted: bool, reason: str) -> None:
        if not accepted:
            self.rejected += 1
        self.samples.append(SpinSample(at=now, interval=interval, accepted=accepted, reason=reason))
