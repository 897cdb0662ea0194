"""The seam every middlebox function plugs into.

A function (firewall, rate limiter, NAT, load balancer) is one class. It keeps its share of a
connection's state in its own typed dataclass (`State`), stored in the `Connection` slot
named after the function and serialisable through `qasm.codec` (no live objects), so a
replica elsewhere can carry on from it. The hop's `Middlebox` calls the same hooks on every
configured function, in the configured order, and sends what they return:

- `admit` / `inspect`: may a new connection open (the firewall's Initial and SNI rules);
- `path_added` / `path_retired` / `connection_ended`: a path joined or left a connection, or
  the connection ended (idle past the timeout *or* evicted at the table's bound: the same
  hook, so nothing a function holds can leak by one route and not the other);
- `translate`: how packets of a path are rewritten towards the service and back;
- `switch_rules`, `arp_addresses`, `service_path`: what the hop's switch needs at connect,
  which addresses the hop answers ARP for, and which path a packet from the service side
  belongs to when a function rewrote its addresses.

Functions are pure: no I/O, no clock (every hook that needs time takes `now`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from qasm.controller.events import NatMapping, Reason, Refusal
from qasm.controller.messages import MeterRule, SwitchMessage
from qasm.flow import FlowKey

SetFields = tuple[tuple[str, str | int], ...]


@dataclass
class Change:
    """What a hook changed: switch messages to send and NAT mappings made or given back."""

    messages: list[SwitchMessage] = field(default_factory=list)
    nat_allocated: list[NatMapping] = field(default_factory=list)
    nat_released: list[NatMapping] = field(default_factory=list)
    backend: str | None = None
    refusal: Refusal | None = None

    def merge(self, other: Change) -> Change:
        self.messages += other.messages
        self.nat_allocated += other.nat_allocated
        self.nat_released += other.nat_released
        self.backend = other.backend or self.backend
        self.refusal = self.refusal or other.refusal
        return self


# Not frozen: one per function and admitted path (see qasm/controller/messages.py).
@dataclass(slots=True)
class Translation:
    """How one function rewrites a path's packets.

    `service_flow` is the client→service flow as it leaves this function (the next
    function, and the service, see this one); `to_service` / `to_client` are the OpenFlow
    fields to set on each direction; `service_port` is where the service side of the path is
    on the switch when the function decides it (a load balancer's backend), else None.
    """

    service_flow: FlowKey
    to_service: SetFields = ()
    to_client: SetFields = ()
    service_port: int | None = None


class MiddleboxFunction:
    """Defaults: a function that keeps no state and rewrites nothing."""

    name: ClassVar[str]
    State: ClassVar[type | None] = None

    def implements(self, hook: str) -> bool:
        """Whether this function's class has its own `hook`: the defaults below change
        nothing, so a hop need not call them."""
        return getattr(type(self), hook) is not getattr(MiddleboxFunction, hook)

    def state(self, connection) -> object:
        """This function's typed state of `connection`, created on first use."""
        state = getattr(connection, self.name)
        if state is None:
            state = self.State()
            setattr(connection, self.name, state)
        return state

    def switch_rules(self) -> list[SwitchMessage]:
        return []

    def arp_addresses(self) -> dict[str, str]:
        """IPv4 address → MAC this function makes the hop answer ARP for."""
        return {}

    def admit(self, initial_problem: str | None) -> Refusal | None:
        """Whether a new connection may open with its first client datagram, given why that
        datagram is not a QUIC client Initial (None: it is one; parsed once per packet)."""
        return None

    def opened(self, connection, payload: bytes) -> None:
        """A connection opened (after every function admitted it)."""

    def reads_first_packets(self) -> bool:
        """Whether the function decides on a connection from its first datagrams' contents
        (so the hop cannot admit it ahead of them, on its agent's word)."""
        return False

    def inspect(self, connection, payload: bytes) -> Refusal | Reason | None:
        """A later client datagram of a connection this function is still deciding on:
        a Refusal ends the connection, a Reason says it is still pending (no rules yet) or
        decided, None means nothing to decide."""
        return None

    def pending(self, connection) -> bool:
        """Whether the function still decides on the connection (no fast path until then)."""
        return False

    def service_path(self, flow: FlowKey) -> FlowKey | Refusal | None:
        """The client→service path of a packet from the service side whose addresses this
        function rewrote, a Refusal if it should have and cannot, None if not its packet."""
        return None

    def path_added(self, connection, path: FlowKey, now: float) -> Change:
        return Change()

    def path_retired(self, connection, path: FlowKey) -> Change:
        return Change()

    def connection_ended(self, connection) -> Change:
        return Change()

    def translate(self, connection, path: FlowKey, flow: FlowKey) -> Translation:
        """`flow` is `path` (the client→service 5-tuple the connection knows) as the
        functions before this one left it."""
        return Translation(flow)

    def meter(self, connection) -> int | None:
        """The meter the client's packets of `connection` go through, if any."""
        return None

    def meter_rule(self, meter_id: int) -> MeterRule | None:
        """The meter to install on a datapath before its first rule that uses it."""
        return None
