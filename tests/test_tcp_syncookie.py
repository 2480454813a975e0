"""SYN cookies: MSS round trips, forgery and tampering, expiry at the exact edge, wrap-around,
and the TSval encoding of window scale and SACK.

Secrets are injected and time is an int of microseconds passed in, so every
result is exact.  The caller's view: the SYN carries the peer ISN and MSS,
the final ACK carries seq = peer ISN + 1 and ack = cookie + 1.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ustack.tcp.seq import seq_add, seq_le, seq_sub
from ustack.tcp.syncookie import (
    COUNTER_US,
    MAX_AGE_COUNTERS,
    MSS_TABLE,
    TS_OPT_BITS,
    SynCookies,
    decode_tsecr,
    make_tsval,
)

KEY = bytes(range(32))
KEY2 = bytes(range(1, 33))
OUR = 0xC6120002  # 198.18.0.2
PEER = 0xC6120001  # 198.18.0.1
TUPLE = (OUR, 80, PEER, 40000)
PEER_ISN = 0xFFFFFF00  # near the wrap, so seq = peer ISN + 1 stays close to it
S = 1_000_000
C0 = 1000  # the cookie counter the tests start in
NOW = C0 * COUNTER_US + 17 * S  # somewhere inside counter C0
MASK = 0xFFFFFFFF


def ack_of_final_ack(cookie: int) -> int:
    """SEG.ACK of the peer's final ACK."""
    return seq_add(cookie, 1)


# ---------------------------------------------------------------- MSS table


@pytest.mark.parametrize("entry", MSS_TABLE)
def test_cookie_round_trips_each_mss_table_entry(entry: int) -> None:
    cookies = SynCookies(KEY)
    cookie, mss = cookies.make(*TUPLE, PEER_ISN, entry, NOW)
    assert mss == entry
    assert cookies.check(*TUPLE, PEER_ISN, cookie, NOW) == entry


@pytest.mark.parametrize(
    ("peer_mss", "expected"),
    [
        (0, 536),
        (100, 536),
        (535, 536),
        (536, 536),
        (1299, 536),
        (1300, 1300),
        (1439, 1300),
        (1440, 1440),
        (1459, 1440),
        (1460, 1460),
        (9000, 1460),
        (65535, 1460),
    ],
)
def test_mss_is_largest_entry_not_above_peer_mss(peer_mss: int, expected: int) -> None:
    cookies = SynCookies(KEY)
    cookie, mss = cookies.make(*TUPLE, PEER_ISN, peer_mss, NOW)
    assert mss == expected
    assert cookies.check(*TUPLE, PEER_ISN, cookie, NOW) == expected


def test_mss_table_is_ascending_and_fits_two_bits() -> None:
    assert list(MSS_TABLE) == sorted(MSS_TABLE)
    assert len(MSS_TABLE) == 4


# ---------------------------------------------------------------- forgery


def test_cookie_for_another_4_tuple_is_refused() -> None:
    cookies = SynCookies(KEY)
    cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1460, NOW)
    for other in [
        (OUR + 1, 80, PEER, 40000),
        (OUR, 81, PEER, 40000),
        (OUR, 80, PEER + 1, 40000),
        (OUR, 80, PEER, 40001),
        (PEER, 40000, OUR, 80),  # the 4-tuple from the peer's side
    ]:
        assert cookies.check(*other, PEER_ISN, cookie, NOW) is None


def test_cookie_for_another_peer_isn_is_refused() -> None:
    cookies = SynCookies(KEY)
    cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1460, NOW)
    for delta in (1, -1, 2, 1 << 16, 1 << 31):
        assert cookies.check(*TUPLE, seq_add(PEER_ISN, delta), cookie, NOW) is None
    # Shifting both by the same amount does not help either (the MAC covers
    # the peer ISN; it is not merely added in).
    assert cookies.check(*TUPLE, seq_add(PEER_ISN, 1), seq_add(cookie, 1), NOW) is None


@pytest.mark.parametrize("bit", range(32))
def test_cookie_with_any_bit_flipped_is_refused(bit: int) -> None:
    cookies = SynCookies(KEY)
    for peer_mss in MSS_TABLE:
        cookie, _ = cookies.make(*TUPLE, PEER_ISN, peer_mss, NOW)
        assert cookies.check(*TUPLE, PEER_ISN, cookie ^ (1 << bit), NOW) is None


def test_cookie_off_by_small_amounts_is_refused() -> None:
    cookies = SynCookies(KEY)
    cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1460, NOW)
    for delta in range(-64, 65):
        if delta:
            assert cookies.check(*TUPLE, PEER_ISN, seq_add(cookie, delta), NOW) is None


def test_cookie_from_another_secret_is_refused() -> None:
    cookie, _ = SynCookies(KEY).make(*TUPLE, PEER_ISN, 1460, NOW)
    assert SynCookies(KEY2).check(*TUPLE, PEER_ISN, cookie, NOW) is None
    assert SynCookies(KEY2).make(*TUPLE, PEER_ISN, 1460, NOW)[0] != cookie


def test_random_cookies_are_never_accepted() -> None:
    """12 of 2**32 values are valid per (4-tuple, peer ISN): ~5.6e-5 expected hits here."""
    cookies = SynCookies(KEY)
    real = {cookies.make(*TUPLE, PEER_ISN, m, NOW)[0] for m in MSS_TABLE}
    rng = random.Random(6528)
    accepted = 0
    for _ in range(20_000):
        guess = rng.getrandbits(32)
        if guess not in real and cookies.check(*TUPLE, PEER_ISN, guess, NOW) is not None:
            accepted += 1
    assert accepted == 0


@given(guess=st.integers(0, MASK), peer_isn=st.integers(0, MASK))
def test_arbitrary_value_is_not_a_cookie(guess: int, peer_isn: int) -> None:
    cookies = SynCookies(KEY)
    assume(all(guess != cookies.make(*TUPLE, peer_isn, m, NOW)[0] for m in MSS_TABLE))
    assert cookies.check(*TUPLE, peer_isn, guess, NOW) is None


# ---------------------------------------------------------------- expiry


def test_cookie_accepted_through_the_last_counter_of_its_window() -> None:
    cookies = SynCookies(KEY)
    cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1440, NOW)
    edge = (C0 + MAX_AGE_COUNTERS + 1) * COUNTER_US  # first microsecond past the window
    assert cookies.check(*TUPLE, PEER_ISN, cookie, C0 * COUNTER_US) == 1440
    assert cookies.check(*TUPLE, PEER_ISN, cookie, (C0 + 1) * COUNTER_US) == 1440
    assert cookies.check(*TUPLE, PEER_ISN, cookie, (C0 + 2) * COUNTER_US) == 1440
    assert cookies.check(*TUPLE, PEER_ISN, cookie, edge - 1) == 1440
    assert cookies.check(*TUPLE, PEER_ISN, cookie, edge) is None
    assert cookies.check(*TUPLE, PEER_ISN, cookie, edge + 10 * COUNTER_US) is None


def test_cookie_lifetime_is_128_to_192_seconds() -> None:
    cookies = SynCookies(KEY)
    # Made at the very end of a counter: lives 128 s and a microsecond.
    late = (C0 + 1) * COUNTER_US - 1
    cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1460, late)
    assert cookies.check(*TUPLE, PEER_ISN, cookie, late + 128 * S) == 1460
    assert cookies.check(*TUPLE, PEER_ISN, cookie, late + 128 * S + 1) is None
    # Made at the very start of a counter: lives 192 s.
    early = C0 * COUNTER_US
    cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1460, early)
    assert cookies.check(*TUPLE, PEER_ISN, cookie, early + 192 * S - 1) == 1460
    assert cookies.check(*TUPLE, PEER_ISN, cookie, early + 192 * S) is None


def test_cookie_from_the_future_is_refused() -> None:
    cookies = SynCookies(KEY)
    cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1460, NOW)
    assert cookies.check(*TUPLE, PEER_ISN, cookie, C0 * COUNTER_US - 1) is None


def test_cookie_does_not_revive_when_the_counter_byte_repeats() -> None:
    cookies = SynCookies(KEY)
    cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1460, NOW)
    for later in (256, 257, 258, 512):
        assert cookies.check(*TUPLE, PEER_ISN, cookie, NOW + later * COUNTER_US) is None


def test_cookie_works_near_time_zero() -> None:
    cookies = SynCookies(KEY)
    cookie, mss = cookies.make(*TUPLE, PEER_ISN, 1300, 0)
    assert mss == 1300
    assert cookies.check(*TUPLE, PEER_ISN, cookie, 0) == 1300
    assert cookies.check(*TUPLE, PEER_ISN, cookie, 3 * COUNTER_US - 1) == 1300
    assert cookies.check(*TUPLE, PEER_ISN, cookie, 3 * COUNTER_US) is None


def test_cookie_isn_advances_with_the_coarse_clock() -> None:
    """One counter (64 s) moves the cookie forwards by 2**24 +- 2**24, like the ISN clock."""
    cookies = SynCookies(KEY)
    previous, _ = cookies.make(*TUPLE, PEER_ISN, 1460, NOW)
    wrapped = 0
    for k in range(1, 300):
        now = NOW + k * COUNTER_US
        cookie, _ = cookies.make(*TUPLE, PEER_ISN, 1460, now)
        assert 0 < seq_sub(cookie, previous) < 1 << 25
        assert cookies.check(*TUPLE, PEER_ISN, cookie, now) == 1460
        wrapped += cookie < previous  # raw ints: the sequence space wrapped here
        previous = cookie
    # 299 counters of about 2**24 each go more than once round the 2**32 space.
    assert wrapped >= 1


# ---------------------------------------------------------------- wrap-around


def test_peer_isn_at_the_wrap_point() -> None:
    """SYN seq 2**32-1: the ACK's seq is 0, and the caller passes seq - 1 = -1 unwrapped."""
    cookies = SynCookies(KEY)
    cookie, _ = cookies.make(*TUPLE, MASK, 1460, NOW)
    ack_seq = seq_add(MASK, 1)
    assert ack_seq == 0
    assert cookies.check(*TUPLE, ack_seq - 1, cookie, NOW) == 1460
    assert cookies.check(*TUPLE, MASK, cookie, NOW) == 1460
    assert cookies.check(*TUPLE, 0, cookie, NOW) is None


def test_cookie_is_read_modulo_2_32() -> None:
    cookies = SynCookies(KEY)
    for peer_isn in (0, 1, PEER_ISN, MASK):
        cookie, _ = cookies.make(*TUPLE, peer_isn, 1460, NOW)
        ack = ack_of_final_ack(cookie)
        assert cookies.check(*TUPLE, peer_isn, ack - 1, NOW) == 1460
        assert cookies.check(*TUPLE, peer_isn, cookie - (1 << 32), NOW) == 1460
        assert cookies.check(*TUPLE, peer_isn, cookie + (1 << 32), NOW) == 1460


@given(
    src=st.integers(0, MASK),
    sport=st.integers(0, 65535),
    dst=st.integers(0, MASK),
    dport=st.integers(0, 65535),
    peer_isn=st.integers(0, MASK),
    peer_mss=st.integers(0, 65535),
    now=st.integers(0, 1 << 45),
    delay=st.integers(0, 2 * COUNTER_US),
)
def test_cookie_round_trips_for_any_connection(
    src: int, sport: int, dst: int, dport: int, peer_isn: int, peer_mss: int, now: int, delay: int
) -> None:
    cookies = SynCookies(KEY)
    cookie, mss = cookies.make(src, sport, dst, dport, peer_isn, peer_mss, now)
    assert 0 <= cookie <= MASK
    assert mss in MSS_TABLE
    assert mss <= max(peer_mss, MSS_TABLE[0])
    assert cookies.check(src, sport, dst, dport, peer_isn, cookie, now + delay) == mss


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize("sack", [False, True])
@pytest.mark.parametrize("wscale", [None, *range(15)])
def test_tsval_round_trips_window_scale_and_sack(wscale: int | None, sack: bool) -> None:
    for now_tsval in (0, 1, 63, 64, 0x12345678, 0x7FFFFFFF, MASK - 1, MASK):
        tsval = make_tsval(now_tsval, wscale, sack)
        assert 0 <= tsval <= MASK
        # Never ahead of the clock, and less than one block of 2**6 behind.
        assert seq_le(tsval, now_tsval)
        assert seq_sub(now_tsval, tsval) < 1 << TS_OPT_BITS
        # The peer echoes it back in TSecr.
        assert decode_tsecr(tsval) == (wscale, sack)


def test_tsval_keeps_clock_bits_when_options_fit_below_it() -> None:
    # Low bits of the clock 0x3F: replacing them with 0x10|7 moves back, not forward.
    assert make_tsval(0x1000003F, 7, True) == 0x10000017
    # Low bits 0x00 and options 0x0F: step back one block of 64.
    assert make_tsval(0x10000000, None, False) == 0x0FFFFFCF
    # Wraps below zero.
    assert make_tsval(0, 14, False) == (MASK & ~0x3F) | 14


def test_tsval_window_scale_above_14_is_used_as_14() -> None:
    assert decode_tsecr(make_tsval(1 << 20, 15, False)) == (14, False)
    assert decode_tsecr(make_tsval(1 << 20, 255, True)) == (14, True)


def test_tsval_negative_window_scale_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="window scale"):
        make_tsval(1000, -1, False)


def test_tsecr_with_reserved_bit_is_invalid() -> None:
    for low in range(1 << TS_OPT_BITS):
        decoded = decode_tsecr(0xABCD0000 | low)
        if low & 0x20:
            assert decoded is None
        else:
            assert decoded is not None


def test_tsval_helpers_are_also_reachable_from_the_object() -> None:
    cookies = SynCookies(KEY)
    tsval = cookies.make_tsval(5000, 9, True)
    assert tsval == make_tsval(5000, 9, True)
    assert cookies.decode_tsecr(tsval) == (9, True)
