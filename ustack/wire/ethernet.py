"""Ethernet II framing: the 14-byte header (IEEE 802.3 clause 3.2.6, RFC 894).

Owns the destination/source/type header and MAC address text helpers.  No
FCS (the TAP device neither delivers nor expects it), no minimum-size
padding (a TAP accepts short frames), no VLAN tags: tagged frames and
802.3 length-field frames are dropped at parse.
"""

import struct
from typing import NamedTuple

from ustack.wire.drop import Drop
from ustack.wire.types import Buffer, WritableBuffer, tuple_new

ETH_HLEN = 14
ETH_ALEN = 6

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
"""IEEE 802.1Q customer tag."""
ETHERTYPE_QINQ = 0x88A8
"""IEEE 802.1ad service tag."""
ETHERTYPE_MIN = 0x0600
"""IEEE 802.3 clause 3.2.6: values below this are a length, not a type."""

BROADCAST_MAC = b"\xff" * ETH_ALEN

_HDR = struct.Struct("!6s6sH")


class EthernetHeader(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int


def parse_ethernet(buf: Buffer, off: int, length: int) -> EthernetHeader | Drop:
    """Parse the header at buf[off:]; `length` is the number of frame bytes there.

    The payload starts at off + ETH_HLEN and spans length - ETH_HLEN bytes
    (which may include link padding beyond the network-layer datagram).
    """
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"frame range {off}+{length} outside a buffer of {len(buf)} bytes")
    if length < ETH_HLEN:
        return Drop.ETH_TRUNCATED
    dst, src, ethertype = _HDR.unpack_from(buf, off)
    if ethertype < ETHERTYPE_MIN:
        return Drop.ETH_LENGTH_FIELD
    if ethertype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ):
        return Drop.ETH_VLAN
    return tuple_new(EthernetHeader, (dst, src, ethertype))


def emit_ethernet(buf: WritableBuffer, off: int, dst: bytes, src: bytes, ethertype: int) -> int:
    """Write an Ethernet II header at buf[off:]; return ETH_HLEN."""
    if len(dst) != ETH_ALEN or len(src) != ETH_ALEN:
        raise ValueError(f"MAC addresses must be 6 bytes, got dst {dst!r} and src {src!r}")
    if not ETHERTYPE_MIN <= ethertype <= 0xFFFF:
        raise ValueError(f"ethertype must be in 0x0600..0xffff, got {ethertype:#x}")
    if off < 0 or off + ETH_HLEN > len(buf):
        raise ValueError(f"no room for a {ETH_HLEN}-byte header at {off} in {len(buf)} bytes")
    _HDR.pack_into(buf, off, dst, src, ethertype)
    return ETH_HLEN


def mac_to_str(mac: bytes) -> str:
    """b"\\x02\\x00\\x00\\x00\\x00\\x01" -> "02:00:00:00:00:01"."""
    if len(mac) != ETH_ALEN:
        raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}: {mac!r}")
    return mac.hex(":")


_HEX = frozenset("0123456789abcdefABCDEF")


def mac_from_str(text: str) -> bytes:
    """ "02:00:00:00:00:01" (or with "-" separators) -> 6 bytes."""
    sep = "-" if "-" in text else ":"
    parts = text.split(sep)
    if len(parts) != ETH_ALEN or any(len(p) != 2 or not _HEX.issuperset(p) for p in parts):
        raise ValueError(
            f"not a MAC address: {text!r}; expected six two-digit hex groups like 02:00:00:00:00:01"
        )
    return bytes(int(p, 16) for p in parts)
