"""ARP for IPv4 over Ethernet: parse, emit, drops, against scapy."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether

from ustack.wire.arp import ARP_LEN, OP_REPLY, OP_REQUEST, ArpPacket, emit_arp, parse_arp
from ustack.wire.drop import Drop
from ustack.wire.ethernet import ETH_HLEN

MAC_K = bytes.fromhex("020000000001")
MAC_U = bytes.fromhex("020000000002")
IP_K = 0xC6120001  # 198.18.0.1
IP_U = 0xC6120002  # 198.18.0.2


def scapy_request() -> bytes:
    return bytes(
        ARP(
            op=1,
            hwsrc="02:00:00:00:00:01",
            psrc="198.18.0.1",
            hwdst="00:00:00:00:00:00",
            pdst="198.18.0.2",
        )
    )


def test_arp_scapy_request_parses_same_fields():
    raw = scapy_request()
    assert parse_arp(raw, 0, len(raw)) == ArpPacket(OP_REQUEST, MAC_K, IP_K, bytes(6), IP_U)


def test_arp_scapy_reply_in_padded_frame_parses_same_fields():
    frame = bytes(
        Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02")
        / ARP(op=2, hwsrc="02:00:00:00:00:02", psrc="198.18.0.2", hwdst="02:00:00:00:00:01")
        / (b"\0" * 18)
    )
    assert len(frame) == 60
    got = parse_arp(memoryview(frame), ETH_HLEN, len(frame) - ETH_HLEN)
    assert got == ArpPacket(OP_REPLY, MAC_U, IP_U, MAC_K, 0)


def test_arp_emit_reply_scapy_reads_same_fields():
    buf = bytearray(ETH_HLEN + ARP_LEN)
    assert emit_arp(buf, ETH_HLEN, OP_REPLY, MAC_U, IP_U, MAC_K, IP_K) == ARP_LEN
    pkt = ARP(bytes(buf[ETH_HLEN:]))
    assert (pkt.hwtype, pkt.ptype, pkt.hwlen, pkt.plen, pkt.op) == (1, 0x0800, 6, 4, 2)
    assert (pkt.hwsrc, pkt.psrc) == ("02:00:00:00:00:02", "198.18.0.2")
    assert (pkt.hwdst, pkt.pdst) == ("02:00:00:00:00:01", "198.18.0.1")
    assert bytes(buf[:ETH_HLEN]) == bytes(ETH_HLEN)


def test_arp_emit_request_matches_scapy_bytes():
    buf = bytearray(ARP_LEN)
    emit_arp(buf, 0, OP_REQUEST, MAC_K, IP_K, bytes(6), IP_U)
    assert bytes(buf) == scapy_request()


def test_arp_27_bytes_drops_truncated():
    raw = scapy_request()
    assert parse_arp(raw, 0, 27) is Drop.ARP_TRUNCATED
    assert parse_arp(raw, 0, 0) is Drop.ARP_TRUNCATED


def patched(fmt: str, at: int, value: int) -> bytes:
    buf = bytearray(scapy_request())
    struct.pack_into(fmt, buf, at, value)
    return bytes(buf)


@pytest.mark.parametrize("htype", [0, 6, 0x0100])
def test_arp_non_ethernet_htype_drops_bad_htype(htype: int):
    assert parse_arp(patched("!H", 0, htype), 0, ARP_LEN) is Drop.ARP_BAD_HTYPE


@pytest.mark.parametrize("ptype", [0x86DD, 0x0806, 0x0008])
def test_arp_non_ipv4_ptype_drops_bad_ptype(ptype: int):
    assert parse_arp(patched("!H", 2, ptype), 0, ARP_LEN) is Drop.ARP_BAD_PTYPE


@pytest.mark.parametrize(("at", "value"), [(4, 8), (4, 0), (5, 16), (5, 6)])
def test_arp_wrong_address_lengths_drops_bad_lengths(at: int, value: int):
    assert parse_arp(patched("!B", at, value), 0, ARP_LEN) is Drop.ARP_BAD_LENGTHS


@pytest.mark.parametrize("op", [0, 3, 4, 0x0100])
def test_arp_rarp_or_unknown_op_drops_bad_op(op: int):
    assert parse_arp(patched("!H", 6, op), 0, ARP_LEN) is Drop.ARP_BAD_OP


def test_arp_range_outside_buffer_raises_value_error():
    with pytest.raises(ValueError, match="outside a buffer"):
        parse_arp(scapy_request(), 1, ARP_LEN)


def test_arp_emit_bad_op_raises_value_error():
    with pytest.raises(ValueError, match="ARP op"):
        emit_arp(bytearray(ARP_LEN), 0, 3, MAC_K, IP_K, MAC_U, IP_U)


def test_arp_emit_short_mac_raises_value_error():
    with pytest.raises(ValueError, match="6 bytes"):
        emit_arp(bytearray(ARP_LEN), 0, OP_REQUEST, MAC_K, IP_K, b"", IP_U)


def test_arp_emit_small_buffer_raises_value_error():
    with pytest.raises(ValueError, match="no room"):
        emit_arp(bytearray(ARP_LEN + 3), 4, OP_REQUEST, MAC_K, IP_K, MAC_U, IP_U)


@pytest.mark.parametrize("spa", [-1, 2**32])
def test_arp_emit_address_out_of_range_raises_value_error(spa: int):
    with pytest.raises(ValueError, match="spa/tpa"):
        emit_arp(bytearray(ARP_LEN), 0, OP_REQUEST, MAC_K, spa, MAC_U, IP_U)


macs = st.binary(min_size=6, max_size=6)
addrs = st.integers(0, 2**32 - 1)


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from([OP_REQUEST, OP_REPLY]),
    sha=macs,
    spa=addrs,
    tha=macs,
    tpa=addrs,
    off=st.integers(0, 40),
    pad=st.integers(0, 30),
)
def test_arp_emit_parse_random_fields_round_trip(op, sha, spa, tha, tpa, off, pad):
    buf = bytearray(off + ARP_LEN + pad)
    emit_arp(memoryview(buf), off, op, sha, spa, tha, tpa)
    assert parse_arp(bytes(buf), off, ARP_LEN + pad) == ArpPacket(op, sha, spa, tha, tpa)
