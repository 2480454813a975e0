"""IPv4 header: parse, emit, drops, address helpers, against scapy."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, IPOption_RR, fragment
from scapy.layers.l2 import Ether

from ustack.wire.drop import Drop
from ustack.wire.ethernet import ETH_HLEN
from ustack.wire.ipv4 import (
    IPV4_HLEN,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    IPv4Header,
    emit_ipv4,
    ip_from_str,
    ip_to_str,
    is_fragment,
    parse_ipv4,
)

SRC = 0xC6120001  # 198.18.0.1
DST = 0xC6120002  # 198.18.0.2


def ref_checksum(data: bytes) -> int:
    total: int = sum(w for (w,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def header(
    *,
    vihl: int = 0x45,
    total_len: int = 28,
    flags_frag: int = 0,
    proto: int = PROTO_UDP,
    extra: bytes = b"",
    data: bytes | None = None,
    fix_checksum: bool = True,
) -> bytes:
    """A hand-built header (with a correct checksum unless told) and its data."""
    hdr = bytearray(
        struct.pack("!BBHHHBBHII", vihl, 0, total_len, 7, flags_frag, 64, proto, 0, SRC, DST)
    )
    hdr += extra
    if fix_checksum:
        struct.pack_into("!H", hdr, 10, ref_checksum(bytes(hdr)))
    body = bytes(max(total_len - len(hdr), 0)) if data is None else data
    return bytes(hdr) + body


def test_ipv4_scapy_datagram_parses_same_fields():
    raw = bytes(
        IP(src="198.18.0.1", dst="198.18.0.2", tos=0xB8, id=0x1234, flags="DF", ttl=17)
        / UDP(sport=5000, dport=53)
        / b"payload"
    )
    assert parse_ipv4(raw, 0, len(raw)) == IPv4Header(
        header_len=20,
        tos=0xB8,
        total_len=35,
        ident=0x1234,
        df=True,
        mf=False,
        frag_off=0,
        ttl=17,
        proto=PROTO_UDP,
        src=SRC,
        dst=DST,
    )


def test_ipv4_options_skipped_by_ihl_parses_header_len():
    pkt = IP(src="198.18.0.1", dst="198.18.0.2", options=[IPOption_RR(routers=["1.2.3.4"] * 3)])
    raw = bytes(pkt / UDP() / b"abc")
    h = parse_ipv4(raw, 0, len(raw))
    assert isinstance(h, IPv4Header)
    assert h.header_len == 36
    assert h.header_len == IP(raw).ihl * 4
    assert h.payload_len == 8 + 3
    assert h.total_len == len(raw)


def test_ipv4_padded_ethernet_frame_parses_total_len():
    frame = bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2", proto=PROTO_ICMP) / b"12345678")
    frame += bytes(60 - len(frame))
    h = parse_ipv4(memoryview(frame), ETH_HLEN, 60 - ETH_HLEN)
    assert isinstance(h, IPv4Header)
    assert (h.total_len, h.payload_len, h.proto) == (28, 8, PROTO_ICMP)


def test_ipv4_emit_scapy_reads_same_fields_and_checksum():
    buf = bytearray(IPV4_HLEN + 5)
    buf[IPV4_HLEN:] = b"hello"
    n = emit_ipv4(
        buf,
        0,
        src=SRC,
        dst=DST,
        proto=PROTO_TCP,
        payload_len=5,
        ident=0xBEEF,
        ttl=3,
        df=True,
        tos=0x10,
    )
    assert n == IPV4_HLEN
    pkt = IP(bytes(buf))
    assert (pkt.version, pkt.ihl, pkt.tos, pkt.len, pkt.id) == (4, 5, 0x10, 25, 0xBEEF)
    assert (str(pkt.flags), pkt.frag, pkt.ttl, pkt.proto) == ("DF", 0, 3, 6)
    assert (pkt.src, pkt.dst) == ("198.18.0.1", "198.18.0.2")
    ours = pkt.chksum
    del pkt.chksum
    assert IP(bytes(pkt)).chksum == ours


def test_ipv4_emit_matches_scapy_header_bytes():
    buf = bytearray(40)
    emit_ipv4(
        buf, 10, src=SRC, dst=DST, proto=PROTO_UDP, payload_len=8, ident=99, mf=True, frag_off=1480
    )
    ref = bytes(
        IP(src="198.18.0.1", dst="198.18.0.2", proto=17, id=99, flags="MF", frag=185, len=28)
    )
    assert bytes(buf[10:30]) == ref[:20]
    assert bytes(buf[:10]) == bytes(10)


def test_ipv4_scapy_fragments_parse_offsets_and_more_flag():
    whole = IP(src="198.18.0.1", dst="198.18.0.2", id=77) / UDP(sport=1, dport=2) / (b"z" * 3000)
    frags = fragment(whole, fragsize=1480)  # type: ignore[no-untyped-call]
    assert len(frags) == 3
    got = []
    for f in frags:
        raw = bytes(f)
        h = parse_ipv4(raw, 0, len(raw))
        assert isinstance(h, IPv4Header)
        assert is_fragment(h)
        got.append((h.ident, h.mf, h.frag_off, h.payload_len))
    assert got == [(77, True, 0, 1480), (77, True, 1480, 1480), (77, False, 2960, 48)]


def test_ipv4_whole_datagram_is_not_fragment():
    raw = header()
    h = parse_ipv4(raw, 0, len(raw))
    assert isinstance(h, IPv4Header)
    assert not is_fragment(h)


def test_ipv4_19_bytes_drops_truncated():
    assert parse_ipv4(header(), 0, 19) is Drop.IPV4_TRUNCATED


def test_ipv4_options_beyond_length_drops_truncated():
    raw = header(vihl=0x4F, total_len=60, extra=bytes(40))
    assert parse_ipv4(raw, 0, 40) is Drop.IPV4_TRUNCATED
    assert isinstance(parse_ipv4(raw, 0, 60), IPv4Header)


def test_ipv4_total_len_beyond_frame_drops_truncated():
    raw = header(total_len=100, data=bytes(8))
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_TRUNCATED


@pytest.mark.parametrize("version", [0, 5, 6, 15])
def test_ipv4_version_not_4_drops_bad_version(version: int):
    raw = header(vihl=version << 4 | 5)
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_BAD_VERSION


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ipv4_ihl_below_5_drops_bad_ihl(ihl: int):
    raw = header(vihl=0x40 | ihl)
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_BAD_IHL


def test_ipv4_flipped_byte_drops_bad_checksum():
    raw = bytearray(header())
    raw[8] ^= 0x01
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_BAD_CHECKSUM


def test_ipv4_bad_checksum_unverified_parses():
    raw = header(fix_checksum=False)
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_BAD_CHECKSUM
    h = parse_ipv4(raw, 0, len(raw), verify_checksum=False)
    assert isinstance(h, IPv4Header)
    assert h.total_len == 28


def test_ipv4_bad_option_checksum_drops_bad_checksum():
    raw = bytearray(header(vihl=0x46, total_len=32, extra=b"\x01\x01\x01\x00"))
    assert isinstance(parse_ipv4(raw, 0, len(raw)), IPv4Header)
    raw[23] = 0x01
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_BAD_CHECKSUM


@pytest.mark.parametrize(("vihl", "total_len"), [(0x45, 19), (0x45, 0), (0x46, 23)])
def test_ipv4_total_len_below_header_drops_bad_length(vihl: int, total_len: int):
    raw = header(vihl=vihl, total_len=total_len, extra=bytes((vihl & 15) * 4 - 20), data=bytes(8))
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_BAD_LENGTH


def test_ipv4_scapy_evil_bit_drops_reserved_flag():
    raw = bytes(IP(src="198.18.0.1", dst="198.18.0.2", flags="evil") / b"x")
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_RESERVED_FLAG


@pytest.mark.parametrize("data_len", [0, 12, 1479])
def test_ipv4_nonfinal_fragment_not_multiple_of_8_drops_frag_bad_length(data_len: int):
    raw = header(total_len=20 + data_len, flags_frag=0x2000 | 10)
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_FRAG_BAD_LENGTH


def test_ipv4_final_fragment_odd_length_parses():
    raw = header(total_len=20 + 13, flags_frag=10)
    h = parse_ipv4(raw, 0, len(raw))
    assert isinstance(h, IPv4Header)
    assert (h.mf, h.frag_off, h.payload_len, h.df) == (False, 80, 13, False)


def test_ipv4_fragment_past_65535_drops_frag_oversize():
    raw = header(total_len=20 + 16, flags_frag=0x1FFF)
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_FRAG_OVERSIZE
    raw = header(total_len=20 + 4, flags_frag=65512 >> 3)
    assert parse_ipv4(raw, 0, len(raw)) is Drop.IPV4_FRAG_OVERSIZE


def test_ipv4_fragment_ending_at_65535_parses():
    raw = header(total_len=20 + 3, flags_frag=65512 >> 3)
    h = parse_ipv4(raw, 0, len(raw))
    assert isinstance(h, IPv4Header)
    assert h.frag_off == 65512


def test_ipv4_range_outside_buffer_raises_value_error():
    with pytest.raises(ValueError, match="outside a buffer"):
        parse_ipv4(header(), 0, 29)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"payload_len": -1}, "payload"),
        ({"payload_len": 65516}, "payload"),
        ({"frag_off": 4}, "fragment offset"),
        ({"frag_off": 65536}, "fragment offset"),
        ({"ttl": 256}, "cannot write"),
        ({"proto": -1}, "cannot write"),
        ({"src": 2**32}, "cannot write"),
        ({"ident": 65536}, "cannot write"),
    ],
)
def test_ipv4_emit_field_out_of_range_raises_value_error(kwargs: dict[str, int], match: str):
    args = {"src": SRC, "dst": DST, "proto": PROTO_UDP, "payload_len": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        emit_ipv4(bytearray(40), 0, **args)  # type: ignore[arg-type]


def test_ipv4_emit_small_buffer_raises_value_error():
    with pytest.raises(ValueError, match="cannot write"):
        emit_ipv4(bytearray(25), 6, src=SRC, dst=DST, proto=PROTO_UDP, payload_len=0)
    with pytest.raises(ValueError, match="negative offset"):
        emit_ipv4(bytearray(25), -20, src=SRC, dst=DST, proto=PROTO_UDP, payload_len=0)


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("198.18.0.2", 0xC6120002),
        ("0.0.0.0", 0),
        ("255.255.255.255", 0xFFFFFFFF),
        ("10.0.0.1", 0x0A000001),
    ],
)
def test_ip_from_str_dotted_quad_gives_int_and_back(text: str, addr: int):
    assert ip_from_str(text) == addr
    assert ip_to_str(addr) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.2.3",
        "1.2.3.4.5",
        "1.2.3.256",
        "01.2.3.4",
        "1.2.3.-4",
        "1.2.3.4 ",
        "a.b.c.d",
        "1..2.3",
        "\u0661.2.3.4",
    ],
)
def test_ip_from_str_bad_text_raises_value_error(text: str):
    with pytest.raises(ValueError, match="not a dotted-quad"):
        ip_from_str(text)


@pytest.mark.parametrize("addr", [-1, 2**32])
def test_ip_to_str_out_of_range_raises_value_error(addr: int):
    with pytest.raises(ValueError, match=r"0\.\.2\*\*32-1"):
        ip_to_str(addr)


@settings(max_examples=300, deadline=None)
@given(
    src=st.integers(0, 2**32 - 1),
    dst=st.integers(0, 2**32 - 1),
    proto=st.integers(0, 255),
    payload_len=st.integers(0, 600),
    ident=st.integers(0, 0xFFFF),
    ttl=st.integers(0, 255),
    df=st.booleans(),
    mf=st.booleans(),
    frag_units=st.integers(0, 0x1FFF),
    tos=st.integers(0, 255),
    off=st.integers(0, 40),
)
def test_ipv4_emit_parse_random_fields_round_trip(
    src, dst, proto, payload_len, ident, ttl, df, mf, frag_units, tos, off
):
    buf = bytearray(off + IPV4_HLEN + payload_len)
    frag_off = frag_units * 8
    emit_ipv4(
        memoryview(buf),
        off,
        src=src,
        dst=dst,
        proto=proto,
        payload_len=payload_len,
        ident=ident,
        ttl=ttl,
        df=df,
        mf=mf,
        frag_off=frag_off,
        tos=tos,
    )
    hdr = bytes(buf[off : off + IPV4_HLEN])
    assert ref_checksum(hdr) == 0
    got = parse_ipv4(bytes(buf), off, IPV4_HLEN + payload_len)
    if mf and (payload_len == 0 or payload_len % 8):
        assert got is Drop.IPV4_FRAG_BAD_LENGTH
    elif (mf or frag_off) and IPV4_HLEN + frag_off + payload_len > 65535:
        assert got is Drop.IPV4_FRAG_OVERSIZE
    else:
        assert got == IPv4Header(
            20, tos, 20 + payload_len, ident, df, mf, frag_off, ttl, proto, src, dst
        )
        assert ip_from_str(ip_to_str(src)) == src
