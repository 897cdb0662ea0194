"""The Client Agent: what the client tells the Tracking Agent, built from aioquic's state.

Sans-I/O: it builds sealed datagrams and checks replies; the client application sends them.
It reads aioquic internals measured on 1.7.2 (../shared/AIOQUIC.md): `_peer_cid` is the DCID
in use towards the server and `_peer_cid_available[0]` the one `change_connection_id()` takes
next, so the agent can announce a CID before the connection starts using it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qasm.agents.messages import (
    Ack,
    Address,
    Admit,
    AgentMessageError,
    Announce,
    Retire,
    open_sealed,
    seal,
)

if TYPE_CHECKING:
    from aioquic.quic.connection import QuicConnection


def spare_peer_cid(quic: QuicConnection) -> bytes | None:
    """The server CID aioquic's change_connection_id() takes next, or None when it holds no
    spare one (the only place that reads aioquic's list of them)."""
    return quic._peer_cid_available[0].cid if quic._peer_cid_available else None


class ClientAgent:
    def __init__(self, client: str, key: bytes) -> None:
        self.client = client
        self._key = key
        self._counter = 0
        self.messages_sent = 0
        self.bytes_sent = 0

    def _next_counter(self) -> int:
        self._counter += 1
        return self._counter

    def _sealed(self, message) -> bytes:
        datagram = seal(message, self._key)
        self.messages_sent += 1
        self.bytes_sent += len(datagram)
        return datagram

    @staticmethod
    def next_cid(quic: QuicConnection, new_cid: bool) -> bytes:
        """The DCID the connection will send with after migrating."""
        if not new_cid:
            return quic._peer_cid.cid
        spare = spare_peer_cid(quic)
        if spare is None:
            raise AgentMessageError("no spare server connection ID to migrate to")
        return spare

    def announce(
        self,
        quic: QuicConnection,
        old: Address,
        new: Address,
        new_cid: bool,
        retire: Address | None = None,
    ) -> tuple[int, bytes]:
        return self.announce_cids(
            quic._peer_cid.cid, self.next_cid(quic, new_cid), old, new, retire
        )

    def announce_cids(
        self,
        connection_cid: bytes,
        next_cid: bytes,
        old: Address,
        new: Address,
        retire: Address | None = None,
    ) -> tuple[int, bytes]:
        """The same announcement from CIDs an observer read on the wire (the host agent,
        qasm/agents/host.py), for clients whose stack it cannot read."""
        counter = self._next_counter()
        message = Announce(self.client, counter, connection_cid, next_cid, old, new, retire)
        return counter, self._sealed(message)

    def retire(self, quic: QuicConnection, path: Address) -> tuple[int, bytes]:
        return self.retire_cid(quic._peer_cid.cid, path)

    def retire_cid(self, connection_cid: bytes, path: Address) -> tuple[int, bytes]:
        counter = self._next_counter()
        return counter, self._sealed(Retire(self.client, counter, connection_cid, path))

    def admit(self, path: Address) -> tuple[int, bytes]:
        """Asks the hops to admit a connection about to open on `path` (its local address)."""
        counter = self._next_counter()
        return counter, self._sealed(Admit(self.client, counter, path))

    def read_ack(self, datagram: bytes, counter: int) -> Ack:
        """The Tracking Agent's verified answer to `counter`."""
        message = open_sealed(datagram, self._key)
        if not isinstance(message, Ack) or message.client != self.client:
            raise AgentMessageError("reply: expected an ack for this client")
        if message.counter != counter:
            raise AgentMessageError(f"reply: ack for counter {message.counter}, expected {counter}")
        return message
