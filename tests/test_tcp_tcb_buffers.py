"""The control block's byte rings: send buffer and receive buffer with reassembly."""

from __future__ import annotations

import random

import pytest

from ustack.tcp.recvbuf import RecvBuffer
from ustack.tcp.sack import Scoreboard
from ustack.tcp.sendbuf import SendBuffer

# ==========================================================================
# SendBuffer
# ==========================================================================


def test_sendbuf_write_is_bounded_by_capacity() -> None:
    b = SendBuffer(10)
    assert b.write(b"abcdefgh") == 8
    assert b.write(b"xyz") == 2
    assert b.write(b"!") == 0
    assert (len(b), b.free) == (10, 0)
    assert bytes(b.view(0, 10)) == b"abcdefghxy"


def test_sendbuf_views_stop_at_the_ring_end() -> None:
    b = SendBuffer(10)
    b.write(b"0123456789")
    b.consume(6)
    assert b.write(b"ABCDEF") == 6  # lands at the start of the ring, after "6789"
    assert bytes(b.view(0, 10)) == b"6789"  # stops at the ring's end
    assert bytes(b.view(4, 6)) == b"ABCDEF"
    assert bytes(b.view(2, 3)) == b"89"


def test_sendbuf_consume_everything_resets_to_the_start() -> None:
    b = SendBuffer(8)
    b.write(b"abcdef")
    b.consume(6)
    b.write(b"12345678")
    assert bytes(b.view(0, 8)) == b"12345678"  # contiguous again


def test_sendbuf_consume_more_than_buffered_is_an_error() -> None:
    b = SendBuffer(8)
    b.write(b"abc")
    with pytest.raises(ValueError):
        b.consume(4)


def test_sendbuf_views_stay_valid_objects_across_writes() -> None:
    b = SendBuffer(8)
    b.write(b"abcd")
    v = b.view(0, 4)
    b.consume(4)
    b.write(b"wxyz")  # would fail with BufferError if the ring were resized
    assert len(v) == 4


def test_sendbuf_matches_a_model_under_random_operations() -> None:
    rng = random.Random(7)
    b = SendBuffer(97)
    model = bytearray()
    for _ in range(3000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(60))
            n = b.write(memoryview(data))
            assert n == min(len(data), 97 - len(model))
            model += data[:n]
        elif model:
            k = rng.randrange(len(model) + 1)
            b.consume(k)
            del model[:k]
        off = rng.randrange(len(model) + 1)
        v = b.view(off, len(model) - off)
        assert bytes(v) == model[off : off + len(v)]
        assert len(v) > 0 or off == len(model)


# ==========================================================================
# RecvBuffer
# ==========================================================================


def test_recvbuf_in_order_write_and_read() -> None:
    r = RecvBuffer(16)
    assert r.write(b"hello") == 5
    assert (r.readable, r.space) == (5, 11)
    assert r.read(3) == b"hel"
    assert r.read(10) == b"lo"
    assert r.read(10) == b""


def test_recvbuf_write_beyond_space_is_trimmed() -> None:
    r = RecvBuffer(8)
    assert r.write(b"0123456789") == 8
    assert r.write(b"x") == 0
    assert r.read(100) == b"01234567"


def test_recvbuf_out_of_order_ranges_merge_and_fill() -> None:
    r = RecvBuffer(32)
    assert r.insert(4, b"4567")
    assert r.insert(12, b"CD")
    assert r.ooo_ranges() == [(4, 8), (12, 14)]
    assert r.insert(8, b"89AB")  # bridges both ranges
    assert r.ooo_ranges() == [(4, 14)]
    assert r.readable == 0
    assert r.write(b"0123") == 14  # the hole fills: everything becomes readable
    assert not r.has_out_of_order
    assert r.read(100) == b"0123456789ABCD"


def test_recvbuf_in_order_write_overlapping_a_range() -> None:
    r = RecvBuffer(32)
    r.insert(2, b"23456")
    assert r.write(b"0123") == 7
    assert r.read(100) == b"0123456"


def test_recvbuf_range_limit_refuses_a_new_range_but_not_a_merge() -> None:
    r = RecvBuffer(64, max_ranges=2)
    assert r.insert(10, b"a")
    assert r.insert(20, b"b")
    assert not r.insert(30, b"c")
    assert r.insert(21, b"b")  # extends an existing range
    assert r.ooo_ranges() == [(10, 11), (20, 22)]


def test_recvbuf_sack_ranges_most_recent_first() -> None:
    r = RecvBuffer(64)
    r.insert(10, b"a")
    r.insert(20, b"b")
    r.insert(30, b"c")
    assert r.sack_ranges(4) == [(30, 31), (20, 21), (10, 11)]
    r.insert(11, b"a")
    assert r.sack_ranges(2) == [(10, 12), (30, 31)]
    assert r.write(b"x" * 10) == 12  # reaches the range at 10 and takes it in order
    assert r.sack_ranges(4) == [(18, 19), (8, 9)]  # offsets from the new in-order end


def test_recvbuf_reads_across_the_ring_end() -> None:
    r = RecvBuffer(8)
    r.write(b"abcdef")
    assert r.read(6) == b"abcdef"
    r.write(b"ghijkl")
    out = bytearray(6)
    assert r.read_into(out) == 6
    assert out == b"ghijkl"


def test_recvbuf_insert_at_offset_zero_is_an_error() -> None:
    with pytest.raises(ValueError):
        RecvBuffer(8).insert(0, b"x")


def test_recvbuf_matches_a_model_under_random_segments() -> None:
    rng = random.Random(3)
    stream = rng.randbytes(20_000)
    r = RecvBuffer(1000, max_ranges=8)
    got = bytearray()
    nxt = 0
    while len(got) < len(stream):
        start = nxt + rng.randrange(-100, r.space + 50)
        end = min(start + rng.randrange(1, 300), len(stream))
        start = max(start, 0)
        if start >= end:
            continue
        if start <= nxt < end:
            nxt += r.write(stream[nxt:end])
        elif start > nxt:
            r.insert(start - nxt, stream[start:end])
        if rng.random() < 0.3:
            got += r.read(rng.randrange(1, 800))
        assert r.readable + len(got) == nxt
    assert bytes(got) == stream


# ==========================================================================
# Scoreboard (SACK sender side)
# ==========================================================================


def test_scoreboard_add_merges_and_counts_new_bytes() -> None:
    sb = Scoreboard()
    assert sb.add(10, 20) == 10
    assert sb.add(30, 40) == 10
    assert sb.add(15, 35) == 10  # only 20..30 is new
    assert sb.ranges == [(10, 40)]
    assert sb.add(12, 18) == 0
    assert sb.add(40, 45) == 5  # adjacent ranges merge
    assert sb.ranges == [(10, 45)]
    assert sb.sacked_bytes == 35


def test_scoreboard_advance_trims_below_una() -> None:
    sb = Scoreboard()
    sb.add(10, 20)
    sb.add(30, 40)
    sb.advance(15)
    assert sb.ranges == [(15, 20), (30, 40)]
    assert sb.sacked_bytes == 15
    sb.advance(35)
    assert sb.ranges == [(35, 40)]
    sb.advance(50)
    assert not sb and sb.sacked_bytes == 0


def test_scoreboard_lost_end_by_bytes_or_by_ranges() -> None:
    sb = Scoreboard()
    sb.add(1000, 1500)
    assert sb.lost_end(500) is None  # 500 bytes: not more than 2 * SMSS
    sb.add(2000, 2600)
    assert sb.lost_end(500) == 1000  # 1100 > 1000 above 1000
    sb2 = Scoreboard()
    for k in range(3):
        sb2.add(100 * k + 10, 100 * k + 11)
    assert sb2.lost_end(500) == 10  # three discontiguous ranges above 10


def test_scoreboard_next_unsacked_and_holes() -> None:
    sb = Scoreboard()
    sb.add(10, 20)
    sb.add(30, 40)
    assert sb.next_unsacked(0, 100) == (0, 10)
    assert sb.next_unsacked(10, 100) == (20, 30)
    assert sb.next_unsacked(35, 100) == (40, 100)
    assert sb.next_unsacked(35, 40) is None
    assert sb.sacked_in(0, 100) == 20
    assert sb.sacked_in(15, 35) == 10
    assert sb.holes(0) == 2
    assert sb.holes(10) == 1


def test_scoreboard_is_bounded() -> None:
    sb = Scoreboard(max_ranges=2)
    sb.add(10, 11)
    sb.add(20, 21)
    assert sb.add(30, 31) == 0
    assert sb.add(21, 25) == 4
    assert len(sb) == 2
