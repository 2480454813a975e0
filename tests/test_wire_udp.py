"""UDP header and checksum: parse, emit, drops, against scapy."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from ustack.wire.drop import Drop
from ustack.wire.ipv4 import IPV4_HLEN, PROTO_UDP, emit_ipv4
from ustack.wire.udp import UDP_HLEN, UdpHeader, emit_udp, parse_udp

SRC = 0xC6120001  # 198.18.0.1
DST = 0xC6120002  # 198.18.0.2


def ref_sum(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = initial + sum(w for (w,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_udp_checksum_ok(src: int, dst: int, datagram: bytes) -> bool:
    pseudo = struct.pack("!IIBBH", src, dst, 0, PROTO_UDP, len(datagram))
    return ref_sum(pseudo + datagram) == 0xFFFF


def scapy_udp(payload: bytes = b"hello", **kw: Any) -> bytes:
    """A UDP datagram (no IP header) with scapy's checksum for SRC -> DST."""
    raw = bytes(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(**kw) / payload)
    return raw[IPV4_HLEN:]


def test_udp_scapy_datagram_parses_same_fields():
    raw = scapy_udp(b"hello", sport=40000, dport=53)
    h = parse_udp(raw, 0, len(raw), SRC, DST)
    assert h == UdpHeader(40000, 53, 13, UDP(raw).chksum)
    assert h.checksum != 0


def test_udp_emit_scapy_reads_same_fields_and_checksum():
    buf = bytearray(IPV4_HLEN + UDP_HLEN + 11)
    buf[IPV4_HLEN + UDP_HLEN :] = b"hello world"
    emit_ipv4(buf, 0, src=SRC, dst=DST, proto=PROTO_UDP, payload_len=UDP_HLEN + 11)
    assert emit_udp(buf, IPV4_HLEN, sport=7, dport=40001, payload_len=11, src=SRC, dst=DST) == 8
    pkt = IP(bytes(buf))
    assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len) == (7, 40001, 19)
    assert bytes(pkt[UDP].payload) == b"hello world"
    ours = pkt[UDP].chksum
    del pkt[UDP].chksum
    assert IP(bytes(pkt))[UDP].chksum == ours
    assert bytes(buf[IPV4_HLEN:]) == scapy_udp(b"hello world", sport=7, dport=40001)


def test_udp_computed_zero_checksum_sent_as_ffff():
    buf = bytearray(UDP_HLEN + 2)
    emit_udp(buf, 0, sport=1, dport=2, payload_len=2, src=SRC, dst=DST)
    (first,) = struct.unpack_from("!H", buf, 6)
    # A payload word equal to the checksum it produced makes the new sum all ones.
    struct.pack_into("!H", buf, UDP_HLEN, first)
    emit_udp(buf, 0, sport=1, dport=2, payload_len=2, src=SRC, dst=DST)
    assert struct.unpack_from("!H", buf, 6) == (0xFFFF,)
    assert bytes(buf) == scapy_udp(bytes(buf[UDP_HLEN:]), sport=1, dport=2)
    assert parse_udp(buf, 0, len(buf), SRC, DST) == UdpHeader(1, 2, 10, 0xFFFF)


def test_udp_zero_checksum_accepted_without_verifying():
    raw = bytearray(scapy_udp(b"data", sport=5, dport=6, chksum=0))
    raw[-1] ^= 0xFF
    assert parse_udp(raw, 0, len(raw), SRC, DST) == UdpHeader(5, 6, 12, 0)


def test_udp_ip_payload_longer_than_udp_length_parses_udp_length():
    raw = scapy_udp(b"abc", sport=1, dport=2) + b"trailing junk"
    h = parse_udp(raw, 0, len(raw), SRC, DST)
    assert isinstance(h, UdpHeader)
    assert h.length == 11


def test_udp_odd_length_datagram_in_pool_slot_parses():
    raw = scapy_udp(b"odd", sport=9, dport=10)
    pool = bytearray(b"\xee" * 7) + raw + b"\xee" * 9
    h = parse_udp(memoryview(pool), 7, len(raw), SRC, DST)
    assert h == UdpHeader(9, 10, 11, UDP(raw).chksum)


def test_udp_7_bytes_drops_truncated():
    raw = scapy_udp()
    assert parse_udp(raw, 0, 7, SRC, DST) is Drop.UDP_TRUNCATED
    assert parse_udp(raw, 0, 0, SRC, DST) is Drop.UDP_TRUNCATED


@pytest.mark.parametrize("ulen", [0, 7])
def test_udp_length_below_8_drops_bad_length(ulen: int):
    raw = scapy_udp(b"x", len=ulen)
    assert parse_udp(raw, 0, len(raw), SRC, DST) is Drop.UDP_BAD_LENGTH


def test_udp_length_beyond_ip_payload_drops_bad_length():
    raw = scapy_udp(b"hello")
    assert parse_udp(raw, 0, len(raw) - 1, SRC, DST) is Drop.UDP_BAD_LENGTH


def test_udp_flipped_payload_byte_drops_bad_checksum():
    raw = bytearray(scapy_udp(b"hello"))
    raw[-2] ^= 0x01
    assert parse_udp(raw, 0, len(raw), SRC, DST) is Drop.UDP_BAD_CHECKSUM


def test_udp_wrong_pseudo_header_drops_bad_checksum():
    raw = scapy_udp(b"hello")
    assert parse_udp(raw, 0, len(raw), SRC, DST + 1) is Drop.UDP_BAD_CHECKSUM


def test_udp_bad_checksum_unverified_parses():
    raw = bytearray(scapy_udp(b"hello", sport=3, dport=4))
    raw[-1] ^= 0x01
    h = parse_udp(raw, 0, len(raw), SRC, DST, verify_checksum=False)
    assert isinstance(h, UdpHeader)
    assert (h.sport, h.dport, h.length) == (3, 4, 13)


def test_udp_range_outside_buffer_raises_value_error():
    with pytest.raises(ValueError, match="outside a buffer"):
        parse_udp(bytes(8), 1, 8, SRC, DST)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sport": 65536}, "bad UDP field"),
        ({"dport": -1}, "bad UDP field"),
        ({"src": 2**32}, "bad UDP field"),
        ({"dst": -1}, "bad UDP field"),
        ({"payload_len": -1}, "payload"),
        ({"payload_len": 65528}, "payload"),
        ({"payload_len": 100}, "does not fit"),
    ],
)
def test_udp_emit_misuse_raises_value_error(kwargs: dict[str, int], match: str):
    args = {"sport": 1, "dport": 2, "payload_len": 0, "src": SRC, "dst": DST} | kwargs
    with pytest.raises(ValueError, match=match):
        emit_udp(bytearray(64), 0, **args)


@settings(max_examples=300, deadline=None)
@given(
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    src=st.integers(0, 2**32 - 1),
    dst=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=600),
    off=st.integers(0, 40),
    pad=st.integers(0, 20),
)
def test_udp_emit_parse_random_fields_round_trip(sport, dport, src, dst, payload, off, pad):
    n = UDP_HLEN + len(payload)
    buf = bytearray(off + n + pad)
    buf[off + UDP_HLEN : off + n] = payload
    emit_udp(
        memoryview(buf), off, sport=sport, dport=dport, payload_len=len(payload), src=src, dst=dst
    )
    datagram = bytes(buf[off : off + n])
    assert ref_udp_checksum_ok(src, dst, datagram)
    (field,) = struct.unpack_from("!H", datagram, 6)
    assert field != 0
    assert parse_udp(bytes(buf), off, n + pad, src, dst) == UdpHeader(sport, dport, n, field)
