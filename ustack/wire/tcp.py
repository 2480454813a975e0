"""TCP headers and options (RFC 9293 3.1), parsed and emitted over buffers.

Owns the 20-byte header, its checksum over the IPv4 pseudo header, header
and data, and the options ustack understands: End of Option List and No-Op
(RFC 9293 3.1), Maximum Segment Size (RFC 9293 3.7.1), Window Scale
(RFC 7323 2), SACK-Permitted and SACK (RFC 2018), Timestamps (RFC 7323 3).
Other options are skipped by their length, as RFC 9293 3.1 requires
(MUST-6).  What an option means in a given state (MSS and Window Scale
count only on a SYN, timestamps only once negotiated, SACK blocks must lie
within the send window) is for the control block to decide; this module
reports what the bytes say.

Flag combinations dropped at parse (Drop.TCP_BAD_FLAGS), so the control
block never sees them:

- SYN with FIN.  No current TCP sends it (T/TCP, RFC 1644, did and is
  historic, RFC 6247); today it is a scanner's probe.  Linux discards
  it in LISTEN (tcp_rcv_state_process: `if (th->fin)` under `if (th->syn)`,
  reason TCP_FLAGS), and smoltcp cannot even represent it.
- SYN with RST.  RFC 9293 never generates it (3.10.7.1 resets carry no
  SYN); processing it as the RST that RFC 9293's step order would make it
  (RST is checked before SYN) would only widen what can reset a connection.
- None of ACK, SYN, RST (a "null" or FIN-only scan).  Every state that has
  a control block drops such a segment without reply: LISTEN (RFC 9293
  3.10.7.2, "drop the segment and return"; Linux reason TCP_FLAGS),
  SYN-SENT (3.10.7.3, "if neither of the SYN or RST bits is set, then
  drop"), and the synchronized states (3.10.7.4 fifth, "if the ACK bit is
  off, drop").  Only CLOSED would answer with a RST (3.10.7.1); ustack leaves port scans
  of that kind unanswered instead.  No legitimate segment is lost: after
  the first SYN every segment carries ACK (RFC 9293 3.1, Acknowledgment
  Number: "once a connection is established, this is always sent").

Processed, and left to the control block: FIN with RST (RST is checked
first and the FIN never looked at, RFC 9293 3.10.7.4 second; Linux does
the same, where smoltcp rejects it), and URG, PSH, ECE and CWR in any
combination (ECN, RFC 3168).  The four reserved bits are ignored, as RFC
9293 3.1 asks of a receiver that does not implement their future use.

Nearly every segment of an established Linux connection carries the same
options, NOP NOP Timestamps in a 32-byte header; parse_tcp recognises that
header by its first four option bytes and skips the option loop, and
emit_tcp writes it with one struct.  `emit_tcp_ts` is that writer on its
own, with positional arguments, for the Stack's per-segment output.
"""

import struct
from typing import NamedTuple

from ustack.wire.checksum import checksum, pseudo_sum
from ustack.wire.drop import Drop
from ustack.wire.ipv4 import IPV4_HLEN, IPV4_MAX_LEN, PROTO_TCP
from ustack.wire.types import Buffer, WritableBuffer, tuple_new

TCP_HLEN = 20
"""Header length without options."""
TCP_MAX_OPTIONS_LEN = 40
"""Option space: the 4-bit data offset allows a 60-byte header."""
TCP_HLEN_TS = TCP_HLEN + 12
"""Header with NOP NOP Timestamps, the usual length on an established connection."""
TCP_MAX_LEN = IPV4_MAX_LEN - IPV4_HLEN
"""The largest segment (header and data) an IPv4 datagram without options carries."""

# control bits (RFC 9293 3.1; ECE and CWR from RFC 3168 6.1)
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# option kinds
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8

MAX_WSCALE = 14
"""RFC 7323 2.3: a larger shift is used as 14 when received and never sent."""
MAX_SACK_BLOCKS = 4
"""RFC 2018 3: 4 blocks fill the 40-byte option space (3 next to timestamps)."""

# sport, dport, seq, ack, data offset/reserved/flags, window, checksum, urgent
_HDR = struct.Struct("!HHIIHHHH")
# the same followed by NOP NOP Timestamps: prefix word, TSval, TSecr
_HDR_TS = struct.Struct("!HHIIHHHHIII")
_TS_WORDS = struct.Struct("!III")
_CSUM = struct.Struct("!H")
_CSUM_OFF = 16
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
_MSS = struct.Struct("!BBH")
_SACK_WORDS = tuple(struct.Struct("!" + "II" * n) for n in range(MAX_SACK_BLOCKS + 1))

# Option words as Linux lays them out (tcp_options_write): kind/length
# bytes, NOP-aligned so that every 32-bit value starts on a word boundary.
_NOP_NOP_TS = 0x0101080A
_SACKPERM_TS = 0x0402080A
_NOP_NOP_SACKPERM = 0x01010402
_NOP_WSCALE = 0x01030300
_NOP_NOP_SACK = 0x01010500

_DOFF_PLAIN = (TCP_HLEN >> 2) << 12
_DOFF_TS = (TCP_HLEN_TS >> 2) << 12


def _flags_dropped(flags: int) -> bool:
    if flags & SYN:
        return bool(flags & (FIN | RST))
    return not flags & (ACK | RST)


_BAD_FLAGS = bytes(_flags_dropped(f) for f in range(256))
"""Indexed by the 8 flag bits: non-zero for the combinations dropped (module docstring)."""


class TcpSegment(NamedTuple):
    """A validated TCP header; the data is buf[off + header_len : off + length]."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    """The 8 control bits (FIN ... CWR); the reserved bits are not kept."""
    window: int
    """The raw 16-bit field, before window scaling."""
    urgent: int
    header_len: int
    """Bytes, including options (data offset * 4)."""
    mss: int | None
    wscale: int | None
    """Shift count, already clamped to MAX_WSCALE (RFC 7323 2.3)."""
    sack_permitted: bool
    sack_blocks: tuple[tuple[int, int], ...]
    """(left edge, right edge) pairs as received, at most 4; not checked for sense."""
    ts_val: int | None
    ts_ecr: int | None


_Options = tuple[int | None, int | None, bool, tuple[tuple[int, int], ...], int | None, int | None]


def _parse_options(buf: Buffer, i: int, end: int) -> _Options | None:
    """Walk the options in buf[i:end]; None if one is malformed.

    A repeated option overrides the earlier one, as in Linux's
    tcp_parse_options.  Linux skips a known option of the wrong length;
    ustack drops the segment, the stricter reading of RFC 9293 3.1 (MUST-7
    asks only that such input not crash the receiver).
    """
    mss: int | None = None
    wscale: int | None = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    ts_val: int | None = None
    ts_ecr: int | None = None
    while i < end:
        kind = buf[i]
        if kind == OPT_NOP:
            i += 1
            continue
        if kind == OPT_EOL:
            break
        if i + 1 >= end:
            return None
        size = buf[i + 1]
        if size < 2 or i + size > end:
            return None
        if kind == OPT_TIMESTAMPS:
            if size != 10:
                return None
            ts_val, ts_ecr = _U32X2.unpack_from(buf, i + 2)
        elif kind == OPT_MSS:
            if size != 4:
                return None
            (mss,) = _U16.unpack_from(buf, i + 2)
        elif kind == OPT_WSCALE:
            if size != 3:
                return None
            wscale = min(buf[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERMITTED:
            if size != 2:
                return None
            sack_permitted = True
        elif kind == OPT_SACK:
            # 2 + 8 * n bytes for n >= 1 blocks; the 40-byte space caps n at 4.
            if size & 7 != 2 or size == 2:
                return None
            edges = _SACK_WORDS[size >> 3].unpack_from(buf, i + 2)
            sack_blocks = tuple(zip(edges[::2], edges[1::2], strict=True))
        i += size
    return (mss, wscale, sack_permitted, sack_blocks, ts_val, ts_ecr)


def parse_tcp(
    buf: Buffer, off: int, length: int, src: int, dst: int, verify_checksum: bool = True
) -> TcpSegment | Drop:
    """Validate the TCP segment at buf[off:]; `length` is the IP payload length.

    The data is buf[off + h.header_len : off + length].  `src` and `dst` are
    the IPv4 addresses for the pseudo header.  Pass verify_checksum=False
    when the device vouched for the checksum (or left it partial).  Checks
    run in this order, so each drop is counted under the first fault:
    truncated, data offset, checksum, ports, flags, options.
    """
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"segment range {off}+{length} outside a buffer of {len(buf)} bytes")
    if length < TCP_HLEN:
        return Drop.TCP_TRUNCATED
    sport, dport, seq, ack, doff_flags, window, _csum, urgent = _HDR.unpack_from(buf, off)
    header_len = (doff_flags >> 12) << 2
    if header_len < TCP_HLEN or header_len > length:
        return Drop.TCP_BAD_DATA_OFFSET
    if verify_checksum and checksum(buf, off, length, pseudo_sum(src, dst, PROTO_TCP, length)) != 0:
        return Drop.TCP_BAD_CHECKSUM
    if not sport or not dport:
        return Drop.TCP_BAD_PORT
    flags = doff_flags & 0xFF
    if _BAD_FLAGS[flags]:
        return Drop.TCP_BAD_FLAGS
    if header_len == TCP_HLEN:
        return tuple_new(
            TcpSegment,
            (
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                urgent,
                TCP_HLEN,
                None,
                None,
                False,
                (),
                None,
                None,
            ),
        )
    if header_len == TCP_HLEN_TS:
        prefix, ts_val, ts_ecr = _TS_WORDS.unpack_from(buf, off + TCP_HLEN)
        if prefix == _NOP_NOP_TS:
            return tuple_new(
                TcpSegment,
                (
                    sport,
                    dport,
                    seq,
                    ack,
                    flags,
                    window,
                    urgent,
                    TCP_HLEN_TS,
                    None,
                    None,
                    False,
                    (),
                    ts_val,
                    ts_ecr,
                ),
            )
    options = _parse_options(buf, off + TCP_HLEN, off + header_len)
    if options is None:
        return Drop.TCP_BAD_OPTION
    return tuple_new(
        TcpSegment, (sport, dport, seq, ack, flags, window, urgent, header_len, *options)
    )


def options_len(
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    sack_blocks: tuple[tuple[int, int], ...] = (),
    ts: tuple[int, int] | None = None,
) -> int:
    """Bytes of options emit_tcp writes for these arguments (a multiple of 4).

    Takes the option arguments of emit_tcp, so that the control block knows
    the header length, TCP_HLEN + options_len(...), before it places data.
    Raises ValueError when they do not fit the 40-byte option space.
    """
    n = 0
    if mss is not None:
        n += 4
    if ts is not None:
        n += 12  # SACK-Permitted rides in the timestamps' padding
    elif sack_permitted:
        n += 4
    if wscale is not None:
        if not 0 <= wscale <= MAX_WSCALE:
            raise ValueError(f"window scale must be 0..{MAX_WSCALE} (RFC 7323 2.3), got {wscale}")
        n += 4
    if sack_blocks:
        n += 4 + 8 * len(sack_blocks)
    if n > TCP_MAX_OPTIONS_LEN:
        raise ValueError(
            f"options need {n} bytes but only {TCP_MAX_OPTIONS_LEN} fit; send fewer SACK "
            f"blocks ({MAX_SACK_BLOCKS} at most, 3 with timestamps)"
        )
    return n


def _write_options(
    buf: WritableBuffer,
    p: int,
    mss: int | None,
    wscale: int | None,
    sack_permitted: bool,
    sack_blocks: tuple[tuple[int, int], ...],
    ts: tuple[int, int] | None,
) -> None:
    """Write options at buf[p:] in Linux's order: MSS, TS, SACK-Permitted, WS, SACK."""
    if mss is not None:
        _MSS.pack_into(buf, p, OPT_MSS, 4, mss)
        p += 4
    if ts is not None:
        ts_val, ts_ecr = ts
        _TS_WORDS.pack_into(buf, p, _SACKPERM_TS if sack_permitted else _NOP_NOP_TS, ts_val, ts_ecr)
        p += 12
    elif sack_permitted:
        _U32.pack_into(buf, p, _NOP_NOP_SACKPERM)
        p += 4
    if wscale is not None:
        _U32.pack_into(buf, p, _NOP_WSCALE | wscale)
        p += 4
    if sack_blocks:
        _U32.pack_into(buf, p, _NOP_NOP_SACK | (2 + 8 * len(sack_blocks)))
        p += 4
        for left, right in sack_blocks:
            _U32X2.pack_into(buf, p, left, right)
            p += 8


def emit_tcp(
    buf: WritableBuffer,
    off: int,
    *,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    src: int,
    dst: int,
    payload_len: int,
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    sack_blocks: tuple[tuple[int, int], ...] = (),
    ts: tuple[int, int] | None = None,
    urgent: int = 0,
    offload_checksum: bool = False,
) -> int:
    """Write the header and options at buf[off:] and its checksum; return the header length.

    The payload_len bytes of data must already be in place after the header
    (at off + TCP_HLEN + options_len(...)).  `src` and `dst` are the IPv4
    addresses of the pseudo header; `ts` is (TSval, TSecr).  Options are
    written as Linux writes them, so captures of both stacks read alike:
    MSS; Timestamps, led by SACK-Permitted when both are sent (a SYN) and by
    two NOPs otherwise; NOP NOP SACK-Permitted without timestamps; NOP
    Window Scale; NOP NOP SACK blocks.

    With offload_checksum=True the checksum field gets the folded,
    uncomplemented pseudo-header sum instead (Linux CHECKSUM_PARTIAL,
    virtio VIRTIO_NET_HDR_F_NEEDS_CSUM), for the device to finish over
    header and data; the pseudo header counts this segment's whole length,
    also when it is a TSO segment larger than the MSS.

    Only field ranges are checked: any flag combination can be written.
    """
    if mss is None and wscale is None and not sack_permitted and not sack_blocks:
        return emit_tcp_ts(
            buf,
            off,
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            src,
            dst,
            payload_len,
            ts,
            offload_checksum,
            urgent,
        )
    if flags & ~0xFF:
        raise ValueError(f"flags are the 8 control bits 0..0xFF, got {flags:#x}")
    header_len = TCP_HLEN + options_len(
        mss=mss, wscale=wscale, sack_permitted=sack_permitted, sack_blocks=sack_blocks, ts=ts
    )
    seg_len = header_len + payload_len
    _check_room(buf, off, header_len, payload_len)
    try:
        _HDR.pack_into(
            buf, off, sport, dport, seq, ack, (header_len << 10) | flags, window, 0, urgent
        )
        _write_options(buf, off + TCP_HLEN, mss, wscale, sack_permitted, sack_blocks, ts)
        pseudo = pseudo_sum(src, dst, PROTO_TCP, seg_len)
    except (struct.error, OverflowError) as exc:
        raise _bad_field(exc) from exc
    if offload_checksum:
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
        _CSUM.pack_into(buf, off + _CSUM_OFF, (pseudo & 0xFFFF) + (pseudo >> 16))
    else:
        # TCP has no "no checksum" value, so a computed 0 is sent as 0 (RFC 9293 3.1).
        _CSUM.pack_into(buf, off + _CSUM_OFF, checksum(buf, off, seg_len, pseudo))
    return header_len


def emit_tcp_ts(
    buf: WritableBuffer,
    off: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    src: int,
    dst: int,
    payload_len: int,
    ts: tuple[int, int] | None,
    offload_checksum: bool = False,
    urgent: int = 0,
) -> int:
    """emit_tcp for a segment whose only option is Timestamps (NOP NOP TS), or that has none.

    The bytes and the checks of emit_tcp with those arguments, taken
    positionally: nearly every segment of an established connection has
    this header, and the per-segment path skips keyword binding and the
    option sizing.  Returns the header length, TCP_HLEN_TS or TCP_HLEN.
    """
    if flags & ~0xFF:
        raise ValueError(f"flags are the 8 control bits 0..0xFF, got {flags:#x}")
    header_len = TCP_HLEN if ts is None else TCP_HLEN_TS
    seg_len = header_len + payload_len
    if payload_len < 0 or seg_len > TCP_MAX_LEN or off < 0 or off + seg_len > len(buf):
        _check_room(buf, off, header_len, payload_len)
    try:
        # The pseudo-header sum first, so that an offloaded checksum (see
        # emit_tcp) is written with the header in one pack_into.
        pseudo = pseudo_sum(src, dst, PROTO_TCP, seg_len)
        if offload_checksum:
            pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
            csum = (pseudo & 0xFFFF) + (pseudo >> 16)
        else:
            csum = 0
        if ts is None:
            _HDR.pack_into(
                buf, off, sport, dport, seq, ack, _DOFF_PLAIN | flags, window, csum, urgent
            )
        else:
            ts_val, ts_ecr = ts
            _HDR_TS.pack_into(
                buf,
                off,
                sport,
                dport,
                seq,
                ack,
                _DOFF_TS | flags,
                window,
                csum,
                urgent,
                _NOP_NOP_TS,
                ts_val,
                ts_ecr,
            )
    except (struct.error, OverflowError) as exc:
        raise _bad_field(exc) from exc
    if not offload_checksum:
        # TCP has no "no checksum" value, so a computed 0 is sent as 0 (RFC 9293 3.1).
        _CSUM.pack_into(buf, off + _CSUM_OFF, checksum(buf, off, seg_len, pseudo))
    return header_len


def _check_room(buf: WritableBuffer, off: int, header_len: int, payload_len: int) -> None:
    """Raise ValueError unless a segment of this header and payload fits TCP and buf[off:]."""
    seg_len = header_len + payload_len
    if payload_len < 0 or seg_len > TCP_MAX_LEN:
        raise ValueError(
            f"TCP payload must be 0..{TCP_MAX_LEN - header_len} bytes with a "
            f"{header_len}-byte header, got {payload_len}"
        )
    if off < 0 or off + seg_len > len(buf):
        raise ValueError(
            f"a TCP segment of {seg_len} bytes at {off} does not fit a buffer of {len(buf)} bytes"
        )


def _bad_field(exc: Exception) -> ValueError:
    return ValueError(
        f"bad TCP field (ports, window, urgent, MSS are 16-bit; seq, ack, timestamps, "
        f"SACK edges and addresses 32-bit): {exc}"
    )
