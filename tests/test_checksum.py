"""The C checksum against a pure-Python RFC 1071 reference."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.wire.checksum import checksum, checksum_partial, pseudo_sum


def ref_sum(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes, initial: int = 0) -> int:
    return ~ref_sum(data, initial) & 0xFFFF


def ref_pseudo(src: int, dst: int, proto: int, length: int) -> int:
    return ref_sum(
        struct.pack("!IIBBH", src, dst, 0, proto, length & 0xFFFF) + struct.pack("!H", length >> 16)
    )


def test_checksum_rfc1071_example_matches():
    # the IPv4 header commonly used to illustrate RFC 1071 (checksum b861)
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert checksum(hdr, 0, 20) == 0xB861
    fixed = hdr[:10] + b"\xb8\x61" + hdr[12:]
    assert checksum(fixed, 0, 20) == 0


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=3000),
    off=st.integers(min_value=0, max_value=40),
    initial=st.integers(min_value=0, max_value=0xFFFF),
)
def test_checksum_random_input_equals_reference(data: bytes, off: int, initial: int):
    buf = bytes(off) + data
    assert checksum(buf, off, len(data), initial) == ref_checksum(data, initial)
    assert checksum_partial(bytearray(buf), off, len(data), initial) == ref_sum(data, initial)


@settings(max_examples=300, deadline=None)
@given(
    src=st.integers(0, 2**32 - 1),
    dst=st.integers(0, 2**32 - 1),
    proto=st.integers(0, 255),
    length=st.integers(0, 2**20),
    data=st.binary(max_size=200),
)
def test_pseudo_sum_chained_equals_reference(
    src: int, dst: int, proto: int, length: int, data: bytes
):
    ps = pseudo_sum(src, dst, proto, length)
    assert ref_sum(b"", ps) == ref_pseudo(src, dst, proto, length)
    assert checksum(memoryview(data), 0, len(data), ps) == ref_checksum(
        data, ref_pseudo(src, dst, proto, length)
    )


def test_checksum_range_outside_buffer_raises():
    with pytest.raises(ValueError, match="outside a buffer"):
        checksum(b"abc", 2, 2)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 31, 63])
def test_checksum_all_ones_tail_keeps_carry(n: int):
    # a run of 0xff drives the 64-bit accumulator to its wrap point before the tail
    data = b"\xff" * n
    assert checksum_partial(data, 0, n) == ref_sum(data)
