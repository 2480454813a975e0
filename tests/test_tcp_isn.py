"""RFC 6528 initial sequence numbers and RFC 7323 TSval offsets, with injected secrets.

Time is an int of microseconds passed in; every expectation is exact given
the secret.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ustack.tcp.isn import ISN_TICK_US, IsnGenerator, keyed_hash32, secret_or_random
from ustack.tcp.seq import seq_sub

KEY = bytes(range(32))
KEY2 = bytes(range(1, 33))
OUR = 0xC6120002  # 198.18.0.2
PEER = 0xC6120001  # 198.18.0.1
TUPLE = (OUR, 80, PEER, 40000)
S = 1_000_000
MASK = 0xFFFFFFFF


def test_isn_same_secret_same_inputs_is_reproducible() -> None:
    a = IsnGenerator(KEY)
    b = IsnGenerator(KEY)
    assert a.isn(*TUPLE, 123 * S) == b.isn(*TUPLE, 123 * S)
    assert a.ts_offset(*TUPLE) == b.ts_offset(*TUPLE)


def test_isn_advances_one_per_4_microseconds() -> None:
    gen = IsnGenerator(KEY)
    t0 = 1000 * S  # a multiple of 4
    base = gen.isn(*TUPLE, t0)
    assert gen.isn(*TUPLE, t0 + 1) == base
    assert gen.isn(*TUPLE, t0 + ISN_TICK_US - 1) == base
    assert gen.isn(*TUPLE, t0 + ISN_TICK_US) == (base + 1) & MASK
    assert gen.isn(*TUPLE, t0 + 4 * ISN_TICK_US + 3) == (base + 4) & MASK
    # One second is 250,000 ticks.
    assert seq_sub(gen.isn(*TUPLE, t0 + S), base) == 250_000


def test_isn_wraps_modulo_2_32() -> None:
    gen = IsnGenerator(KEY)
    f = gen.isn(*TUPLE, 0)  # M = 0, so this is F(4-tuple)
    last = ((MASK - f) & MASK) * ISN_TICK_US  # the time at which M + F == 2**32 - 1
    assert gen.isn(*TUPLE, last) == MASK
    assert gen.isn(*TUPLE, last + ISN_TICK_US) == 0
    assert gen.isn(*TUPLE, last + 2 * ISN_TICK_US) == 1
    # A full cycle of the 4 us clock (about 4.77 hours) gives the same ISN.
    assert gen.isn(*TUPLE, last + (1 << 32) * ISN_TICK_US) == MASK


def test_isn_differs_for_each_field_of_the_4_tuple() -> None:
    gen = IsnGenerator(KEY)
    now = 77 * S
    base = gen.isn(*TUPLE, now)
    variants = [
        (OUR + 1, 80, PEER, 40000),
        (OUR, 81, PEER, 40000),
        (OUR, 80, PEER + 1, 40000),
        (OUR, 80, PEER, 40001),
        (PEER, 40000, OUR, 80),  # the same connection seen from the other end
    ]
    isns = {gen.isn(*v, now) for v in variants}
    assert base not in isns
    assert len(isns) == len(variants)


def test_isn_differs_across_secrets() -> None:
    now = 5 * S
    assert IsnGenerator(KEY).isn(*TUPLE, now) != IsnGenerator(KEY2).isn(*TUPLE, now)
    assert IsnGenerator(KEY).ts_offset(*TUPLE) != IsnGenerator(KEY2).ts_offset(*TUPLE)


def test_isn_default_secret_comes_from_urandom() -> None:
    # Two generators without a secret disagree (2**-32 chance of a false failure).
    assert IsnGenerator().isn(*TUPLE, 0) != IsnGenerator().isn(*TUPLE, 0)


def test_ts_offset_is_independent_of_the_isn_function() -> None:
    gen = IsnGenerator(KEY)
    tuples = [(OUR, 80, PEER, port) for port in range(40000, 40016)]
    offsets = [gen.ts_offset(*t) for t in tuples]
    assert all(0 <= o <= MASK for o in offsets)
    assert len(set(offsets)) == len(tuples)
    # Same secret, same 4-tuple, yet not the ISN's F (which is isn at time 0).
    assert all(gen.ts_offset(*t) != gen.isn(*t, 0) for t in tuples)


def test_ts_offset_stays_fixed_per_4_tuple() -> None:
    gen = IsnGenerator(KEY)
    assert gen.ts_offset(*TUPLE) == gen.ts_offset(*TUPLE)
    assert gen.ts_offset(*TUPLE) == IsnGenerator(KEY).ts_offset(*TUPLE)


def test_secret_of_wrong_length_or_type_is_refused() -> None:
    with pytest.raises(ValueError, match=r"16\.\.32 bytes"):
        IsnGenerator(b"short")
    with pytest.raises(ValueError, match=r"16\.\.32 bytes"):
        IsnGenerator(bytes(33))
    with pytest.raises(TypeError, match="bytes"):
        IsnGenerator("not bytes")  # type: ignore[arg-type]
    assert secret_or_random(KEY) is KEY
    assert len(secret_or_random(None)) == 32


def test_4_tuple_out_of_range_is_a_value_error() -> None:
    gen = IsnGenerator(KEY)
    with pytest.raises(ValueError, match="out of range"):
        gen.isn(OUR, 65536, PEER, 1, 0)
    with pytest.raises(ValueError, match="out of range"):
        gen.ts_offset(1 << 32, 1, PEER, 1)


def test_keyed_hash32_depends_on_personalisation() -> None:
    assert keyed_hash32(KEY, b"a", b"x") != keyed_hash32(KEY, b"b", b"x")


@given(
    src=st.integers(0, MASK),
    sport=st.integers(0, 65535),
    dst=st.integers(0, MASK),
    dport=st.integers(0, 65535),
    now=st.integers(0, 1 << 50),
    dt=st.integers(0, 1 << 40),
)
def test_isn_equals_m_plus_f_for_any_inputs(
    src: int, sport: int, dst: int, dport: int, now: int, dt: int
) -> None:
    gen = IsnGenerator(KEY)
    a = gen.isn(src, sport, dst, dport, now)
    b = gen.isn(src, sport, dst, dport, now + dt)
    assert 0 <= a <= MASK and 0 <= b <= MASK
    assert (b - a) & MASK == ((now + dt) // 4 - now // 4) & MASK
