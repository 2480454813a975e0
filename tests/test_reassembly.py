"""IPv4 fragment reassembly: orders, duplicates, overlaps, lengths, timeouts, bounds.

Every test drives a `Reassembler` with explicit times and asserts the exact
return values and counters.  A hypothesis test checks the whole policy
against a deliberately naive model (lists of fragments, quadratic scans).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.stack.reassembly import (
    DROP_BAD_LENGTH,
    DROP_MEMORY,
    DROP_OVERLAP,
    DROP_OVERSIZE,
    DROP_TABLE_FULL,
    DROP_TIMEOUT,
    Reassembler,
)

SRC = 0xC6120001  # 198.18.0.1
DST = 0xC6120002  # 198.18.0.2
KEY = (SRC, DST, 17, 0x1234)
KEY2 = (SRC, DST, 17, 0x1235)
T0 = 1_000_000_000  # an arbitrary start time, in microseconds
TIMEOUT = 30_000_000
MAX_PAYLOAD = 65535 - 20

ZERO = {
    "ipv4_frag_received": 0,
    "ipv4_reasm_ok": 0,
    "ipv4_frag_duplicate": 0,
    "drop_ipv4_frag_overlap": 0,
    "drop_ipv4_frag_oversize": 0,
    "drop_ipv4_frag_bad_length": 0,
    "drop_ipv4_frag_timeout": 0,
    "drop_ipv4_frag_table_full": 0,
    "drop_ipv4_frag_memory": 0,
}


def counts(**nonzero: int) -> dict[str, int]:
    """The full counter dict: every counter zero except those given."""
    out = dict(ZERO)
    for name, value in nonzero.items():
        assert name in out, name
        out[name] = value
    return out


def payload(n: int, seed: int = 0) -> bytearray:
    return bytearray((i * 7 + seed) & 0xFF for i in range(n))


def split(data: bytearray, size: int) -> list[tuple[int, bool, bytearray]]:
    """Fragments (offset, MF, data) of `size` bytes (a multiple of 8) each."""
    assert size > 0 and size % 8 == 0
    out: list[tuple[int, bool, bytearray]] = []
    for off in range(0, len(data), size):
        chunk = data[off : off + size]
        out.append((off, off + size < len(data), chunk))
    return out


def feed(
    r: Reassembler,
    frags: list[tuple[int, bool, bytearray]],
    key: tuple[int, int, int, int] = KEY,
    now_us: int = T0,
) -> list[bytearray | str | None]:
    return [r.on_fragment(key, off, mf, data, now_us) for off, mf, data in frags]


# --- whole datagrams and simple orders -------------------------------------


def test_unfragmented_off0_mf0_returns_data_and_holds_nothing():
    r = Reassembler()
    out = r.on_fragment(KEY, 0, False, b"hello", T0)
    assert out == bytearray(b"hello")
    assert type(out) is bytearray
    assert len(r) == 0 and r.bytes_held == 0
    assert r.next_deadline_us() is None
    assert r.counters == counts(ipv4_frag_received=1, ipv4_reasm_ok=1)


def test_unfragmented_empty_payload_returns_empty_bytearray():
    r = Reassembler()
    assert r.on_fragment(KEY, 0, False, b"", T0) == bytearray()
    assert r.counters == counts(ipv4_frag_received=1, ipv4_reasm_ok=1)


def test_in_order_fragments_reassemble_on_last():
    r = Reassembler()
    data = payload(3000)
    frags = split(data, 1480)
    assert len(frags) == 3
    results = feed(r, frags)
    assert results[:2] == [None, None]
    assert results[2] == data
    assert len(r) == 0 and r.bytes_held == 0
    assert r.counters == counts(ipv4_frag_received=3, ipv4_reasm_ok=1)


def test_reverse_order_fragments_reassemble_on_first():
    r = Reassembler()
    data = payload(4001)
    frags = split(data, 1000)[::-1]
    results = feed(r, frags)
    assert results[:-1] == [None] * (len(frags) - 1)
    assert results[-1] == data
    assert r.counters == counts(ipv4_frag_received=len(frags), ipv4_reasm_ok=1)


def test_partial_datagram_holds_its_bytes():
    r = Reassembler()
    frags = split(payload(3000), 1480)
    feed(r, [frags[0], frags[2]])
    assert len(r) == 1
    assert r.bytes_held == 1480 + 40
    assert r.counters == counts(ipv4_frag_received=2)


def test_two_keys_interleaved_reassemble_independently():
    r = Reassembler()
    a, b = payload(2000, 1), payload(2000, 2)
    fa, fb = split(a, 1000), split(b, 1000)
    assert r.on_fragment(KEY, *fa[0], T0) is None
    assert r.on_fragment(KEY2, *fb[1], T0) is None
    assert r.on_fragment(KEY2, *fb[0], T0) == b
    assert r.on_fragment(KEY, *fa[1], T0) == a
    assert r.counters == counts(ipv4_frag_received=4, ipv4_reasm_ok=2)


def test_caller_buffer_reused_after_call_does_not_change_result():
    r = Reassembler()
    data = payload(2000)
    slot = bytearray(1000)
    slot[:] = data[:1000]
    assert r.on_fragment(KEY, 0, True, memoryview(slot), T0) is None
    slot[:] = b"\xee" * 1000  # the device reuses its receive slot
    assert r.on_fragment(KEY, 1000, False, memoryview(data)[1000:], T0) == data


def test_max_size_datagram_in_8_byte_fragments_reassembles():
    r = Reassembler()
    data = payload(MAX_PAYLOAD)
    frags = split(data, 8)
    # Every other fragment first, so up to 4096 holes exist at once.
    order = frags[::2][::-1] + frags[1::2]
    results = feed(r, order)
    assert results[-1] == data
    assert results[:-1] == [None] * (len(order) - 1)
    assert r.counters == counts(ipv4_frag_received=len(frags), ipv4_reasm_ok=1)
    assert r.bytes_held == 0


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 9000),
    frag_units=st.integers(1, 200),
    seed=st.integers(0, 255),
    data=st.data(),
)
def test_random_permutation_reassembles_exactly(size, frag_units, seed, data):
    r = Reassembler()
    original = payload(size, seed)
    frags = split(original, frag_units * 8)
    order = data.draw(st.permutations(frags))
    results = feed(r, list(order))
    assert results[-1] == original
    assert results[:-1] == [None] * (len(frags) - 1)
    assert r.counters == counts(ipv4_frag_received=len(frags), ipv4_reasm_ok=1)
    assert len(r) == 0 and r.bytes_held == 0


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(9, 6000),
    frag_units=st.integers(1, 100),
    data=st.data(),
)
def test_random_order_with_duplicates_reassembles_once(size, frag_units, data):
    original = payload(size, 3)
    frags = split(original, frag_units * 8)
    order = list(data.draw(st.permutations(frags)))
    # Repeat some fragments, all before the fragment that completes the datagram.
    dups = data.draw(st.lists(st.integers(0, max(len(order) - 2, 0)), max_size=10))
    if len(order) == 1:
        dups = []
    sequence = list(order[:-1])
    for i in dups:
        # Anywhere before the completing fragment; the first copy to arrive counts.
        pos = data.draw(st.integers(0, len(sequence)))
        sequence.insert(pos, order[i])
    sequence.append(order[-1])
    r = Reassembler()
    results = feed(r, sequence)
    assert results[-1] == original
    assert results[:-1] == [None] * (len(sequence) - 1)
    assert r.counters == counts(
        ipv4_frag_received=len(sequence), ipv4_reasm_ok=1, ipv4_frag_duplicate=len(dups)
    )


# --- duplicates and overlaps -------------------------------------------------


def test_exact_duplicate_is_ignored_and_counted():
    r = Reassembler()
    data = payload(2400)
    f0, f1 = split(data, 1600)
    assert r.on_fragment(KEY, *f0, T0) is None
    assert r.on_fragment(KEY, *f0, T0 + 1) is None
    assert r.bytes_held == 1600
    assert r.on_fragment(KEY, *f1, T0 + 2) == data
    assert r.counters == counts(ipv4_frag_received=3, ipv4_reasm_ok=1, ipv4_frag_duplicate=1)


def test_duplicate_of_last_fragment_is_ignored():
    r = Reassembler()
    data = payload(2400)
    f0, f1 = split(data, 1600)
    assert r.on_fragment(KEY, *f1, T0) is None
    assert r.on_fragment(KEY, *f1, T0) is None
    assert r.on_fragment(KEY, *f0, T0) == data
    assert r.counters == counts(ipv4_frag_received=3, ipv4_reasm_ok=1, ipv4_frag_duplicate=1)


def test_duplicate_as_memoryview_is_recognised():
    r = Reassembler()
    f0, _ = split(payload(2400), 1600)
    r.on_fragment(KEY, *f0, T0)
    assert r.on_fragment(KEY, f0[0], True, memoryview(bytearray(f0[2])), T0) is None
    assert r.counters["ipv4_frag_duplicate"] == 1


def test_same_offset_and_length_with_other_bytes_discards_datagram():
    r = Reassembler()
    data = payload(2400)
    f0, _ = split(data, 1600)
    r.on_fragment(KEY, *f0, T0)
    forged = bytes([f0[2][0] ^ 1]) + f0[2][1:]
    assert r.on_fragment(KEY, 0, True, forged, T0) == DROP_OVERLAP
    assert len(r) == 0 and r.bytes_held == 0
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_overlap=1)


# Held: [800, 1600) with MF=1.  Each case overlaps it in a different way.
OVERLAPS = {
    "covers_head": (792, True, 16),
    "covers_tail": (1592, True, 16),
    "inside": (1000, True, 80),
    "encloses": (0, True, 2400),
    "same_start_shorter": (800, True, 400),
    "same_start_longer": (800, True, 1600),
    "same_end_later_start": (1200, True, 400),
    "last_fragment_inside": (1200, False, 400),
}


@pytest.mark.parametrize(("off", "mf", "n"), OVERLAPS.values(), ids=OVERLAPS.keys())
def test_overlap_kind_discards_datagram(off, mf, n):
    r = Reassembler()
    data = payload(4000)
    r.on_fragment(KEY, 800, True, data[800:1600], T0)
    assert r.on_fragment(KEY, off, mf, data[off : off + n], T0) == DROP_OVERLAP
    assert len(r) == 0 and r.bytes_held == 0
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_overlap=1)


def test_overlap_spanning_two_fragments_with_equal_bytes_discards_datagram():
    # Even identical bytes are an overlap unless offset and length match too.
    r = Reassembler()
    data = payload(4000)
    r.on_fragment(KEY, 0, True, data[:800], T0)
    r.on_fragment(KEY, 800, True, data[800:1600], T0)
    assert r.on_fragment(KEY, 0, True, data[:1600], T0) == DROP_OVERLAP
    assert r.counters == counts(ipv4_frag_received=3, drop_ipv4_frag_overlap=1)


def test_fragments_after_overlap_start_a_new_datagram_that_times_out():
    r = Reassembler()
    data = payload(2400)
    r.on_fragment(KEY, 0, True, data[:1600], T0)
    assert r.on_fragment(KEY, 8, True, data[8:16], T0 + 10) == DROP_OVERLAP
    # The tail arrives next: it starts a new datagram, which lacks its head.
    assert r.on_fragment(KEY, 1600, False, data[1600:], T0 + 20) is None
    assert len(r) == 1 and r.bytes_held == 800
    assert r.next_deadline_us() == T0 + 20 + TIMEOUT
    assert r.expire(T0 + 20 + TIMEOUT) == 1
    assert r.counters == counts(
        ipv4_frag_received=3, drop_ipv4_frag_overlap=1, drop_ipv4_frag_timeout=1
    )


def test_fragments_after_overlap_can_complete_a_new_datagram():
    r = Reassembler()
    data = payload(2400)
    r.on_fragment(KEY, 0, True, data[:1600], T0)
    assert r.on_fragment(KEY, 0, True, data[:800], T0) == DROP_OVERLAP
    assert r.on_fragment(KEY, 0, True, data[:1600], T0) is None
    assert r.on_fragment(KEY, 1600, False, data[1600:], T0) == data
    assert r.counters == counts(ipv4_frag_received=4, ipv4_reasm_ok=1, drop_ipv4_frag_overlap=1)


def test_whole_datagram_with_key_in_progress_flushes_it_and_returns_data():
    r = Reassembler()
    r.on_fragment(KEY, 0, True, payload(800), T0)
    assert r.on_fragment(KEY, 0, False, b"whole", T0) == bytearray(b"whole")
    assert len(r) == 0 and r.bytes_held == 0
    assert r.counters == counts(ipv4_frag_received=2, ipv4_reasm_ok=1, drop_ipv4_frag_overlap=1)


# --- lengths and ends --------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 9, 1479])
def test_non_last_fragment_bad_length_drops_only_that_fragment(n):
    r = Reassembler()
    data = payload(2400)
    r.on_fragment(KEY, 0, True, data[:800], T0)
    assert r.on_fragment(KEY, 800, True, data[800 : 800 + n], T0) == DROP_BAD_LENGTH
    assert len(r) == 1 and r.bytes_held == 800
    assert r.on_fragment(KEY, 800, False, data[800:], T0) == data
    assert r.counters == counts(ipv4_frag_received=3, ipv4_reasm_ok=1, drop_ipv4_frag_bad_length=1)


def test_non_last_bad_length_for_unknown_key_creates_nothing():
    r = Reassembler()
    assert r.on_fragment(KEY, 0, True, b"x" * 12, T0) == DROP_BAD_LENGTH
    assert len(r) == 0
    assert r.counters == counts(ipv4_frag_received=1, drop_ipv4_frag_bad_length=1)


def test_last_fragment_of_any_length_accepted():
    r = Reassembler()
    data = payload(805)
    assert r.on_fragment(KEY, 800, False, data[800:], T0) is None
    assert r.on_fragment(KEY, 0, True, data[:800], T0) == data


def test_second_last_fragment_with_other_end_discards_datagram():
    r = Reassembler()
    data = payload(3000)
    r.on_fragment(KEY, 1600, False, data[1600:2400], T0)
    assert r.on_fragment(KEY, 1600, False, data[1600:3000], T0) == DROP_BAD_LENGTH
    assert len(r) == 0 and r.bytes_held == 0
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_bad_length=1)


def test_second_last_fragment_ending_earlier_discards_datagram():
    r = Reassembler()
    data = payload(3000)
    r.on_fragment(KEY, 1600, False, data[1600:2400], T0)
    assert r.on_fragment(KEY, 800, False, data[800:1600], T0) == DROP_BAD_LENGTH
    assert len(r) == 0
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_bad_length=1)


def test_data_beyond_known_end_discards_datagram():
    r = Reassembler()
    data = payload(4000)
    r.on_fragment(KEY, 800, False, data[800:1600], T0)
    assert r.on_fragment(KEY, 1600, True, data[1600:2400], T0) == DROP_BAD_LENGTH
    assert len(r) == 0
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_bad_length=1)


def test_last_fragment_ending_before_held_data_discards_datagram():
    r = Reassembler()
    data = payload(4000)
    r.on_fragment(KEY, 1600, True, data[1600:2400], T0)
    assert r.on_fragment(KEY, 800, False, data[800:1200], T0) == DROP_BAD_LENGTH
    assert r.on_fragment(KEY, 1600, True, data[1600:2400], T0) is None
    assert r.on_fragment(KEY, 1600, False, data[1600:2000], T0) == DROP_BAD_LENGTH
    assert r.counters == counts(ipv4_frag_received=4, drop_ipv4_frag_bad_length=2)


def test_more_fragments_piece_ending_at_known_end_is_accepted():
    # MF=1 only limits the fragment to the known end, as Linux does.
    r = Reassembler()
    data = payload(1600)
    r.on_fragment(KEY, 800, False, data[800:1200], T0)
    assert r.on_fragment(KEY, 1200, True, data[1200:], T0) == DROP_BAD_LENGTH
    r.on_fragment(KEY, 1200, False, data[1200:], T0)
    assert r.on_fragment(KEY, 800, True, data[800:1200], T0) is None
    assert r.on_fragment(KEY, 0, True, data[:800], T0) == data


def test_last_copy_of_more_fragments_piece_sets_end_and_completes():
    # A repeat of held bytes that adds the end is not a duplicate.
    r = Reassembler()
    data = payload(1600)
    r.on_fragment(KEY, 0, True, data[:800], T0)
    r.on_fragment(KEY, 800, True, data[800:], T0)
    assert r.on_fragment(KEY, 800, False, data[800:], T0) == data
    assert r.counters == counts(ipv4_frag_received=3, ipv4_reasm_ok=1)


def test_zero_length_last_fragment_sets_end():
    r = Reassembler()
    data = payload(1600)
    assert r.on_fragment(KEY, 1600, False, b"", T0) is None
    assert len(r) == 1 and r.bytes_held == 0
    assert r.on_fragment(KEY, 0, True, data[:800], T0) is None
    assert r.on_fragment(KEY, 800, True, data[800:], T0) == data
    assert r.counters == counts(ipv4_frag_received=3, ipv4_reasm_ok=1)


def test_zero_length_last_fragment_after_data_completes():
    r = Reassembler()
    data = payload(1600)
    r.on_fragment(KEY, 0, True, data[:800], T0)
    r.on_fragment(KEY, 800, True, data[800:], T0)
    assert r.on_fragment(KEY, 1600, False, b"", T0) == data


def test_zero_length_last_fragment_repeated_is_duplicate():
    r = Reassembler()
    r.on_fragment(KEY, 800, False, payload(96), T0)
    assert r.on_fragment(KEY, 896, False, b"", T0) is None
    assert r.counters == counts(ipv4_frag_received=2, ipv4_frag_duplicate=1)


def test_zero_length_last_fragment_inside_held_data_discards_datagram():
    r = Reassembler()
    r.on_fragment(KEY, 0, True, payload(1600), T0)
    assert r.on_fragment(KEY, 800, False, b"", T0) == DROP_BAD_LENGTH
    assert len(r) == 0


def test_zero_length_more_fragments_is_bad_length():
    r = Reassembler()
    assert r.on_fragment(KEY, 800, True, b"", T0) == DROP_BAD_LENGTH
    assert len(r) == 0


def test_fragment_ending_beyond_max_payload_is_too_big_and_datagram_kept():
    r = Reassembler()
    r.on_fragment(KEY, 0, True, payload(800), T0)
    off = 65512  # 65512 + 8 > 65515
    assert r.on_fragment(KEY, off, False, b"x" * 8, T0) == DROP_OVERSIZE
    assert len(r) == 1 and r.bytes_held == 800
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_oversize=1)


def test_fragment_ending_exactly_at_max_payload_is_accepted():
    r = Reassembler()
    assert r.on_fragment(KEY, 65512, False, b"abc", T0) is None
    assert r.bytes_held == 3


def test_fragment_too_big_for_its_own_options_header_is_dropped():
    r = Reassembler()
    assert r.on_fragment(KEY, 65480, False, b"x" * 20, T0, header_len=60) == DROP_OVERSIZE
    assert len(r) == 0


def test_head_with_options_makes_held_end_too_big_discards_datagram():
    # 65500 bytes of payload is fine behind a 20-byte header, not behind 60.
    r = Reassembler()
    assert r.on_fragment(KEY, 65488, False, b"x" * 12, T0) is None
    assert r.on_fragment(KEY, 0, True, payload(800), T0, header_len=60) == DROP_OVERSIZE
    assert len(r) == 0
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_oversize=1)


def test_head_with_options_limits_later_fragments():
    r = Reassembler()
    assert r.on_fragment(KEY, 0, True, payload(800), T0, header_len=60) is None
    assert r.on_fragment(KEY, 65488, False, b"x" * 12, T0) == DROP_OVERSIZE
    assert len(r) == 0


def test_custom_max_datagram_len_limits_payload():
    r = Reassembler(max_datagram_len=1500)
    data = payload(1480)
    assert r.on_fragment(KEY, 1480, False, b"x", T0) == DROP_OVERSIZE
    assert r.on_fragment(KEY, 800, False, data[800:], T0) is None
    assert r.on_fragment(KEY, 0, True, data[:800], T0) == data


# --- time ----------------------------------------------------------------------


def test_next_deadline_empty_is_none():
    assert Reassembler().next_deadline_us() is None


def test_timeout_counts_from_first_fragment_not_last():
    r = Reassembler()
    data = payload(3000)
    f0, f1, _ = split(data, 1200)
    r.on_fragment(KEY, *f0, T0)
    r.on_fragment(KEY, *f1, T0 + TIMEOUT - 1)
    assert r.next_deadline_us() == T0 + TIMEOUT
    assert r.expire(T0 + TIMEOUT - 1) == 0
    assert len(r) == 1
    assert r.expire(T0 + TIMEOUT) == 1
    assert len(r) == 0 and r.bytes_held == 0
    assert r.next_deadline_us() is None
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_timeout=1)


def test_expire_discards_only_due_datagrams_in_deadline_order():
    r = Reassembler(timeout_us=1000)
    for i in range(5):
        r.on_fragment((SRC, DST, 17, i), 0, True, payload(8), T0 + 100 * i)
    assert r.next_deadline_us() == T0 + 1000
    assert r.expire(T0 + 1250) == 3
    assert len(r) == 2 and r.bytes_held == 16
    assert r.next_deadline_us() == T0 + 1300
    assert r.expire(T0 + 10_000) == 2
    assert r.counters == counts(ipv4_frag_received=5, drop_ipv4_frag_timeout=5)


def test_fragment_after_deadline_without_expire_starts_new_datagram():
    r = Reassembler()
    data = payload(1600)
    r.on_fragment(KEY, 0, True, data[:800], T0)
    assert r.on_fragment(KEY, 800, False, data[800:], T0 + TIMEOUT) is None
    assert len(r) == 1 and r.bytes_held == 800
    assert r.next_deadline_us() == T0 + 2 * TIMEOUT
    assert r.counters == counts(ipv4_frag_received=2, drop_ipv4_frag_timeout=1)


def test_whole_datagram_after_deadline_counts_timeout_not_overlap():
    r = Reassembler()
    r.on_fragment(KEY, 0, True, payload(800), T0)
    assert r.on_fragment(KEY, 0, False, b"new", T0 + TIMEOUT) == bytearray(b"new")
    assert r.counters == counts(ipv4_frag_received=2, ipv4_reasm_ok=1, drop_ipv4_frag_timeout=1)


# --- bounds under floods -------------------------------------------------------


def flood_keys(count: int) -> Iterator[tuple[int, int, int, int]]:
    for i in range(count):
        yield (0x0A000000 + (i >> 16), DST, 17, i & 0xFFFF)


def test_flood_of_distinct_keys_fills_table_then_drops_new():
    r = Reassembler(max_datagrams=64)
    chunk = payload(1480)
    for i, key in enumerate(flood_keys(10_000)):
        out = r.on_fragment(key, 0, True, chunk, T0 + i)
        assert out == (None if i < 64 else DROP_TABLE_FULL)
        assert len(r) <= 64
        assert r.bytes_held <= 64 * 1480
    assert len(r) == 64 and r.bytes_held == 64 * 1480
    assert r.counters == counts(ipv4_frag_received=10_000, drop_ipv4_frag_table_full=9_936)
    # The datagrams already in progress were kept and can still complete.
    first = next(flood_keys(1))
    assert r.on_fragment(first, 1480, False, b"end", T0 + 20_000) == chunk + b"end"


def test_flood_of_distinct_keys_bounded_by_memory():
    r = Reassembler(max_datagrams=100_000, max_bytes=64 * 1024)
    chunk = payload(1480)
    for key in flood_keys(10_000):
        r.on_fragment(key, 0, True, chunk, T0)
        assert r.bytes_held <= 64 * 1024
    kept = 64 * 1024 // 1480
    assert len(r) == kept and r.bytes_held == kept * 1480
    assert r.counters == counts(ipv4_frag_received=10_000, drop_ipv4_frag_memory=10_000 - kept)


def test_table_full_expires_due_datagrams_before_dropping():
    r = Reassembler(max_datagrams=4, timeout_us=1000)
    for i, key in enumerate(flood_keys(4)):
        r.on_fragment(key, 0, True, payload(8), T0 + i)
    assert r.on_fragment(KEY, 0, True, payload(8), T0 + 999) == DROP_TABLE_FULL
    # At T0+1001 the first two flood entries are due; one is enough.
    assert r.on_fragment(KEY, 0, True, payload(8), T0 + 1001) is None
    assert len(r) == 3
    assert r.counters == counts(
        ipv4_frag_received=6, drop_ipv4_frag_table_full=1, drop_ipv4_frag_timeout=2
    )


def test_memory_full_expires_due_datagrams_before_dropping():
    r = Reassembler(max_bytes=1000, timeout_us=1000)
    r.on_fragment(KEY2, 0, True, payload(800), T0)
    assert r.on_fragment(KEY, 0, True, payload(400), T0 + 999) == DROP_MEMORY
    assert r.on_fragment(KEY, 0, True, payload(400), T0 + 1000) is None
    assert r.bytes_held == 400 and len(r) == 1
    assert r.counters == counts(
        ipv4_frag_received=3, drop_ipv4_frag_memory=1, drop_ipv4_frag_timeout=1
    )


def test_memory_full_discards_datagram_of_refused_fragment():
    r = Reassembler(max_bytes=2000)
    r.on_fragment(KEY2, 0, True, payload(1200), T0)
    r.on_fragment(KEY, 0, True, payload(400), T0)
    assert r.on_fragment(KEY, 400, True, payload(800), T0) == DROP_MEMORY
    assert len(r) == 1 and r.bytes_held == 1200
    assert r.counters == counts(ipv4_frag_received=3, drop_ipv4_frag_memory=1)


def test_overlap_flood_on_one_key_holds_at_most_one_fragment():
    r = Reassembler()
    chunk = payload(1480)
    for i in range(10_000):
        out = r.on_fragment(KEY, 8 * (i % 2), True, chunk, T0)
        assert out == (None if i % 2 == 0 else DROP_OVERLAP)
        assert len(r) <= 1 and r.bytes_held <= 1480
    assert r.counters == counts(ipv4_frag_received=10_000, drop_ipv4_frag_overlap=5_000)


def test_tiny_fragment_flood_stays_fast_and_bounded():
    # 8-byte fragments at every other slot: 4095 fragments and 4096 holes per
    # datagram, until memory for exactly four such datagrams is used up.
    offsets = range(0, MAX_PAYLOAD - 8, 16)
    per_key = len(offsets)
    r = Reassembler(max_bytes=4 * per_key * 8)
    start = time.perf_counter()
    for key in flood_keys(5):
        for off in offsets:
            r.on_fragment(key, off, True, b"\xaa" * 8, T0)
    elapsed = time.perf_counter() - start
    assert len(r) == 4 and r.bytes_held == 4 * per_key * 8
    # Each fragment of the fifth key starts a datagram and is refused.
    assert r.counters == counts(ipv4_frag_received=5 * per_key, drop_ipv4_frag_memory=per_key)
    assert elapsed < 5.0


# --- API misuse ----------------------------------------------------------------


@pytest.mark.parametrize("off", [-8, 4, 65536])
def test_impossible_offset_raises(off):
    with pytest.raises(ValueError, match="frag_off"):
        Reassembler().on_fragment(KEY, off, True, b"x" * 8, T0)


@pytest.mark.parametrize("hlen", [16, 22, 64])
def test_impossible_header_len_raises(hlen):
    with pytest.raises(ValueError, match="header_len"):
        Reassembler().on_fragment(KEY, 0, True, b"x" * 8, T0, header_len=hlen)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_us": 0},
        {"max_datagrams": 0},
        {"max_bytes": -1},
        {"max_datagram_len": 575},
        {"max_datagram_len": 65536},
    ],
)
def test_bad_configuration_raises(kwargs):
    with pytest.raises(ValueError):
        Reassembler(**kwargs)


# --- the policy against a naive model -----------------------------------------


@dataclass
class ModelDatagram:
    deadline: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    end: int | None = None
    limit: int = 65535 - 20


class Model:
    """The documented policy, written as plainly as possible (quadratic scans)."""

    def __init__(self, timeout_us: int, max_datagrams: int, max_bytes: int) -> None:
        self.timeout_us = timeout_us
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.dgs: dict[int, ModelDatagram] = {}
        self.counters = counts()

    def held(self) -> int:
        return sum(len(p) for dg in self.dgs.values() for p in dg.pieces.values())

    def expire(self, now: int) -> int:
        due = [k for k, dg in self.dgs.items() if dg.deadline <= now]
        for k in due:
            del self.dgs[k]
        self.counters[DROP_TIMEOUT] += len(due)
        return len(due)

    def drop(self, reason: str, key: int | None = None) -> str:
        if key is not None:
            del self.dgs[key]
        self.counters[reason] += 1
        return reason

    def feed(
        self, key: int, off: int, mf: bool, data: bytes, now: int, hlen: int
    ) -> bytearray | str | None:
        c = self.counters
        c["ipv4_frag_received"] += 1
        n, e = len(data), off + len(data)
        if mf and (n == 0 or n % 8):
            return self.drop(DROP_BAD_LENGTH)
        if e > 65535 - hlen:
            return self.drop(DROP_OVERSIZE)
        if key in self.dgs and self.dgs[key].deadline <= now:
            del self.dgs[key]
            c[DROP_TIMEOUT] += 1
        if off == 0 and not mf:
            if self.dgs.pop(key, None) is not None:
                c[DROP_OVERLAP] += 1
            c["ipv4_reasm_ok"] += 1
            return bytearray(data)
        if key not in self.dgs:
            if len(self.dgs) >= self.max_datagrams:
                self.expire(now)
                if len(self.dgs) >= self.max_datagrams:
                    return self.drop(DROP_TABLE_FULL)
            self.dgs[key] = ModelDatagram(now + self.timeout_us)
        dg = self.dgs[key]
        pieces = dg.pieces
        data_end = max((o + len(p) for o, p in pieces.items()), default=0)
        if dg.end is not None:
            if e > dg.end or (not mf and e != dg.end):
                return self.drop(DROP_BAD_LENGTH, key)
        elif not mf and e < data_end:
            return self.drop(DROP_BAD_LENGTH, key)
        if e > dg.limit:
            return self.drop(DROP_OVERSIZE, key)
        sets_end = not mf and dg.end is None
        if sets_end:
            dg.end = e
        overlapping = [o for o, p in pieces.items() if o < e and off < o + len(p)]
        if n == 0 or overlapping:
            if n and pieces.get(off) != data:
                return self.drop(DROP_OVERLAP, key)
            if not sets_end:
                c["ipv4_frag_duplicate"] += 1
                return None
        else:
            if off == 0:
                extent = dg.end if dg.end is not None else max(data_end, e)
                if extent > 65535 - hlen:
                    return self.drop(DROP_OVERSIZE, key)
                dg.limit = 65535 - hlen
            if self.held() + n > self.max_bytes:
                self.expire(now)
                if self.held() + n > self.max_bytes:
                    return self.drop(DROP_MEMORY, key)
            pieces[off] = bytes(data)
        if dg.end is not None and sum(len(p) for p in pieces.values()) == dg.end:
            del self.dgs[key]
            c["ipv4_reasm_ok"] += 1
            return bytearray(b"".join(pieces[o] for o in sorted(pieces)))
        return None


# Most steps send a piece of one key's honest fragmentation (so duplicates and
# completions are common); the rest are hostile: small offsets, any length,
# either fill byte (same-offset forgeries), a few far offsets near the limits.
honest_step = st.tuples(st.just("honest"), st.integers(0, 15))
hostile_step = st.tuples(
    st.just("hostile"),
    st.tuples(
        st.one_of(st.integers(0, 12).map(lambda u: u * 8), st.sampled_from([65464, 65488])),
        st.booleans(),  # MF
        st.one_of(st.integers(1, 5).map(lambda u: u * 8), st.integers(0, 48)),
        st.integers(0, 1),  # fill byte
        st.sampled_from([20, 24, 60]),  # header length
    ),
)
step_strategy = st.tuples(
    st.integers(0, 1),  # key
    st.one_of(honest_step, honest_step, hostile_step),
    st.integers(0, 300),  # time step
    st.booleans(),  # call expire() before this fragment
)


def content(off: int, n: int, fill: int) -> bytes:
    return bytes([fill + o % 3 for o in range(off, off + n)])


@settings(max_examples=400, deadline=None)
@given(
    steps=st.lists(step_strategy, max_size=40),
    plan=st.lists(st.tuples(st.integers(1, 100), st.integers(1, 3)), min_size=2, max_size=2),
    max_datagrams=st.integers(1, 2),
    max_bytes=st.sampled_from([40, 100, 10_000]),
)
def test_random_fragments_match_model_and_stay_bounded(steps, plan, max_datagrams, max_bytes):
    # plan[k] = (payload length, fragment size in units of 8) of key k's honest sender.
    r = Reassembler(timeout_us=1000, max_datagrams=max_datagrams, max_bytes=max_bytes)
    m = Model(1000, max_datagrams, max_bytes)
    now = T0
    for key_i, (kind, arg), dt, do_expire in steps:
        now += dt
        if do_expire:
            assert r.expire(now) == m.expire(now)
        if kind == "honest":
            length, units = plan[key_i]
            offsets = range(0, length, units * 8)
            off = offsets[arg % len(offsets)]
            n = min(units * 8, length - off)
            mf, fill, hlen = off + n < length, 0, 20
        else:
            off, mf, n, fill, hlen = arg
        key = (SRC, DST, 17, key_i)
        data = content(off, n, fill)
        before = dict(r.counters)
        got = r.on_fragment(key, off, mf, memoryview(data), now, header_len=hlen)
        want = m.feed(key_i, off, mf, data, now, hlen)
        assert got == want
        assert type(got) is type(want)
        assert r.counters == m.counters
        if isinstance(got, str):
            assert r.counters[got] == before[got] + 1
        assert len(r) == len(m.dgs) <= max_datagrams
        assert r.bytes_held == m.held() <= max_bytes
        deadlines = [dg.deadline for dg in m.dgs.values()]
        assert r.next_deadline_us() == (min(deadlines) if deadlines else None)
