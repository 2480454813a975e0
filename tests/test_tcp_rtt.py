"""RFC 6298 retransmission timer state: exact SRTT, RTTVAR and RTO sequences.

Values are microseconds.  The expected numbers are worked by hand from RFC
6298 section 2 (alpha = 1/8, beta = 1/4, K = 4, G = 1 ms) and checked
against a floating-point reference for arbitrary sample sequences.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ustack.tcp.rtt import RttEstimator

MS = 1_000
S = 1_000_000


# --- before any sample -------------------------------------------------------


def test_fresh_estimator_uses_initial_rto_of_one_second() -> None:
    est = RttEstimator()
    assert est.rto_us == 1 * S  # RFC 6298 2.1
    assert est.srtt_us is None
    assert est.rttvar_us is None
    assert est.min_rtt_us is None
    assert est.samples == 0
    assert est.backoffs == 0
    assert (est.min_rto_us, est.max_rto_us) == (200 * MS, 120 * S)


def test_fresh_estimator_backoff_doubles_initial_rto() -> None:
    est = RttEstimator()
    assert est.backoff() == 2 * S
    assert est.backoff() == 4 * S
    assert est.rto_us == 4 * S
    assert est.backoffs == 2


# --- samples -----------------------------------------------------------------


def test_first_sample_sets_srtt_to_r_and_rttvar_to_half() -> None:
    est = RttEstimator()
    est.on_sample(100 * MS)
    assert est.srtt_us == 100 * MS  # RFC 6298 2.2
    assert est.rttvar_us == 50 * MS
    assert est.rto_us == 100 * MS + 4 * 50 * MS  # 300 ms
    assert est.samples == 1
    assert est.min_rtt_us == 100 * MS


def test_later_samples_follow_rfc6298_2_3_exactly() -> None:
    est = RttEstimator()
    est.on_sample(100_000)
    # RTTVAR = 3/4 * 50000 + 1/4 * |100000 - 200000| = 62500
    # SRTT = 7/8 * 100000 + 1/8 * 200000 = 112500
    est.on_sample(200_000)
    assert (est.srtt_us, est.rttvar_us, est.rto_us) == (112_500, 62_500, 112_500 + 250_000)
    # RTTVAR = 3/4 * 62500 + 1/4 * |112500 - 50000| = 62500
    # SRTT = 7/8 * 112500 + 1/8 * 50000 = 104687.5, truncated
    est.on_sample(50_000)
    assert (est.srtt_us, est.rttvar_us, est.rto_us) == (104_687, 62_500, 104_687 + 250_000)
    assert est.samples == 3
    assert est.min_rtt_us == 50_000


def test_equal_samples_decay_rttvar_until_g_dominates() -> None:
    est = RttEstimator(min_rto_us=1 * MS)
    for _ in range(100):
        est.on_sample(300 * MS)
    assert est.srtt_us == 300 * MS
    assert est.rttvar_us == 0
    assert est.rto_us == 300 * MS + 1 * MS  # SRTT + max(G, 4 * RTTVAR)


def test_granularity_is_configurable() -> None:
    est = RttEstimator(min_rto_us=1, granularity_us=10 * MS)
    est.on_sample(1 * MS)  # 4 * RTTVAR = 2 ms < G
    assert est.rto_us == 1 * MS + 10 * MS


def test_small_rtt_is_clamped_to_min_rto_200ms() -> None:
    est = RttEstimator()
    est.on_sample(1 * MS)  # 1 ms + max(1 ms, 2 ms) = 3 ms
    assert est.rto_us == 200 * MS
    assert est.srtt_us == 1 * MS


def test_min_rto_of_one_second_as_rfc6298_2_4_suggests() -> None:
    est = RttEstimator(min_rto_us=1 * S)
    est.on_sample(100 * MS)
    assert est.rto_us == 1 * S


def test_zero_sample_is_accepted() -> None:
    est = RttEstimator()
    est.on_sample(0)
    assert (est.srtt_us, est.rttvar_us, est.rto_us) == (0, 0, 200 * MS)


def test_huge_sample_is_clamped_to_max_rto() -> None:
    est = RttEstimator()
    est.on_sample(100 * S)  # 100 s + 200 s
    assert est.rto_us == 120 * S


def test_negative_sample_is_a_caller_bug() -> None:
    est = RttEstimator()
    with pytest.raises(ValueError, match="negative"):
        est.on_sample(-1)
    assert est.samples == 0


def test_min_rtt_is_the_smallest_sample() -> None:
    est = RttEstimator()
    for r in (30 * MS, 20 * MS, 50 * MS, 25 * MS):
        est.on_sample(r)
    assert est.min_rtt_us == 20 * MS


# --- back-off ----------------------------------------------------------------


def test_backoff_doubles_rto_and_clamps_at_max() -> None:
    est = RttEstimator()
    est.on_sample(100 * MS)  # RTO 300 ms
    expected = [600 * MS, 1_200 * MS, 2_400 * MS, 4_800 * MS, 9_600 * MS]
    assert [est.backoff() for _ in range(5)] == expected
    for _ in range(20):
        est.backoff()
    assert est.rto_us == 120 * S
    # Doubling stops counting once RTO is at the maximum: 300 ms * 2**9 > 120 s.
    assert est.backoffs == 9


def test_reset_backoff_returns_to_computed_rto() -> None:
    est = RttEstimator()
    est.on_sample(100 * MS)
    est.backoff()
    est.backoff()
    est.reset_backoff()
    assert est.rto_us == 300 * MS
    assert est.backoffs == 0


def test_new_sample_collapses_backed_off_rto() -> None:
    est = RttEstimator()
    est.on_sample(100 * MS)
    est.backoff()
    est.backoff()
    assert est.rto_us == 1_200 * MS
    est.on_sample(100 * MS)
    # RTTVAR = 3/4 * 50 ms, SRTT = 100 ms: RTO = 100 + 150 ms
    assert est.rto_us == 250 * MS
    assert est.backoffs == 0


def test_backoff_from_max_rto_stays_at_max() -> None:
    est = RttEstimator(min_rto_us=1 * S, max_rto_us=60 * S, initial_rto_us=60 * S)
    assert est.backoff() == 60 * S
    assert est.backoffs == 0


# --- handshake fallback (RFC 6298 5.7) ----------------------------------------


def test_handshake_retransmitted_without_sample_sets_rto_3s() -> None:
    est = RttEstimator()
    est.backoff()
    est.backoff()  # the SYN was sent three times
    est.on_handshake_retransmitted()
    assert est.rto_us == 3 * S
    assert est.backoffs == 0
    assert est.backoff() == 6 * S


def test_handshake_retransmitted_with_sample_keeps_measured_rto() -> None:
    est = RttEstimator()
    est.on_sample(100 * MS)  # e.g. from a timestamp echo
    est.on_handshake_retransmitted()
    assert est.rto_us == 300 * MS


# --- configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_rto_us": 0},
        {"min_rto_us": 2 * S, "max_rto_us": 1 * S, "initial_rto_us": 1 * S},
        {"initial_rto_us": 100 * MS},
        {"initial_rto_us": 200 * S},
        {"granularity_us": -1},
    ],
)
def test_bad_configuration_raises(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RttEstimator(**kwargs)


def test_repr_shows_the_state() -> None:
    est = RttEstimator()
    est.on_sample(100 * MS)
    assert repr(est) == (
        "RttEstimator(srtt_us=100000, rttvar_us=50000, rto_us=300000, backoffs=0, samples=1)"
    )


# --- properties --------------------------------------------------------------


@given(st.lists(st.integers(0, 10 * S), min_size=1, max_size=60))
def test_any_samples_stay_within_a_microsecond_or_two_of_exact_rfc6298(
    samples: list[int],
) -> None:
    est = RttEstimator()
    srtt = float(samples[0])
    rttvar = samples[0] / 2
    est.on_sample(samples[0])
    for r in samples[1:]:
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
        srtt = 0.875 * srtt + 0.125 * r
        est.on_sample(r)
    assert est.srtt_us is not None and est.rttvar_us is not None
    assert abs(est.srtt_us - srtt) <= 2
    assert abs(est.rttvar_us - rttvar) <= 4
    assert est.min_rtt_us == min(samples)


@given(
    st.lists(
        st.one_of(
            st.integers(0, 200 * S),
            st.just("backoff"),
            st.just("reset"),
        ),
        max_size=80,
    )
)
def test_rto_always_within_bounds(events: list[int | str]) -> None:
    est = RttEstimator()
    for ev in events:
        if ev == "backoff":
            before = est.rto_us
            after = est.backoff()
            assert after == min(2 * before, est.max_rto_us)
        elif ev == "reset":
            est.reset_backoff()
        else:
            assert isinstance(ev, int)
            est.on_sample(ev)
        assert est.min_rto_us <= est.rto_us <= est.max_rto_us
