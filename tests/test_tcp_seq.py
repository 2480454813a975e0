"""Sequence-number arithmetic modulo 2**32 against a big-integer reference.

The reference does not use masks: it lifts `b` to the integer congruent to it
modulo 2**32 that lies nearest to `a` (at distance exactly 2**31, the one
above `a`, which makes `a` "before" `b` as Linux's before() does) and then
compares plain Python integers.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp.seq import (
    seq_add,
    seq_ge,
    seq_gt,
    seq_in_window,
    seq_le,
    seq_lt,
    seq_max,
    seq_min,
    seq_sub,
)

M = 2**32
TOP = M - 1
HALF = 2**31

# Values anywhere, and crowded around the wrap point and the half-way point.
seqs = st.one_of(
    st.integers(0, TOP),
    st.integers(TOP - 64, TOP),
    st.integers(0, 64),
    st.integers(HALF - 64, HALF + 64),
)
SEQ = settings(max_examples=1000, deadline=None)


def lift(a: int, b: int) -> int:
    """The integer congruent to b (mod 2**32) nearest to a; ties go above a."""
    candidates = [b + k * M for k in (-1, 0, 1)]
    return min(candidates, key=lambda c: (abs(c - a), c < a))


def test_seq_add_wraps_past_top():
    assert seq_add(TOP, 1) == 0
    assert seq_add(TOP - 1, 5) == 3
    assert seq_add(0, -1) == TOP
    assert seq_add(5, M) == 5


def test_seq_sub_across_wrap_is_small_signed():
    assert seq_sub(0, TOP) == 1
    assert seq_sub(TOP, 0) == -1
    assert seq_sub(3, TOP - 2) == 6
    assert seq_sub(TOP - 2, 3) == -6
    assert seq_sub(7, 7) == 0
    assert seq_sub(HALF - 1, 0) == HALF - 1
    assert seq_sub(HALF, 0) == -HALF
    assert seq_sub(0, HALF) == -HALF


def test_seq_compare_across_wrap():
    assert seq_lt(TOP, 0)
    assert seq_le(TOP, 0)
    assert seq_gt(0, TOP)
    assert seq_ge(0, TOP)
    assert not seq_lt(0, TOP)
    assert not seq_gt(TOP, 0)
    assert seq_le(5, 5) and seq_ge(5, 5)
    assert not seq_lt(5, 5) and not seq_gt(5, 5)
    assert seq_max(TOP - 15, 16) == 16
    assert seq_min(TOP - 15, 16) == TOP - 15
    assert seq_max(16, TOP - 15) == 16
    assert seq_min(16, TOP - 15) == TOP - 15


def test_seq_half_space_apart_each_is_before_the_other():
    # RFC 1982 leaves this distance undefined; like Linux's before(), both orders say "before".
    assert seq_lt(0, HALF) and seq_lt(HALF, 0)
    assert not seq_gt(0, HALF) and not seq_gt(HALF, 0)
    assert seq_le(0, HALF) and not seq_ge(0, HALF)


@pytest.mark.parametrize(
    ("x", "start", "size", "inside"),
    [
        (TOP - 1, TOP - 1, 4, True),
        (TOP, TOP - 1, 4, True),
        (0, TOP - 1, 4, True),
        (1, TOP - 1, 4, True),
        (2, TOP - 1, 4, False),
        (TOP - 2, TOP - 1, 4, False),
        (0, 0, 0, False),
        (TOP, TOP, 0, False),
        (TOP, TOP, 1, True),
        (0, TOP, 1, False),
        (12345, 0, M, True),
    ],
)
def test_seq_in_window_around_wrap(x: int, start: int, size: int, inside: bool):
    assert seq_in_window(x, start, size) is inside


@SEQ
@given(a=seqs, n=st.integers(-(2**33), 2**33))
def test_seq_add_matches_big_int_modulo(a: int, n: int):
    assert seq_add(a, n) == (a + n) % M


@SEQ
@given(a=seqs, b=seqs)
def test_seq_sub_and_compare_match_lifted_big_ints(a: int, b: int):
    lifted = lift(a, b)
    assert seq_sub(a, b) == a - lifted
    assert seq_lt(a, b) is (a < lifted)
    assert seq_le(a, b) is (a <= lifted)
    assert seq_gt(a, b) is (a > lifted)
    assert seq_ge(a, b) is (a >= lifted)
    assert seq_max(a, b) == (b if a < lifted else a)
    assert seq_min(a, b) == (a if a < lifted else b)


@SEQ
@given(a=seqs, b=seqs)
def test_seq_compare_complements_and_sub_inverse(a: int, b: int):
    assert seq_lt(a, b) is not seq_ge(a, b)
    assert seq_gt(a, b) is not seq_le(a, b)
    assert seq_add(b, seq_sub(a, b)) == a
    assert -HALF <= seq_sub(a, b) < HALF
    if seq_sub(a, b) != -HALF:
        assert seq_lt(a, b) is seq_gt(b, a)
        assert {seq_max(a, b), seq_min(a, b)} == {a, b}
        assert seq_max(a, b) == seq_max(b, a)


@SEQ
@given(x=seqs, start=seqs, size=st.one_of(st.integers(0, M), st.integers(0, 70)))
def test_seq_in_window_matches_big_int_range(x: int, start: int, size: int):
    expected = any(start <= x + k * M < start + size for k in (0, 1))
    assert seq_in_window(x, start, size) is expected


@SEQ
@given(start=seqs, size=st.integers(1, 2**30), step=st.integers(0, 2**30))
def test_seq_in_window_agrees_with_le_and_lt(start: int, size: int, step: int):
    x = seq_add(start, step)
    assert seq_in_window(x, start, size) is (seq_le(start, x) and seq_lt(x, seq_add(start, size)))
