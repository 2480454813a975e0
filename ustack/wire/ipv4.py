"""IPv4 headers (RFC 791, with the host requirements of RFC 1122 section 3.2.1).

Owns header validation at receive, the 20-byte header at send (ustack never
sends options), and address text helpers.  Options in received headers are
skipped by IHL without being interpreted.  Reassembly, routing and the
source-address rules of RFC 1122 3.2.1.3 (martians) belong to the stack,
which knows the interface configuration.

IPv4 addresses are host-order integers everywhere in ustack.
"""

import struct
from socket import AF_INET as _AF_INET
from socket import inet_ntoa as _inet_ntoa
from socket import inet_pton as _inet_pton
from typing import NamedTuple

from ustack.wire.checksum import checksum
from ustack.wire.drop import Drop
from ustack.wire.types import Buffer, WritableBuffer, tuple_new

IPV4_HLEN = 20
"""Header length without options: the only length ustack emits."""
IPV4_MAX_LEN = 0xFFFF

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

DEFAULT_TTL = 64
"""RFC 1700's recommended default, the one Linux uses."""

_FLAG_RESERVED = 0x8000
_FLAG_DF = 0x4000
_FLAG_MF = 0x2000
_FRAG_MASK = 0x1FFF

# version/ihl, tos, total length, ident, flags/fragment, ttl, proto, checksum, src, dst
_HDR = struct.Struct("!BBHHHBBHII")
_U32 = struct.Struct("!I")
_CSUM = struct.Struct("!H")
_CSUM_OFF = 10


class IPv4Header(NamedTuple):
    header_len: int
    """Bytes, including options (IHL * 4)."""
    tos: int
    total_len: int
    ident: int
    df: bool
    mf: bool
    frag_off: int
    """Offset of this fragment's data in the datagram, in bytes (field * 8)."""
    ttl: int
    proto: int
    src: int
    dst: int

    @property
    def payload_len(self) -> int:
        """Bytes of payload after the header (link padding excluded)."""
        return self.total_len - self.header_len


def parse_ipv4(
    buf: Buffer, off: int, length: int, verify_checksum: bool = True
) -> IPv4Header | Drop:
    """Validate the IPv4 header at buf[off:]; `length` is the bytes available there.

    `length` may exceed total_len (Ethernet pads short frames); the payload
    is the total_len - header_len bytes after the header.  Pass
    verify_checksum=False when the device vouched for the frame.
    """
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"packet range {off}+{length} outside a buffer of {len(buf)} bytes")
    if length < IPV4_HLEN:
        return Drop.IPV4_TRUNCATED
    vihl, tos, total_len, ident, flags_frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(
        buf, off
    )
    if vihl >> 4 != 4:
        return Drop.IPV4_BAD_VERSION
    header_len = (vihl & 0x0F) << 2
    if header_len < IPV4_HLEN:
        return Drop.IPV4_BAD_IHL
    if header_len > length:
        return Drop.IPV4_TRUNCATED
    if verify_checksum and checksum(buf, off, header_len) != 0:
        return Drop.IPV4_BAD_CHECKSUM
    if total_len < header_len:
        return Drop.IPV4_BAD_LENGTH
    if total_len > length:
        return Drop.IPV4_TRUNCATED
    if flags_frag & _FLAG_RESERVED:
        return Drop.IPV4_RESERVED_FLAG
    mf = bool(flags_frag & _FLAG_MF)
    frag_off = (flags_frag & _FRAG_MASK) << 3
    if mf or frag_off:
        data_len = total_len - header_len
        # RFC 791 3.2: every fragment but the last carries a multiple of 8 bytes.
        if mf and (data_len == 0 or data_len & 7):
            return Drop.IPV4_FRAG_BAD_LENGTH
        # A fragment may not place data beyond the largest datagram.
        if header_len + frag_off + data_len > IPV4_MAX_LEN:
            return Drop.IPV4_FRAG_OVERSIZE
    return tuple_new(
        IPv4Header,
        (
            header_len,
            tos,
            total_len,
            ident,
            bool(flags_frag & _FLAG_DF),
            mf,
            frag_off,
            ttl,
            proto,
            src,
            dst,
        ),
    )


def is_fragment(h: IPv4Header) -> bool:
    """True unless the datagram is whole (MF clear and offset zero)."""
    return h.mf or h.frag_off != 0


def emit_ipv4(
    buf: WritableBuffer,
    off: int,
    *,
    src: int,
    dst: int,
    proto: int,
    payload_len: int,
    ident: int = 0,
    ttl: int = DEFAULT_TTL,
    df: bool = False,
    mf: bool = False,
    frag_off: int = 0,
    tos: int = 0,
) -> int:
    """Write a 20-byte IPv4 header with its checksum at buf[off:]; return 20.

    The payload (payload_len bytes) goes right after the header; it need not
    be in place yet, since the header checksum does not cover it.
    """
    if off < 0:
        raise ValueError(f"negative offset {off}")
    if payload_len < 0 or payload_len > IPV4_MAX_LEN - IPV4_HLEN:
        raise ValueError(
            f"IPv4 payload must be 0..{IPV4_MAX_LEN - IPV4_HLEN} bytes, got {payload_len}"
        )
    if frag_off & 7 or not 0 <= frag_off <= _FRAG_MASK << 3:
        raise ValueError(f"fragment offset must be a multiple of 8 in 0..65528, got {frag_off}")
    flags_frag = frag_off >> 3
    if df:
        flags_frag |= _FLAG_DF
    if mf:
        flags_frag |= _FLAG_MF
    try:
        _HDR.pack_into(
            buf,
            off,
            0x45,
            tos,
            IPV4_HLEN + payload_len,
            ident,
            flags_frag,
            ttl,
            proto,
            0,
            src,
            dst,
        )
    except struct.error as exc:
        raise ValueError(f"cannot write IPv4 header at {off} in {len(buf)} bytes: {exc}") from exc
    _CSUM.pack_into(buf, off + _CSUM_OFF, checksum(buf, off, IPV4_HLEN))
    return IPV4_HLEN


def ip_to_str(addr: int) -> str:
    """0xC6120002 -> "198.18.0.2"."""
    try:
        return _inet_ntoa(_U32.pack(addr))
    except struct.error:
        raise ValueError(f"an IPv4 address is an integer in 0..2**32-1, got {addr}") from None


def ip_from_str(text: str) -> int:
    """ "198.18.0.2" -> 0xC6120002 (dotted quad only, no leading zeros)."""
    # inet_pton is strict where inet_aton is not: four decimal parts, no
    # leading zeros, no shorthand forms such as "127.1".
    try:
        value: int = _U32.unpack(_inet_pton(_AF_INET, text))[0]
    except (OSError, TypeError, UnicodeEncodeError):
        raise ValueError(
            f"not a dotted-quad IPv4 address: {text!r}; expected e.g. 198.18.0.2"
        ) from None
    return value
