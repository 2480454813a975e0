"""TCP header and options: parse, emit, drops, Linux layouts, against scapy and random bytes."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from ustack.wire.drop import Drop
from ustack.wire.ipv4 import IPV4_HLEN, PROTO_TCP, emit_ipv4
from ustack.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    MAX_WSCALE,
    PSH,
    RST,
    SYN,
    TCP_HLEN,
    TCP_HLEN_TS,
    TCP_MAX_LEN,
    URG,
    TcpSegment,
    _parse_options,
    emit_tcp,
    options_len,
    parse_tcp,
)

SRC = 0xC6120001  # 198.18.0.1
DST = 0xC6120002  # 198.18.0.2
SRC_TEXT = "198.18.0.1"
DST_TEXT = "198.18.0.2"

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)
FUZZ = settings(max_examples=300, deadline=None)

NO_OPTIONS: dict[str, Any] = {
    "mss": None,
    "wscale": None,
    "sack_permitted": False,
    "sack_blocks": (),
    "ts_val": None,
    "ts_ecr": None,
}


# ---------------------------------------------------------------- helpers


def ref_sum(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = initial + sum(w for (w,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_pseudo(src: int, dst: int, length: int) -> bytes:
    return struct.pack("!IIBBH", src, dst, 0, PROTO_TCP, length)


def ref_tcp_checksum_ok(src: int, dst: int, segment: bytes) -> bool:
    return ref_sum(ref_pseudo(src, dst, len(segment)) + segment) == 0xFFFF


def fix_checksum(seg: bytearray, src: int = SRC, dst: int = DST) -> bytearray:
    """Write the correct checksum into a hand-made segment."""
    seg[16:18] = b"\0\0"
    total = ref_sum(ref_pseudo(src, dst, len(seg)) + bytes(seg))
    seg[16:18] = struct.pack("!H", ~total & 0xFFFF)
    return seg


def raw_segment(
    options: bytes = b"",
    *,
    flags: int = ACK,
    payload: bytes = b"",
    sport: int = 40000,
    dport: int = 80,
    seq: int = 1000,
    ack: int = 2000,
    window: int = 512,
    urgent: int = 0,
    doff: int | None = None,
    reserved: int = 0,
) -> bytearray:
    """A hand-made segment with a correct checksum; options are taken as given."""
    if doff is None:
        assert len(options) % 4 == 0
        doff = (TCP_HLEN + len(options)) // 4
    head = struct.pack(
        "!HHIIHHHH", sport, dport, seq, ack, doff << 12 | reserved << 8 | flags, window, 0, urgent
    )
    return fix_checksum(bytearray(head + options + payload))


def seg(**fields: Any) -> TcpSegment:
    """The TcpSegment expected for a header built by raw_segment's defaults."""
    base: dict[str, Any] = {
        "sport": 40000,
        "dport": 80,
        "seq": 1000,
        "ack": 2000,
        "flags": ACK,
        "window": 512,
        "urgent": 0,
        "header_len": TCP_HLEN,
    } | NO_OPTIONS
    return TcpSegment(**(base | fields))


def parse(raw: bytes | bytearray, verify: bool = True) -> TcpSegment | Drop:
    return parse_tcp(raw, 0, len(raw), SRC, DST, verify)


def emit(payload: bytes = b"", **kw: Any) -> bytearray:
    """A segment written by emit_tcp with `payload` after the header."""
    args: dict[str, Any] = {
        "sport": 40000,
        "dport": 80,
        "seq": 1000,
        "ack": 2000,
        "flags": ACK,
        "window": 512,
        "src": SRC,
        "dst": DST,
    } | kw
    option_args = {
        k: args[k] for k in ("mss", "wscale", "sack_permitted", "sack_blocks", "ts") if k in args
    }
    hlen = TCP_HLEN + options_len(**option_args)
    buf = bytearray(hlen + len(payload))
    buf[hlen:] = payload
    assert emit_tcp(buf, 0, payload_len=len(payload), **args) == hlen
    return buf


def scapy_segment(payload: bytes = b"", **kw: Any) -> bytes:
    """A TCP segment (no IP header) with scapy's checksum for SRC -> DST."""
    raw = bytes(IP(src=SRC_TEXT, dst=DST_TEXT) / TCP(**kw) / payload)
    return raw[IPV4_HLEN:]


def scapy_view(segment: bytes) -> Any:
    """Scapy's reading of our segment, inside an IPv4 header so it can check the checksum."""
    buf = bytearray(IPV4_HLEN + len(segment))
    buf[IPV4_HLEN:] = segment
    emit_ipv4(buf, 0, src=SRC, dst=DST, proto=PROTO_TCP, payload_len=len(segment))
    return IP(bytes(buf))[TCP]


def scapy_checksum_agrees(tcp: Any) -> bool:
    """Scapy, asked to compute the checksum afresh, gets the one in the segment."""
    ours = tcp.chksum
    pkt = tcp.underlayer
    del pkt[TCP].chksum
    return bool(IP(bytes(pkt))[TCP].chksum == ours)


def scapy_options(tcp: Any) -> dict[str, Any]:
    return {name: value for name, value in tcp.options if name not in ("NOP", "EOL")}


# ---------------------------------------------------------------- against scapy


def test_tcp_scapy_linux_syn_parses_same_fields():
    raw = scapy_segment(
        sport=41000,
        dport=80,
        seq=0xFFFFFFF0,
        flags="S",
        window=64240,
        options=[
            ("MSS", 1460),
            ("SAckOK", b""),
            ("Timestamp", (2_000_000_000, 0)),
            ("NOP", None),
            ("WScale", 7),
        ],
    )
    got = parse(raw)
    assert got == TcpSegment(
        41000, 80, 0xFFFFFFF0, 0, SYN, 64240, 0, 40, 1460, 7, True, (), 2_000_000_000, 0
    )


def test_tcp_emit_linux_syn_equals_scapy_bytes_and_checksum():
    ours = emit(
        flags=SYN,
        seq=0xFFFFFFF0,
        ack=0,
        window=64240,
        mss=1460,
        sack_permitted=True,
        ts=(2_000_000_000, 0),
        wscale=7,
    )
    theirs = scapy_segment(
        sport=40000,
        dport=80,
        seq=0xFFFFFFF0,
        ack=0,
        flags="S",
        window=64240,
        options=[
            ("MSS", 1460),
            ("SAckOK", b""),
            ("Timestamp", (2_000_000_000, 0)),
            ("NOP", None),
            ("WScale", 7),
        ],
    )
    assert bytes(ours) == theirs
    assert ours[TCP_HLEN:].hex(" ", 4) == "020405b4 0402080a 77359400 00000000 01030307"


def test_tcp_emit_established_data_scapy_reads_same_fields_and_checksum():
    ours = emit(b"GET / HTTP/1.1\r\n", flags=ACK | PSH, ts=(7, 9), window=501)
    tcp = scapy_view(bytes(ours))
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, int(tcp.flags), tcp.window) == (
        40000,
        80,
        1000,
        2000,
        ACK | PSH,
        501,
    )
    assert tcp.dataofs * 4 == TCP_HLEN_TS
    assert tcp.options == [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]
    assert bytes(tcp.payload) == b"GET / HTTP/1.1\r\n"
    assert scapy_checksum_agrees(tcp)


@st.composite
def scapy_option_lists(draw: st.DrawFn) -> tuple[list[tuple[Any, Any]], dict[str, Any]]:
    """Options in any order with NOPs between, for scapy to write; and what we must read."""
    order = draw(st.permutations(["MSS", "WScale", "SAckOK", "SAck", "Timestamp"]))
    options: list[tuple[Any, Any]] = []
    expected = dict(NO_OPTIONS)
    room = 40
    for name in order:
        if not draw(st.booleans()):
            continue
        nops = draw(st.integers(0, 2))
        if name == "MSS" and room >= nops + 4:
            value: Any = draw(u16)
            expected["mss"] = value
            size = 4
        elif name == "WScale" and room >= nops + 3:
            value = draw(st.integers(0, 255))
            expected["wscale"] = min(value, MAX_WSCALE)
            size = 3
        elif name == "SAckOK" and room >= nops + 2:
            value = b""
            expected["sack_permitted"] = True
            size = 2
        elif name == "SAck" and room >= nops + 10:
            n = draw(st.integers(1, min(4, (room - nops - 2) // 8)))
            edges = draw(st.lists(u32, min_size=2 * n, max_size=2 * n))
            value = tuple(edges)
            expected["sack_blocks"] = tuple(zip(edges[::2], edges[1::2], strict=True))
            size = 2 + 8 * n
        elif name == "Timestamp" and room >= nops + 10:
            value = (draw(u32), draw(u32))
            expected["ts_val"], expected["ts_ecr"] = value
            size = 10
        else:
            continue
        options += [("NOP", None)] * nops + [(name, value)]
        room -= nops + size
    return options, expected


@FUZZ
@given(
    case=scapy_option_lists(),
    sport=st.integers(1, 0xFFFF),
    dport=st.integers(1, 0xFFFF),
    seq=u32,
    ack=u32,
    window=u16,
    urgent=u16,
    payload=st.binary(max_size=64),
)
def test_tcp_scapy_random_options_parse_same(case, sport, dport, seq, ack, window, urgent, payload):
    options, expected = case
    raw = scapy_segment(
        payload,
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags="A",
        window=window,
        urgptr=urgent,
        options=options,
    )
    header_len = TCP(raw).dataofs * 4
    got = parse(raw)
    assert got == TcpSegment(sport, dport, seq, ack, ACK, window, urgent, header_len, **expected)
    assert raw[header_len:] == payload


@st.composite
def option_args(draw: st.DrawFn) -> dict[str, Any]:
    """Any set of emit_tcp options that fits the 40-byte option space."""
    kw: dict[str, Any] = {}
    room = 40
    if draw(st.booleans()):
        kw["mss"] = draw(u16)
        room -= 4
    if draw(st.booleans()):
        kw["ts"] = (draw(u32), draw(u32))
        room -= 12
    if draw(st.booleans()):
        kw["sack_permitted"] = True
        room -= 0 if "ts" in kw else 4
    if draw(st.booleans()):
        kw["wscale"] = draw(st.integers(0, MAX_WSCALE))
        room -= 4
    most = min(4, (room - 4) // 8)
    if most >= 1 and draw(st.booleans()):
        kw["sack_blocks"] = tuple(draw(st.lists(st.tuples(u32, u32), min_size=1, max_size=most)))
    return kw


def expected_options(kw: dict[str, Any]) -> dict[str, Any]:
    ts = kw.get("ts")
    return {
        "mss": kw.get("mss"),
        "wscale": kw.get("wscale"),
        "sack_permitted": kw.get("sack_permitted", False),
        "sack_blocks": kw.get("sack_blocks", ()),
        "ts_val": ts[0] if ts else None,
        "ts_ecr": ts[1] if ts else None,
    }


@FUZZ
@given(
    opts=option_args(),
    flags=st.sampled_from([SYN, SYN | ACK, ACK, ACK | PSH, ACK | FIN, RST | ACK, SYN | ECE | CWR]),
    seq=u32,
    ack=u32,
    window=u16,
    urgent=u16,
    payload=st.binary(max_size=64),
)
def test_tcp_emit_random_options_scapy_reads_same(opts, flags, seq, ack, window, urgent, payload):
    raw = emit(payload, flags=flags, seq=seq, ack=ack, window=window, urgent=urgent, **opts)
    tcp = scapy_view(bytes(raw))
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, int(tcp.flags)) == (40000, 80, seq, ack, flags)
    assert (tcp.window, tcp.urgptr, tcp.dataofs * 4) == (window, urgent, len(raw) - len(payload))
    assert bytes(tcp.payload) == payload
    assert scapy_checksum_agrees(tcp)
    want: dict[str, Any] = {}
    if "mss" in opts:
        want["MSS"] = opts["mss"]
    if "wscale" in opts:
        want["WScale"] = opts["wscale"]
    if opts.get("sack_permitted"):
        want["SAckOK"] = b""
    if "ts" in opts:
        want["Timestamp"] = opts["ts"]
    if "sack_blocks" in opts:
        want["SAck"] = tuple(edge for block in opts["sack_blocks"] for edge in block)
    assert scapy_options(tcp) == want


# ---------------------------------------------------------------- round trips


@FUZZ
@given(
    opts=option_args(),
    sport=u16,
    dport=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0xFF),
    window=u16,
    urgent=u16,
    src=u32,
    dst=u32,
    payload=st.binary(max_size=300),
    off=st.integers(0, 40),
    pad=st.integers(0, 20),
    kind=st.sampled_from(["bytearray", "memoryview"]),
)
def test_tcp_emit_parse_all_fields_round_trip(
    opts, sport, dport, seq, ack, flags, window, urgent, src, dst, payload, off, pad, kind
):
    hlen = TCP_HLEN + options_len(**opts)
    n = hlen + len(payload)
    pool = bytearray(b"\xee" * (off + n + pad))
    pool[off + hlen : off + n] = payload
    buf = memoryview(pool) if kind == "memoryview" else pool
    written = emit_tcp(
        buf,
        off,
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        urgent=urgent,
        src=src,
        dst=dst,
        payload_len=len(payload),
        **opts,
    )
    assert written == hlen
    assert hlen % 4 == 0
    segment = bytes(pool[off : off + n])
    assert ref_tcp_checksum_ok(src, dst, segment)
    assert pool[:off] == b"\xee" * off and pool[off + n :] == b"\xee" * pad
    got = parse_tcp(bytes(pool), off, n, src, dst)
    if sport == 0 or dport == 0:
        assert got is Drop.TCP_BAD_PORT
    elif (flags & SYN and flags & (FIN | RST)) or not flags & (ACK | SYN | RST):
        assert got is Drop.TCP_BAD_FLAGS
    else:
        assert got == TcpSegment(
            sport, dport, seq, ack, flags, window, urgent, hlen, **expected_options(opts)
        )
        assert segment[hlen:] == payload


@FUZZ
@given(ts=st.tuples(u32, u32), payload=st.binary(max_size=40))
def test_tcp_ts_fast_path_equals_generic_option_loop(ts, payload):
    raw = emit(payload, ts=ts)
    assert raw[TCP_HLEN : TCP_HLEN + 4] == bytes.fromhex("0101080a")
    fast = parse(raw)
    assert isinstance(fast, TcpSegment)
    generic = _parse_options(raw, TCP_HLEN, TCP_HLEN_TS)
    assert generic is not None
    assert fast[8:] == generic
    # The same option laid out another way (TS, NOP, NOP) takes the option loop.
    moved = raw_segment(struct.pack("!BBII", 8, 10, *ts) + b"\x01\x01", payload=payload)
    assert parse(moved) == fast


# ---------------------------------------------------------------- Linux layouts


def test_tcp_emit_syn_without_timestamps_linux_layout():
    raw = emit(flags=SYN, mss=1460, sack_permitted=True, wscale=7)
    assert raw[TCP_HLEN:].hex(" ", 4) == "020405b4 01010402 01030307"
    assert parse(raw) == seg(flags=SYN, header_len=32, mss=1460, sack_permitted=True, wscale=7)


def test_tcp_emit_established_sack_after_timestamps_linux_layout():
    raw = emit(ts=(1, 2), sack_blocks=((10, 20), (30, 40), (50, 60)))
    assert raw[TCP_HLEN:].hex(" ", 4) == (
        "0101080a 00000001 00000002 0101051a 0000000a 00000014 0000001e 00000028 00000032 0000003c"
    )
    assert len(raw) == 60
    assert parse(raw) == seg(
        header_len=60, ts_val=1, ts_ecr=2, sack_blocks=((10, 20), (30, 40), (50, 60))
    )


def test_tcp_emit_synack_mss_and_sack_permitted_only():
    raw = emit(flags=SYN | ACK, mss=536, sack_permitted=True)
    assert raw[TCP_HLEN:].hex(" ", 4) == "02040218 01010402"


def test_tcp_emit_wscale_only_is_nop_padded():
    raw = emit(flags=SYN, wscale=0)
    assert raw[TCP_HLEN:].hex() == "01030300"
    assert parse(raw) == seg(flags=SYN, header_len=24, wscale=0)


@pytest.mark.parametrize(
    ("opts", "n"),
    [
        ({}, 0),
        ({"ts": (0, 0)}, 12),
        ({"mss": 1460}, 4),
        ({"sack_permitted": True}, 4),
        ({"sack_permitted": True, "ts": (0, 0)}, 12),
        ({"mss": 1460, "sack_permitted": True, "ts": (0, 0), "wscale": 7}, 20),
        ({"sack_blocks": ((1, 2),) * 4}, 36),
        ({"ts": (0, 0), "sack_blocks": ((1, 2),) * 3}, 40),
    ],
)
def test_tcp_options_len_counts_padded_option_bytes(opts: dict[str, Any], n: int):
    assert options_len(**opts) == n
    assert len(emit(**opts)) == TCP_HLEN + n


def test_tcp_emit_payload_left_in_place_and_checksummed():
    raw = emit(b"\x00\xffodd", ts=(5, 6))
    assert raw[TCP_HLEN_TS:] == b"\x00\xffodd"
    assert ref_tcp_checksum_ok(SRC, DST, bytes(raw))
    raw[-1] ^= 1
    assert parse(raw) is Drop.TCP_BAD_CHECKSUM


# ---------------------------------------------------------------- checksum offload


@FUZZ
@given(
    opts=option_args(),
    payload=st.binary(max_size=200),
    src=u32,
    dst=u32,
)
def test_tcp_emit_offload_writes_folded_pseudo_sum_device_completes(opts, payload, src, dst):
    hlen = TCP_HLEN + options_len(**opts)
    buf = bytearray(hlen + len(payload))
    buf[hlen:] = payload
    emit_tcp(
        buf,
        0,
        sport=1,
        dport=2,
        seq=3,
        ack=4,
        flags=ACK,
        window=5,
        src=src,
        dst=dst,
        payload_len=len(payload),
        offload_checksum=True,
        **opts,
    )
    (field,) = struct.unpack_from("!H", buf, 16)
    assert field == ref_sum(ref_pseudo(src, dst, len(buf)))
    # What a NEEDS_CSUM device does: sum from csum_start on, complement, store at csum_offset.
    struct.pack_into("!H", buf, 16, ~ref_sum(bytes(buf)) & 0xFFFF)
    assert ref_tcp_checksum_ok(src, dst, bytes(buf))
    assert isinstance(parse_tcp(buf, 0, len(buf), src, dst), TcpSegment)


def test_tcp_offload_segment_unverified_parses():
    raw = emit(b"data", ts=(1, 1), offload_checksum=True)
    assert parse(raw) is Drop.TCP_BAD_CHECKSUM
    assert parse(raw, verify=False) == seg(header_len=TCP_HLEN_TS, ts_val=1, ts_ecr=1)


# ---------------------------------------------------------------- drops


def test_tcp_under_20_bytes_drops_truncated():
    raw = raw_segment()
    assert parse_tcp(raw, 0, 19, SRC, DST) is Drop.TCP_TRUNCATED
    assert parse_tcp(raw, 0, 0, SRC, DST) is Drop.TCP_TRUNCATED


@pytest.mark.parametrize("doff", [0, 1, 4])
def test_tcp_data_offset_below_5_drops_bad_data_offset(doff: int):
    assert parse(raw_segment(doff=doff, payload=b"x" * 40)) is Drop.TCP_BAD_DATA_OFFSET


def test_tcp_header_longer_than_segment_drops_bad_data_offset():
    assert parse(raw_segment(doff=6)) is Drop.TCP_BAD_DATA_OFFSET
    assert parse(raw_segment(doff=15, payload=b"\x01" * 39)) is Drop.TCP_BAD_DATA_OFFSET
    assert isinstance(parse(raw_segment(doff=15, payload=b"\x01" * 40)), TcpSegment)


def test_tcp_flipped_byte_drops_bad_checksum():
    raw = raw_segment(payload=b"hello")
    raw[-2] ^= 0x40
    assert parse(raw) is Drop.TCP_BAD_CHECKSUM


def test_tcp_wrong_pseudo_header_drops_bad_checksum():
    raw = raw_segment(payload=b"hello")
    assert parse_tcp(raw, 0, len(raw), SRC, DST ^ 1) is Drop.TCP_BAD_CHECKSUM
    # The pseudo header counts the length given, not the bytes after it.
    padded = raw + b"\0\0"
    assert parse_tcp(padded, 0, len(padded), SRC, DST) is Drop.TCP_BAD_CHECKSUM
    assert parse_tcp(padded, 0, len(raw), SRC, DST) == seg()


def test_tcp_bad_checksum_unverified_parses():
    raw = raw_segment(payload=b"hello")
    raw[-1] ^= 1
    assert parse(raw, verify=False) == seg()


@pytest.mark.parametrize(("sport", "dport"), [(0, 80), (40000, 0), (0, 0)])
def test_tcp_port_zero_drops_bad_port(sport: int, dport: int):
    assert parse(raw_segment(sport=sport, dport=dport)) is Drop.TCP_BAD_PORT


@pytest.mark.parametrize(
    "flags",
    [
        SYN | FIN,
        SYN | RST,
        SYN | FIN | RST,
        SYN | FIN | ACK,
        SYN | RST | ACK,
        0xFF,
        0,
        FIN,
        PSH,
        URG,
        FIN | PSH | URG,
        ECE | CWR,
    ],
    ids=hex,
)
def test_tcp_illegal_flag_combination_drops_bad_flags(flags: int):
    assert parse(raw_segment(flags=flags)) is Drop.TCP_BAD_FLAGS


@pytest.mark.parametrize(
    "flags",
    [
        SYN,
        SYN | ACK,
        SYN | ECE | CWR,
        SYN | ACK | ECE,
        ACK,
        ACK | PSH,
        ACK | FIN,
        ACK | URG | PSH,
        RST,
        RST | ACK,
        RST | FIN,
        RST | ACK | FIN,
    ],
    ids=hex,
)
def test_tcp_legal_flag_combination_parses(flags: int):
    assert parse(raw_segment(flags=flags)) == seg(flags=flags)


def test_tcp_reserved_bits_ignored():
    assert parse(raw_segment(reserved=0x0F)) == seg()


@pytest.mark.parametrize(
    "options",
    [
        "0200",  # length 0
        "0301",  # length 1
        "fe00",  # unknown kind, length 0
        "080a00000000",  # timestamps running past the header
        "010101fe",  # unknown kind as the last byte: no length byte
        "020305",  # MSS of 3 bytes
        "0205000000",  # MSS of 5 bytes
        "0302",  # window scale of 2 bytes
        "03040700",  # window scale of 4 bytes
        "040300",  # SACK-Permitted of 3 bytes
        "0502",  # SACK with no block
        "05090000000000000000",  # SACK of 9 bytes
        "050b0000000000000000000000",  # SACK of 11 bytes
        "08080000000000000000",  # timestamps of 8 bytes
        "080c000000000000000000000000",  # timestamps of 12 bytes
        "020405b4" + "0300",  # good MSS, then length 0
    ],
)
def test_tcp_malformed_option_drops_bad_option(options: str):
    raw_options = bytes.fromhex(options)
    raw_options += bytes(-len(raw_options) % 4)
    assert parse(raw_segment(raw_options)) is Drop.TCP_BAD_OPTION


def test_tcp_unknown_options_skipped_by_length():
    options = bytes.fromhex("fe06abcdef01 1e02 020405b4")
    assert parse(raw_segment(options)) == seg(header_len=32, mss=1460)


def test_tcp_eol_ends_option_list_and_rest_ignored():
    options = bytes.fromhex("020405b4 00 0200ff")
    assert parse(raw_segment(options)) == seg(header_len=28, mss=1460)


def test_tcp_nops_only_parse_no_options():
    assert parse(raw_segment(b"\x01" * 40)) == seg(header_len=60)


@pytest.mark.parametrize(("shift", "used"), [(14, 14), (15, 14), (200, 14), (255, 14), (0, 0)])
def test_tcp_window_scale_above_14_clamped(shift: int, used: int):
    assert parse(raw_segment(bytes([1, 3, 3, shift]), flags=SYN)) == seg(
        flags=SYN, header_len=24, wscale=used
    )


def test_tcp_repeated_option_last_one_counts():
    options = bytes.fromhex("020405b4 02040218")
    assert parse(raw_segment(options)) == seg(header_len=28, mss=536)


def test_tcp_four_sack_blocks_fill_option_space():
    edges = list(range(1, 9))
    options = b"\x01\x01" + struct.pack("!BB8I", 5, 34, *edges)
    assert parse(raw_segment(options)) == seg(
        header_len=56, sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8))
    )


def test_tcp_32_byte_header_not_nop_nop_ts_takes_option_loop():
    raw = raw_segment(bytes.fromhex("01010402 01030307 020405b4"), flags=SYN)
    assert parse(raw) == seg(flags=SYN, header_len=32, sack_permitted=True, wscale=7, mss=1460)
    # NOP NOP TS at the start but the header is longer: generic loop, same fields.
    raw = raw_segment(bytes.fromhex("0101080a") + struct.pack("!II", 3, 4) + b"\x01\x01\x04\x02")
    assert parse(raw) == seg(header_len=36, ts_val=3, ts_ecr=4, sack_permitted=True)


# ---------------------------------------------------------------- misuse


def test_tcp_parse_range_outside_buffer_raises_value_error():
    with pytest.raises(ValueError, match="outside a buffer"):
        parse_tcp(bytes(20), 1, 20, SRC, DST)
    with pytest.raises(ValueError, match="outside a buffer"):
        parse_tcp(bytes(20), -1, 5, SRC, DST)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flags": 0x100}, "flags"),
        ({"flags": -1}, "flags"),
        ({"sport": 65536}, "bad TCP field"),
        ({"dport": -1}, "bad TCP field"),
        ({"seq": 2**32}, "bad TCP field"),
        ({"ack": -1}, "bad TCP field"),
        ({"window": 65536}, "bad TCP field"),
        ({"urgent": 65536}, "bad TCP field"),
        ({"src": 2**32}, "bad TCP field"),
        ({"dst": -1}, "bad TCP field"),
        ({"mss": 65536}, "bad TCP field"),
        ({"ts": (2**32, 0)}, "bad TCP field"),
        ({"mss": 1460, "ts": (0, 0), "src": 2**32}, "bad TCP field"),
        ({"sack_blocks": ((0, 2**32),)}, "bad TCP field"),
        ({"wscale": 15}, "window scale"),
        ({"wscale": -1}, "window scale"),
        ({"sack_blocks": ((1, 2),) * 5}, "only 40 fit"),
        ({"sack_blocks": ((1, 2),) * 4, "ts": (0, 0)}, "only 40 fit"),
        ({"payload_len": -1}, "payload"),
        ({"payload_len": TCP_MAX_LEN - TCP_HLEN + 1}, "payload"),
        ({"payload_len": 100}, "does not fit"),
    ],
)
def test_tcp_emit_misuse_raises_value_error(kwargs: dict[str, Any], match: str):
    args: dict[str, Any] = {
        "sport": 1,
        "dport": 2,
        "seq": 0,
        "ack": 0,
        "flags": ACK,
        "window": 0,
        "src": SRC,
        "dst": DST,
        "payload_len": 0,
    } | kwargs
    with pytest.raises(ValueError, match=match):
        emit_tcp(bytearray(80), 0, **args)


def test_tcp_emit_largest_segment_fits():
    buf = bytearray(TCP_MAX_LEN)
    hlen = emit_tcp(
        buf,
        0,
        sport=1,
        dport=2,
        seq=0,
        ack=0,
        flags=ACK,
        window=0,
        src=SRC,
        dst=DST,
        payload_len=TCP_MAX_LEN - TCP_HLEN,
    )
    assert hlen == TCP_HLEN
    assert parse(buf) == TcpSegment(1, 2, 0, 0, ACK, 0, 0, TCP_HLEN, **NO_OPTIONS)


# ---------------------------------------------------------------- random bytes


def check_invariants(got: TcpSegment | Drop, length: int) -> None:
    assert isinstance(got, TcpSegment | Drop)
    if isinstance(got, Drop):
        assert got.name.startswith("TCP_")
        return
    assert TCP_HLEN <= got.header_len <= length
    assert got.header_len % 4 == 0
    assert got.sport and got.dport
    assert 0 <= got.flags <= 0xFF
    assert not (got.flags & SYN and got.flags & (FIN | RST))
    assert got.flags & (ACK | SYN | RST)
    assert got.mss is None or 0 <= got.mss <= 0xFFFF
    assert got.wscale is None or 0 <= got.wscale <= MAX_WSCALE
    assert len(got.sack_blocks) <= 4
    assert all(0 <= e < 2**32 for block in got.sack_blocks for e in block)
    assert (got.ts_val is None) is (got.ts_ecr is None)
    assert (
        sum(
            (
                4 * (got.mss is not None),
                3 * (got.wscale is not None),
                2 * got.sack_permitted,
                (2 + 8 * len(got.sack_blocks)) * bool(got.sack_blocks),
                10 * (got.ts_val is not None),
            )
        )
        <= got.header_len - TCP_HLEN
    )


buffer_kind = st.sampled_from(["bytes", "bytearray", "memoryview"])


def as_buffer(data: bytes, kind: str) -> bytes | bytearray | memoryview:
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    pool = bytearray(b"\xa5" * 5) + data + bytearray(b"\x5a" * 5)
    return memoryview(pool)[5 : 5 + len(data)]


@FUZZ
@given(
    data=st.data(),
    blob=st.binary(max_size=120),
    verify=st.booleans(),
    kind=buffer_kind,
    src=u32,
    dst=u32,
)
def test_tcp_random_bytes_return_segment_or_drop(data, blob, verify, kind, src, dst):
    off = data.draw(st.integers(0, len(blob)), label="off")
    length = data.draw(st.integers(0, len(blob) - off), label="length")
    buf = as_buffer(blob, kind)
    got = parse_tcp(buf, off, length, src, dst, verify)
    check_invariants(got, length)
    assert bytes(buf) == blob


@FUZZ
@given(
    head=st.binary(min_size=20, max_size=20),
    options=st.binary(max_size=40),
    doff=st.integers(0, 15),
    payload=st.binary(max_size=20),
    kind=buffer_kind,
)
def test_tcp_random_header_with_good_checksum_returns_segment_or_drop(
    head, options, doff, payload, kind
):
    raw = bytearray(head + options + payload)
    raw[12] = doff << 4 | raw[12] & 0x0F
    fix_checksum(raw)
    got = parse_tcp(as_buffer(bytes(raw), kind), 0, len(raw), SRC, DST)
    check_invariants(got, len(raw))


# Option bytes built from plausible pieces, so the option loop is reached often.
option_pieces = st.lists(
    st.one_of(
        st.just(b"\x00"),
        st.just(b"\x01"),
        st.builds(
            lambda kind, size, body: bytes([kind, size]) + body,
            st.integers(0, 255),
            st.integers(0, 48),
            st.binary(max_size=12),
        ),
        st.sampled_from(
            [b"\x02\x04\x05\xb4", b"\x03\x03\x0e", b"\x04\x02", b"\x08\x0a" + bytes(8)]
        ),
        st.binary(min_size=1, max_size=3),
    ),
    max_size=12,
)


@FUZZ
@given(pieces=option_pieces, flags=st.integers(0, 0xFF), cut=st.integers(0, 60))
def test_tcp_random_option_bytes_return_segment_or_drop(pieces, flags, cut):
    options = b"".join(pieces)[:40]
    options += bytes(-len(options) % 4)
    raw = raw_segment(options, flags=flags)
    got = parse(raw)
    check_invariants(got, len(raw))
    got = parse_tcp(raw, 0, max(len(raw) - cut, 0), SRC, DST, False)
    check_invariants(got, max(len(raw) - cut, 0))


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)


@FUZZ
@given(opts=option_args(), payload=st.binary(max_size=32), mutate=mutations, refix=st.booleans())
def test_tcp_mutated_segment_returns_segment_or_drop(opts, payload, mutate, refix):
    raw = emit(payload, **opts)
    for index, value in mutate:
        raw[index % len(raw)] = value
    if refix:
        fix_checksum(raw)
    check_invariants(parse(raw), len(raw))
