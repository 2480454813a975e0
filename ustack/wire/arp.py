"""ARP packets for IPv4 over Ethernet (RFC 826).

Owns the 28-byte packet layout: hardware type 1, protocol type 0x0800,
address lengths 6 and 4, operation 1 (request) or 2 (reply).  Anything else
is dropped at parse.  What a request or reply means (cache updates, RFC 5227
probes with a zero sender address, gratuitous ARP) belongs to the stack.
IPv4 addresses are host-order integers, as everywhere in ustack.
"""

import struct
from typing import NamedTuple

from ustack.wire.drop import Drop
from ustack.wire.types import Buffer, WritableBuffer, tuple_new

ARP_LEN = 28

HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800
OP_REQUEST = 1
OP_REPLY = 2

_PKT = struct.Struct("!HHBBH6sI6sI")


class ArpPacket(NamedTuple):
    op: int
    sha: bytes
    spa: int
    tha: bytes
    tpa: int


def parse_arp(buf: Buffer, off: int, length: int) -> ArpPacket | Drop:
    """Parse the ARP packet at buf[off:]; `length` is the bytes available there."""
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"packet range {off}+{length} outside a buffer of {len(buf)} bytes")
    if length < ARP_LEN:
        return Drop.ARP_TRUNCATED
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _PKT.unpack_from(buf, off)
    if htype != HTYPE_ETHERNET:
        return Drop.ARP_BAD_HTYPE
    if ptype != PTYPE_IPV4:
        return Drop.ARP_BAD_PTYPE
    if hlen != 6 or plen != 4:
        return Drop.ARP_BAD_LENGTHS
    if op != OP_REQUEST and op != OP_REPLY:
        return Drop.ARP_BAD_OP
    return tuple_new(ArpPacket, (op, sha, spa, tha, tpa))


def emit_arp(
    buf: WritableBuffer, off: int, op: int, sha: bytes, spa: int, tha: bytes, tpa: int
) -> int:
    """Write an IPv4-over-Ethernet ARP packet at buf[off:]; return ARP_LEN."""
    if op != OP_REQUEST and op != OP_REPLY:
        raise ValueError(f"ARP op must be {OP_REQUEST} (request) or {OP_REPLY} (reply), got {op}")
    if len(sha) != 6 or len(tha) != 6:
        raise ValueError(f"ARP hardware addresses must be 6 bytes, got sha {sha!r}, tha {tha!r}")
    if off < 0 or off + ARP_LEN > len(buf):
        raise ValueError(f"no room for a {ARP_LEN}-byte ARP packet at {off} in {len(buf)} bytes")
    try:
        _PKT.pack_into(buf, off, HTYPE_ETHERNET, PTYPE_IPV4, 6, 4, op, sha, spa, tha, tpa)
    except struct.error as exc:
        raise ValueError(f"bad ARP field (spa/tpa are 32-bit ints): {exc}") from exc
    return ARP_LEN
