"""Ethernet II header: parse, emit, MAC text helpers, against scapy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from ustack.wire.drop import Drop
from ustack.wire.ethernet import (
    BROADCAST_MAC,
    ETH_HLEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    EthernetHeader,
    emit_ethernet,
    mac_from_str,
    mac_to_str,
    parse_ethernet,
)

A = bytes.fromhex("020000000001")
B = bytes.fromhex("0200000000ff")


def test_ethernet_scapy_frame_parses_same_fields():
    raw = bytes(Ether(dst="02:00:00:00:00:ff", src="02:00:00:00:00:01", type=0x0806) / (b"x" * 46))
    assert parse_ethernet(raw, 0, len(raw)) == EthernetHeader(B, A, ETHERTYPE_ARP)


def test_ethernet_emit_scapy_reads_same_fields():
    buf = bytearray(60)
    assert emit_ethernet(buf, 0, BROADCAST_MAC, A, ETHERTYPE_IPV4) == ETH_HLEN
    pkt = Ether(bytes(buf))
    assert pkt.dst == "ff:ff:ff:ff:ff:ff"
    assert pkt.src == "02:00:00:00:00:01"
    assert pkt.type == 0x0800
    assert bytes(buf[:ETH_HLEN]) == bytes.fromhex("ffffffffffff0200000000010800")


def test_ethernet_emit_at_offset_in_memoryview_round_trips_without_touching_neighbours():
    pool = bytearray(b"\xaa" * 100)
    view = memoryview(pool)[10:80]
    assert emit_ethernet(view, 7, A, B, 0x86DD) == ETH_HLEN
    assert pool[:17] == b"\xaa" * 17
    assert pool[17 + ETH_HLEN :] == b"\xaa" * (100 - 17 - ETH_HLEN)
    assert parse_ethernet(view, 7, 70 - 7) == EthernetHeader(A, B, 0x86DD)
    assert parse_ethernet(memoryview(bytes(pool)), 17, ETH_HLEN) == EthernetHeader(A, B, 0x86DD)


def test_ethernet_parse_returns_bytes_not_views_of_the_slot():
    pool = bytearray(bytes(Ether(dst="02:00:00:00:00:ff", src="02:00:00:00:00:01")))
    h = parse_ethernet(memoryview(pool), 0, len(pool))
    assert isinstance(h, EthernetHeader)
    pool[:12] = bytes(12)
    assert h.dst == B
    assert h.src == A
    assert type(h.dst) is bytes


def test_ethernet_13_bytes_drops_truncated():
    raw = bytes(Ether())[:13]
    assert parse_ethernet(raw, 0, 13) is Drop.ETH_TRUNCATED


def test_ethernet_length_limits_the_view_drops_truncated():
    raw = bytes(Ether() / (b"\0" * 50))
    assert parse_ethernet(raw, 50, 13) is Drop.ETH_TRUNCATED
    assert parse_ethernet(raw, 0, 0) is Drop.ETH_TRUNCATED


def test_ethernet_8021q_tag_drops_vlan():
    raw = bytes(Ether() / Dot1Q(vlan=5) / (b"\0" * 46))
    assert parse_ethernet(raw, 0, len(raw)) is Drop.ETH_VLAN


def test_ethernet_8021ad_tag_drops_vlan():
    raw = bytes(Ether() / Dot1AD(vlan=5) / Dot1Q(vlan=7) / (b"\0" * 46))
    assert raw[12:14] == b"\x88\xa8"
    assert parse_ethernet(raw, 0, len(raw)) is Drop.ETH_VLAN


@pytest.mark.parametrize("ethertype", [0x0000, 0x002E, 0x05DC, 0x05FF])
def test_ethernet_8023_length_field_drops_length_field(ethertype: int):
    raw = A + B + ethertype.to_bytes(2, "big") + bytes(46)
    assert parse_ethernet(raw, 0, len(raw)) is Drop.ETH_LENGTH_FIELD


def test_ethernet_type_0600_is_the_first_accepted_type():
    raw = A + B + b"\x06\x00"
    assert parse_ethernet(raw, 0, ETH_HLEN) == EthernetHeader(A, B, 0x0600)


@pytest.mark.parametrize(("off", "length"), [(-1, 14), (0, 15), (1, 14), (0, -1)])
def test_ethernet_range_outside_buffer_raises_value_error(off: int, length: int):
    with pytest.raises(ValueError, match="outside a buffer"):
        parse_ethernet(bytes(14), off, length)


def test_ethernet_emit_short_mac_raises_value_error():
    with pytest.raises(ValueError, match="6 bytes"):
        emit_ethernet(bytearray(14), 0, A[:5], B, ETHERTYPE_IPV4)


def test_ethernet_emit_small_buffer_raises_value_error():
    with pytest.raises(ValueError, match="no room"):
        emit_ethernet(bytearray(20), 7, A, B, ETHERTYPE_IPV4)
    with pytest.raises(ValueError, match="no room"):
        emit_ethernet(bytearray(20), -1, A, B, ETHERTYPE_IPV4)


@pytest.mark.parametrize("ethertype", [0x05FF, 0x10000, -1])
def test_ethernet_emit_bad_ethertype_raises_value_error(ethertype: int):
    with pytest.raises(ValueError, match="ethertype"):
        emit_ethernet(bytearray(14), 0, A, B, ethertype)


def test_mac_to_str_six_bytes_gives_colon_hex():
    assert mac_to_str(bytes.fromhex("02ab0000cdef")) == "02:ab:00:00:cd:ef"


def test_mac_to_str_wrong_length_raises_value_error():
    with pytest.raises(ValueError, match="6 bytes"):
        mac_to_str(b"\x01\x02")


@pytest.mark.parametrize(
    ("text", "mac"),
    [
        ("02:ab:00:00:cd:ef", bytes.fromhex("02ab0000cdef")),
        ("02:AB:00:00:CD:EF", bytes.fromhex("02ab0000cdef")),
        ("ff-ff-ff-ff-ff-ff", BROADCAST_MAC),
    ],
)
def test_mac_from_str_valid_text_gives_bytes(text: str, mac: bytes):
    assert mac_from_str(text) == mac


@pytest.mark.parametrize(
    "text",
    [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "2:0:0:0:0:1",
        "02:00:00:00:00:0g",
        "0200.0000.0001",
        "02-00:00:00:00:01",
        "02:00:00:00:00: 1",
        "+2:00:00:00:00:01",
    ],
)
def test_mac_from_str_bad_text_raises_value_error(text: str):
    with pytest.raises(ValueError, match="not a MAC address"):
        mac_from_str(text)


macs = st.binary(min_size=6, max_size=6)


@settings(max_examples=300, deadline=None)
@given(dst=macs, src=macs, ethertype=st.integers(0x0600, 0xFFFF), off=st.integers(0, 30))
def test_ethernet_emit_parse_random_fields_round_trip(dst, src, ethertype, off):
    buf = bytearray(off + ETH_HLEN + 3)
    emit_ethernet(buf, off, dst, src, ethertype)
    parsed = parse_ethernet(buf, off, ETH_HLEN)
    if ethertype in (0x8100, 0x88A8):
        assert parsed is Drop.ETH_VLAN
    else:
        assert parsed == EthernetHeader(dst, src, ethertype)
    assert mac_from_str(mac_to_str(dst)) == dst
