"""ICMP messages (RFC 792), with the error rules of RFC 1122 3.2.2 and RFC 1812 4.3.2.3.

Owns the 8-byte header, its checksum over the whole message, and the body
of error messages (quoting the offending datagram, and reading the quote
in one we receive).  Deciding whether an error may be sent at all (never
about an ICMP error, a broadcast, a non-first fragment, ...; RFC 1122
3.2.2) and rate limiting belong to the stack.
"""

import struct
from typing import NamedTuple

from ustack.wire.checksum import checksum
from ustack.wire.drop import Drop
from ustack.wire.types import Buffer, WritableBuffer, tuple_new

ICMP_HLEN = 8

# types
ECHO_REPLY = 0
DEST_UNREACH = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11

# destination unreachable codes (RFC 792; FRAG_NEEDED carries the MTU, RFC 1191)
UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PROTOCOL = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4

# time exceeded codes
EXCEEDED_TTL = 0
EXCEEDED_REASSEMBLY = 1

ERROR_DATAGRAM_MAX = 576
"""RFC 1812 4.3.2.3: an ICMP error datagram should not exceed 576 bytes."""
ERROR_QUOTE_MAX = ERROR_DATAGRAM_MAX - 20 - ICMP_HLEN
"""Bytes of the offending datagram an error quotes: 576 minus our IPv4 and ICMP headers."""

_HDR = struct.Struct("!BBHI")
_QUOTED_IPV4 = struct.Struct("!BxHxxHxBxxII")  # ver/ihl, total length, frag, proto, src, dst
_CSUM = struct.Struct("!H")
_CSUM_OFF = 2


class IcmpHeader(NamedTuple):
    type: int
    code: int
    checksum: int
    rest: int
    """The 32-bit rest of header: ident << 16 | seq for echo, the MTU for frag-needed."""


def parse_icmp(buf: Buffer, off: int, length: int) -> IcmpHeader | Drop:
    """Parse and verify the ICMP message at buf[off:]; `length` is the whole message.

    The body (echo data or quoted datagram) is buf[off + 8 : off + length].
    """
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"message range {off}+{length} outside a buffer of {len(buf)} bytes")
    if length < ICMP_HLEN:
        return Drop.ICMP_TRUNCATED
    if checksum(buf, off, length) != 0:
        return Drop.ICMP_BAD_CHECKSUM
    return tuple_new(IcmpHeader, _HDR.unpack_from(buf, off))


class QuotedDatagram(NamedTuple):
    """The start of the datagram an ICMP error quotes: its IPv4 header, then transport bytes."""

    src: int
    dst: int
    proto: int
    total_len: int
    """Total length of the original datagram (more than what is quoted)."""
    l4_off: int
    """Where the quoted transport header starts in the buffer."""
    l4_len: int
    """How many bytes of it are quoted (RFC 792: at least 8)."""


def parse_quoted_ipv4(buf: Buffer, off: int, length: int) -> QuotedDatagram | None:
    """Read the IPv4 header that an ICMP error body at buf[off : off + length] quotes.

    The quote is the datagram as the router saw it, cut short: its checksum
    and total length are not checked against the quote.  None for a quote
    that is not IPv4, has a header length below 20 or beyond the quote, or
    is a fragment other than the first (its transport header is elsewhere).
    """
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"quote range {off}+{length} outside a buffer of {len(buf)} bytes")
    if length < 20:
        return None
    vihl, total_len, frag, proto, src, dst = _QUOTED_IPV4.unpack_from(buf, off)
    hlen = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or hlen < 20 or hlen > length or frag & 0x1FFF:
        return None
    return QuotedDatagram(src, dst, proto, total_len, off + hlen, length - hlen)


def emit_icmp(
    buf: WritableBuffer, off: int, type: int, code: int, rest: int, payload_len: int
) -> int:
    """Write the 8-byte header at buf[off:] and checksum it with its payload; return 8.

    The payload_len bytes of body must already be in place after the header.
    """
    if off < 0 or payload_len < 0 or off + ICMP_HLEN + payload_len > len(buf):
        raise ValueError(
            f"an ICMP message of {ICMP_HLEN}+{payload_len} bytes at {off} "
            f"does not fit a buffer of {len(buf)} bytes"
        )
    try:
        _HDR.pack_into(buf, off, type, code, 0, rest)
    except struct.error as exc:
        raise ValueError(f"bad ICMP field (type, code are 8-bit, rest is 32-bit): {exc}") from exc
    _CSUM.pack_into(buf, off + _CSUM_OFF, checksum(buf, off, ICMP_HLEN + payload_len))
    return ICMP_HLEN


def emit_icmp_error(
    buf: WritableBuffer, off: int, type: int, code: int, original: Buffer, rest: int = 0
) -> int:
    """Write a complete ICMP error message quoting `original`; return its length.

    `original` is the offending IP datagram from its header on (without link
    padding); at most ERROR_QUOTE_MAX bytes of it are quoted so that the
    error datagram stays within 576 bytes (RFC 1812 4.3.2.3).
    """
    quoted = min(len(original), ERROR_QUOTE_MAX)
    if off < 0 or off + ICMP_HLEN + quoted > len(buf):
        raise ValueError(
            f"an ICMP error of {ICMP_HLEN}+{quoted} bytes at {off} "
            f"does not fit a buffer of {len(buf)} bytes"
        )
    start = off + ICMP_HLEN
    buf[start : start + quoted] = original[:quoted]
    return emit_icmp(buf, off, type, code, rest, quoted) + quoted


def emit_dest_unreachable(
    buf: WritableBuffer, off: int, code: int, original: Buffer, mtu: int = 0
) -> int:
    """Write a destination-unreachable message quoting `original`; return its length.

    `mtu` is the next-hop MTU, only meaningful (and only allowed non-zero)
    with code UNREACH_FRAG_NEEDED (RFC 1191 section 4).
    """
    if mtu and code != UNREACH_FRAG_NEEDED:
        raise ValueError(f"an MTU only goes with code {UNREACH_FRAG_NEEDED} (frag needed)")
    if not 0 <= mtu <= 0xFFFF:
        raise ValueError(f"MTU must be in 0..65535, got {mtu}")
    return emit_icmp_error(buf, off, DEST_UNREACH, code, original, mtu)
