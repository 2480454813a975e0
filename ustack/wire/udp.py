"""UDP headers (RFC 768, with RFC 1122 4.1.3.4 for the checksum rules).

Owns the 8-byte header and its checksum over the IPv4 pseudo header, the
header and the data.  A received checksum of zero means the sender did not
compute one and is accepted; a computed checksum of zero is sent as 0xFFFF.
"""

import struct
from typing import NamedTuple

from ustack.wire.checksum import checksum, pseudo_sum
from ustack.wire.drop import Drop
from ustack.wire.ipv4 import PROTO_UDP
from ustack.wire.types import Buffer, WritableBuffer, tuple_new

UDP_HLEN = 8
UDP_MAX_LEN = 0xFFFF

_HDR = struct.Struct("!HHHH")
_CSUM = struct.Struct("!H")
_CSUM_OFF = 6


class UdpHeader(NamedTuple):
    sport: int
    dport: int
    length: int
    """The UDP length field: header plus data, at most the IP payload length."""
    checksum: int


def parse_udp(
    buf: Buffer, off: int, length: int, src: int, dst: int, verify_checksum: bool = True
) -> UdpHeader | Drop:
    """Validate the UDP datagram at buf[off:]; `length` is the IP payload length.

    The data is buf[off + 8 : off + h.length] (the UDP length, which may be
    shorter than the IP payload).  `src` and `dst` are the IPv4 addresses for
    the pseudo header.  Pass verify_checksum=False when the device vouched for
    the checksum (or left it partial).
    """
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"datagram range {off}+{length} outside a buffer of {len(buf)} bytes")
    if length < UDP_HLEN:
        return Drop.UDP_TRUNCATED
    sport, dport, ulen, csum = _HDR.unpack_from(buf, off)
    if ulen < UDP_HLEN or ulen > length:
        return Drop.UDP_BAD_LENGTH
    if (
        verify_checksum
        and csum != 0
        and checksum(buf, off, ulen, pseudo_sum(src, dst, PROTO_UDP, ulen)) != 0
    ):
        return Drop.UDP_BAD_CHECKSUM
    return tuple_new(UdpHeader, (sport, dport, ulen, csum))


def emit_udp(
    buf: WritableBuffer,
    off: int,
    *,
    sport: int,
    dport: int,
    payload_len: int,
    src: int,
    dst: int,
) -> int:
    """Write the 8-byte header at buf[off:] with its checksum; return 8.

    The payload_len bytes of data must already be in place after the header.
    `src` and `dst` are the IPv4 addresses of the pseudo header.
    """
    ulen = UDP_HLEN + payload_len
    if payload_len < 0 or ulen > UDP_MAX_LEN:
        raise ValueError(
            f"UDP payload must be 0..{UDP_MAX_LEN - UDP_HLEN} bytes, got {payload_len}"
        )
    if off < 0 or off + ulen > len(buf):
        raise ValueError(
            f"a UDP datagram of {ulen} bytes at {off} does not fit a buffer of {len(buf)} bytes"
        )
    try:
        _HDR.pack_into(buf, off, sport, dport, ulen, 0)
        csum = checksum(buf, off, ulen, pseudo_sum(src, dst, PROTO_UDP, ulen))
    except (struct.error, OverflowError) as exc:
        raise ValueError(
            f"bad UDP field (ports are 0..65535, addresses 32-bit ints): {exc}"
        ) from exc
    # RFC 768: an all-zero checksum field means "none", so send 0 as its other form.
    _CSUM.pack_into(buf, off + _CSUM_OFF, csum or 0xFFFF)
    return UDP_HLEN
