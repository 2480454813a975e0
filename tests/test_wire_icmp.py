"""ICMP header, echo and error messages: parse, emit, drops, against scapy."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror

from ustack.wire.drop import Drop
from ustack.wire.icmp import (
    DEST_UNREACH,
    ECHO_REPLY,
    ECHO_REQUEST,
    ERROR_QUOTE_MAX,
    EXCEEDED_REASSEMBLY,
    ICMP_HLEN,
    TIME_EXCEEDED,
    UNREACH_FRAG_NEEDED,
    UNREACH_HOST,
    UNREACH_PORT,
    IcmpHeader,
    emit_dest_unreachable,
    emit_icmp,
    emit_icmp_error,
    parse_icmp,
)
from ustack.wire.ipv4 import IPV4_HLEN, PROTO_ICMP, emit_ipv4

US = 0xC6120002  # 198.18.0.2
PEER = 0xC6120001  # 198.18.0.1


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(w for (w,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def scapy_checksum(icmp_bytes: bytes) -> int:
    """The checksum scapy computes for the same message."""
    pkt = ICMP(icmp_bytes)
    del pkt.chksum
    return int(ICMP(bytes(pkt)).chksum)


def offending_udp(data_len: int) -> bytes:
    return bytes(
        IP(src="198.18.0.1", dst="198.18.0.2", id=4242)
        / UDP(sport=40000, dport=9)
        / (bytes(range(256)) * (data_len // 256) + bytes(data_len % 256))
    )


def test_icmp_scapy_echo_request_parses_same_fields():
    raw = bytes(ICMP(type=8, id=0x1234, seq=7) / b"abcdefg")
    h = parse_icmp(raw, 0, len(raw))
    assert h == IcmpHeader(ECHO_REQUEST, 0, ICMP(raw).chksum, 0x12340007)


def test_icmp_emit_echo_reply_scapy_reads_same_fields_and_checksum():
    buf = bytearray(ICMP_HLEN + 11)
    buf[ICMP_HLEN:] = b"hello world"
    assert emit_icmp(buf, 0, ECHO_REPLY, 0, 0xABCD0102, 11) == ICMP_HLEN
    pkt = ICMP(bytes(buf))
    assert (pkt.type, pkt.code, pkt.id, pkt.seq) == (0, 0, 0xABCD, 0x0102)
    assert bytes(pkt.payload) == b"hello world"
    assert pkt.chksum == scapy_checksum(bytes(buf))


def test_icmp_echo_request_turned_into_reply_in_place_verifies():
    frame = bytearray(
        bytes(IP(src="198.18.0.1", dst="198.18.0.2") / ICMP(id=9, seq=3) / (b"p" * 56))
    )
    req = parse_icmp(memoryview(frame), IPV4_HLEN, 64)
    assert isinstance(req, IcmpHeader)
    assert req.type == ECHO_REQUEST
    emit_icmp(memoryview(frame), IPV4_HLEN, ECHO_REPLY, 0, req.rest, 56)
    reply = parse_icmp(bytes(frame), IPV4_HLEN, 64)
    assert isinstance(reply, IcmpHeader)
    assert (reply.type, reply.code, reply.rest) == (ECHO_REPLY, 0, (9 << 16) | 3)
    assert reply.checksum == scapy_checksum(bytes(frame[IPV4_HLEN:]))


def test_icmp_port_unreachable_quotes_to_576_bytes_scapy_agrees():
    original = offending_udp(1000)
    buf = bytearray(700)
    n = emit_dest_unreachable(buf, IPV4_HLEN, UNREACH_PORT, original)
    assert n == ICMP_HLEN + ERROR_QUOTE_MAX == 556
    emit_ipv4(buf, 0, src=US, dst=PEER, proto=PROTO_ICMP, payload_len=n)
    assert IPV4_HLEN + n == 576
    assert bytes(buf[IPV4_HLEN + ICMP_HLEN : IPV4_HLEN + n]) == original[:548]
    assert bytes(buf[576:]) == bytes(700 - 576)
    pkt = IP(bytes(buf[:576]))
    assert (pkt[ICMP].type, pkt[ICMP].code) == (3, 3)
    assert (pkt[IPerror].src, pkt[IPerror].dst, pkt[IPerror].id) == (
        "198.18.0.1",
        "198.18.0.2",
        4242,
    )
    assert (pkt[UDPerror].sport, pkt[UDPerror].dport) == (40000, 9)
    assert pkt[ICMP].chksum == scapy_checksum(bytes(buf[IPV4_HLEN:576]))
    assert parse_icmp(buf, IPV4_HLEN, n) == IcmpHeader(
        DEST_UNREACH, UNREACH_PORT, pkt[ICMP].chksum, 0
    )


def test_icmp_unreachable_short_original_quoted_whole():
    original = offending_udp(3)
    buf = bytearray(100)
    n = emit_dest_unreachable(buf, 0, UNREACH_HOST, memoryview(original))
    assert n == ICMP_HLEN + len(original) == 39
    assert bytes(buf[ICMP_HLEN:n]) == original
    h = parse_icmp(buf, 0, n)
    assert isinstance(h, IcmpHeader)
    assert (h.type, h.code, h.rest) == (DEST_UNREACH, UNREACH_HOST, 0)
    assert h.checksum == scapy_checksum(bytes(buf[:n]))


def test_icmp_frag_needed_carries_mtu_scapy_reads_nexthopmtu():
    buf = bytearray(100)
    n = emit_dest_unreachable(buf, 0, UNREACH_FRAG_NEEDED, offending_udp(20), mtu=1400)
    pkt = ICMP(bytes(buf[:n]))
    assert (pkt.type, pkt.code, pkt.nexthopmtu) == (3, 4, 1400)
    h = parse_icmp(buf, 0, n)
    assert isinstance(h, IcmpHeader)
    assert h.rest == 1400


def test_icmp_time_exceeded_reassembly_error_round_trips():
    original = offending_udp(100)
    buf = bytearray(200)
    n = emit_icmp_error(buf, 0, TIME_EXCEEDED, EXCEEDED_REASSEMBLY, original)
    assert n == ICMP_HLEN + len(original)
    h = parse_icmp(buf, 0, n)
    assert isinstance(h, IcmpHeader)
    assert (h.type, h.code, h.rest) == (11, 1, 0)


def test_icmp_echo_request_all_ones_ident_seq_parses():
    raw = bytes(ICMP(type=8, id=0xFFFF, seq=0xFFFF) / b"\xff\xff\xff\xff")
    assert ref_sum(raw) == 0xFFFF
    assert parse_icmp(raw, 0, len(raw)) == IcmpHeader(ECHO_REQUEST, 0, 0xF7FF, 0xFFFFFFFF)


def test_icmp_7_bytes_drops_truncated():
    raw = bytes(ICMP())
    assert parse_icmp(raw, 0, 7) is Drop.ICMP_TRUNCATED
    assert parse_icmp(raw, 0, 0) is Drop.ICMP_TRUNCATED


def test_icmp_flipped_payload_byte_drops_bad_checksum():
    raw = bytearray(bytes(ICMP(type=8, id=1, seq=1) / b"abcdefg"))
    assert isinstance(parse_icmp(raw, 0, len(raw)), IcmpHeader)
    raw[-1] ^= 0x20
    assert parse_icmp(raw, 0, len(raw)) is Drop.ICMP_BAD_CHECKSUM


def test_icmp_message_cut_short_drops_bad_checksum():
    raw = bytes(ICMP(type=8, id=1, seq=1) / b"abcdefgh")
    assert parse_icmp(raw, 0, len(raw) - 2) is Drop.ICMP_BAD_CHECKSUM


def test_icmp_range_outside_buffer_raises_value_error():
    with pytest.raises(ValueError, match="outside a buffer"):
        parse_icmp(bytes(8), 4, 8)


def test_icmp_emit_payload_beyond_buffer_raises_value_error():
    with pytest.raises(ValueError, match="does not fit"):
        emit_icmp(bytearray(20), 4, ECHO_REPLY, 0, 0, 9)
    with pytest.raises(ValueError, match="does not fit"):
        emit_icmp(bytearray(20), 0, ECHO_REPLY, 0, 0, -1)


@pytest.mark.parametrize(("type_", "code", "rest"), [(256, 0, 0), (0, -1, 0), (0, 0, 2**32)])
def test_icmp_emit_field_out_of_range_raises_value_error(type_: int, code: int, rest: int):
    with pytest.raises(ValueError, match="bad ICMP field"):
        emit_icmp(bytearray(8), 0, type_, code, rest, 0)


def test_icmp_error_buffer_too_small_raises_value_error():
    with pytest.raises(ValueError, match="does not fit"):
        emit_dest_unreachable(bytearray(300), 0, UNREACH_PORT, offending_udp(1000))


def test_icmp_mtu_without_frag_needed_raises_value_error():
    with pytest.raises(ValueError, match="frag needed"):
        emit_dest_unreachable(bytearray(100), 0, UNREACH_PORT, offending_udp(0), mtu=1500)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        emit_dest_unreachable(bytearray(100), 0, UNREACH_FRAG_NEEDED, offending_udp(0), mtu=70000)


@settings(max_examples=300, deadline=None)
@given(
    type_=st.integers(0, 255),
    code=st.integers(0, 255),
    rest=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=300),
    off=st.integers(0, 40),
)
def test_icmp_emit_parse_random_fields_round_trip(type_, code, rest, payload, off):
    buf = bytearray(off + ICMP_HLEN + len(payload))
    buf[off + ICMP_HLEN :] = payload
    emit_icmp(memoryview(buf), off, type_, code, rest, len(payload))
    message = bytes(buf[off:])
    assert ref_sum(message) == 0xFFFF
    (field,) = struct.unpack_from("!H", buf, off + 2)
    assert parse_icmp(bytes(buf), off, ICMP_HLEN + len(payload)) == IcmpHeader(
        type_, code, field, rest
    )
    assert bytes(buf[off + ICMP_HLEN :]) == payload
