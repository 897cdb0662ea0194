"""The firewall's admission rule for a new connection (RFC 9312 §3.1.2, §4.7).

A new client→service 5-tuple is admitted only when its first datagram starts with a QUIC
client Initial of a version the middlebox knows, in a datagram of at least 1200 bytes
(RFC 9000 §14.1). RFC 9312 §3.1.2 warns that first-byte bits may change meaning across
versions, so the version is read first and the packet type only interpreted for known ones.
The rest of the firewall (service→client only on admitted paths, drop everything else) is
in the pipeline, because which paths count as admitted depends on the variant.

Optionally the firewall also decides on the server name (SNI) of the decrypted ClientHello
(`SniPolicy`): Initial packets are protected with keys anyone can derive from the DCID
(RFC 9001 §5.2), so an on-path middlebox can read the ClientHello (RFC 9312 §3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from qasm.wire.errors import WireError
from qasm.wire.header import HeaderForm, PacketType, parse_datagram

# RFC 9000 §14.1: a client MUST expand datagrams carrying Initial packets to >= 1200 bytes.
MIN_INITIAL_DATAGRAM = 1200


def client_initial_problem(payload: bytes) -> str | None:
    """None if `payload` starts with a QUIC v1/v2 client Initial, else why it does not."""
    try:
        first = parse_datagram(payload, short_dcid_length=0)[0]
    except WireError as exc:
        return f"not a QUIC packet ({exc})"
    if first.form is HeaderForm.SHORT:
        return "short header (not a connection's first packet)"
    if first.packet_type is None:
        return f"long header of unknown version 0x{first.version:08x}"
    if first.packet_type is not PacketType.INITIAL:
        return f"long header type {first.packet_type}, not Initial"
    if len(payload) < MIN_INITIAL_DATAGRAM:
        return f"Initial in a {len(payload)}-byte datagram, below {MIN_INITIAL_DATAGRAM}"
    return None


@dataclass(frozen=True)
class SniPolicy:
    """Allow/deny lists for the server name a client asks for in its ClientHello.

    A pattern is a host name, or `*.` and a domain, which matches that domain's subdomains
    (not the domain itself), as in certificates. Names compare case-insensitively, without a
    trailing dot. The deny list wins; a non-empty allow list admits only what it matches, so
    a ClientHello without SNI is then refused too.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def problem(self, sni: str | None) -> str | None:
        """None if a connection asking for `sni` may open, else why not."""
        name = sni.rstrip(".").lower() if sni else None
        if name is not None:
            for pattern in self.deny:
                if sni_matches(pattern, name):
                    return f"SNI {sni!r} matches sni_deny {pattern!r}"
        if self.allow and (name is None or not any(sni_matches(p, name) for p in self.allow)):
            return f"SNI {sni!r} not in sni_allow" if sni else "no SNI, and sni_allow is set"
        return None


def sni_matches(pattern: str, name: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern
