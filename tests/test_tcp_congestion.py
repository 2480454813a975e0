"""Congestion control: NewReno and CUBIC driven by a fake clock, exact windows.

Windows are bytes, times microseconds.  MSS is 1000 bytes so that windows
read as segments times 1000.  A "round" acknowledges one whole cwnd in
MSS-sized ACKs spread evenly over one RTT, with the sender cwnd-limited
(it refills the window after every ACK, so in_flight == cwnd).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp.congestion import (
    ALPHA_CUBIC,
    CONGESTION_CONTROLS,
    DEFAULT_CONGESTION_CONTROL,
    SSTHRESH_INFINITE,
    CongestionControl,
    Cubic,
    NewReno,
    initial_window,
    make_congestion_control,
)

MSS = 1000
MS = 1_000
S = 1_000_000
T0 = 5 * S  # tests start away from zero so that offsets matter


def one_round(cc: CongestionControl, now_us: int, rtt_us: int, ack_bytes: int = MSS) -> int:
    """Acknowledge one cwnd of data, cwnd-limited; return the time at the end of the round."""
    n = max(1, cc.cwnd // ack_bytes)
    for i in range(n):
        cc.on_ack(ack_bytes, now_us + (i + 1) * rtt_us // n, rtt_us, cc.cwnd)
    return now_us + rtt_us


def grow_to(cc: CongestionControl, cwnd: int, now_us: int) -> int:
    """Slow-start with 1-MSS ACKs until cwnd == `cwnd`; return the time reached."""
    while cc.cwnd < cwnd:
        now_us += 100
        cc.on_ack(MSS, now_us, None, cc.cwnd)
    assert cc.cwnd == cwnd
    return now_us


def after_loss(cc: CongestionControl, cwnd: int, now_us: int, rtt_us: int) -> int:
    """Grow to `cwnd`, lose a segment with a full window in flight, recover in one RTT."""
    now_us = grow_to(cc, cwnd, now_us)
    cc.on_enter_recovery(now_us, cwnd)
    now_us += rtt_us
    cc.on_exit_recovery(now_us)
    return now_us


# === Initial window (RFC 6928) ===============================================


@pytest.mark.parametrize(
    ("mss", "iw"),
    [
        (100, 1_000),
        (536, 5_360),
        (1_000, 10_000),
        (1_460, 14_600),
        (4_000, 14_600),
        (9_000, 18_000),
    ],
)
def test_initial_window_follows_rfc6928(mss: int, iw: int) -> None:
    assert initial_window(mss) == iw


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_fresh_controller_starts_at_iw_with_infinite_ssthresh(cls: type[CongestionControl]) -> None:
    cc = cls(1460)
    assert cc.cwnd == 14_600
    assert cc.ssthresh == SSTHRESH_INFINITE >= 2**31 - 1
    assert cc.mss == 1460
    assert cc.in_slow_start
    assert not cc.in_recovery


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_fresh_controller_set_mss_recomputes_iw(cls: type[CongestionControl]) -> None:
    cc = cls(536)
    cc.set_mss(1460)
    assert (cc.mss, cc.cwnd) == (1460, 14_600)
    cc.set_mss(9000)
    assert cc.cwnd == 18_000


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_running_controller_set_mss_keeps_bytes(cls: type[CongestionControl]) -> None:
    cc = cls(MSS)
    cc.on_ack(MSS, T0, None, cc.cwnd)
    assert cc.cwnd == 11_000
    cc.set_mss(500)
    assert (cc.mss, cc.cwnd) == (500, 11_000)
    cc.set_mss(20_000)  # cwnd is lifted to one segment
    assert cc.cwnd == 20_000


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_handshake_loss_makes_iw_one_segment(cls: type[CongestionControl]) -> None:
    cc = cls(536)
    cc.on_handshake_loss()
    assert cc.cwnd == 536
    cc.set_mss(1460)
    assert cc.cwnd == 1460
    cc.on_ack(1460, T0, None, 1460)
    cc.on_handshake_loss()  # too late: ignored
    assert cc.cwnd == 2 * 1460


def test_bad_mss_raises() -> None:
    with pytest.raises(ValueError, match="mss"):
        NewReno(0)
    with pytest.raises(ValueError, match="mss"):
        Cubic(MSS).set_mss(-1)


def test_negative_acked_bytes_raises_and_zero_is_ignored() -> None:
    cc = NewReno(MSS)
    with pytest.raises(ValueError, match="acked_bytes"):
        cc.on_ack(-1, T0, None, cc.cwnd)
    cc.on_ack(0, T0, None, cc.cwnd)
    assert cc.cwnd == 10 * MSS


# === Slow start (RFC 5681 3.1, RFC 3465), shared by both =======================


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_slow_start_ack_per_segment_doubles_cwnd_per_rtt(cls: type[CongestionControl]) -> None:
    cc = cls(MSS)
    now = one_round(cc, T0, 100 * MS)
    assert cc.cwnd == 20 * MSS
    one_round(cc, now, 100 * MS)
    assert cc.cwnd == 40 * MSS


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_slow_start_delayed_acks_still_double_per_rtt(cls: type[CongestionControl]) -> None:
    cc = cls(MSS)
    one_round(cc, T0, 100 * MS, ack_bytes=2 * MSS)  # 5 ACKs of 2 MSS, each + 2 MSS
    assert cc.cwnd == 20 * MSS


def test_slow_start_stretch_ack_is_limited_to_two_mss() -> None:
    cc = NewReno(MSS)
    cc.on_ack(10 * MSS, T0, None, 10 * MSS)  # RFC 3465 L = 2 * SMSS
    assert cc.cwnd == 12 * MSS


def test_slow_start_partial_segment_ack_counts_bytes() -> None:
    cc = NewReno(MSS)
    cc.on_ack(300, T0, None, 10 * MSS)
    assert cc.cwnd == 10 * MSS + 300


def test_slow_start_app_limited_does_not_grow() -> None:
    cc = NewReno(MSS)
    cc.on_ack(MSS, T0, None, 5 * MSS)  # half the window unused: 2 * 5 MSS <= cwnd
    assert cc.cwnd == 10 * MSS
    cc.on_ack(MSS, T0 + 1, None, 5 * MSS + 1)  # more than half in use
    assert cc.cwnd == 11 * MSS


def test_slow_start_crossing_ssthresh_passes_the_rest_to_avoidance() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 30 * MSS, T0)
    cc.on_rto(now, 30 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (1 * MSS, 15 * MSS)
    now = grow_to(cc, 14 * MSS, now)
    cc.on_ack(2 * MSS, now + 1, None, cc.cwnd)
    # 1 MSS takes cwnd to ssthresh, the other MSS is counted in avoidance.
    assert cc.cwnd == cc.ssthresh == 15 * MSS
    assert not cc.in_slow_start
    for i in range(13):
        cc.on_ack(MSS, now + 2 + i, None, cc.cwnd)
    assert cc.cwnd == 15 * MSS
    cc.on_ack(MSS, now + 20, None, cc.cwnd)  # 15 MSS acknowledged in avoidance
    assert cc.cwnd == 16 * MSS


# === NewReno: congestion avoidance ============================================


def test_newreno_avoidance_adds_one_mss_per_rtt() -> None:
    cc = NewReno(MSS)
    now = after_loss(cc, 40 * MSS, T0, 100 * MS)
    assert (cc.cwnd, cc.ssthresh) == (20 * MSS, 20 * MSS)
    for i in range(19):
        cc.on_ack(MSS, now + i, None, cc.cwnd)
    assert cc.cwnd == 20 * MSS
    cc.on_ack(MSS, now + 19, None, cc.cwnd)
    assert cc.cwnd == 21 * MSS
    now = one_round(cc, now + 100 * MS, 100 * MS)
    assert cc.cwnd == 22 * MSS
    now = one_round(cc, now, 100 * MS, ack_bytes=2 * MSS)  # delayed ACKs: the same
    assert cc.cwnd == 23 * MSS


def test_newreno_avoidance_grows_at_most_one_mss_per_ack() -> None:
    cc = NewReno(MSS)
    now = after_loss(cc, 40 * MSS, T0, 100 * MS)
    cc.on_ack(50 * MSS, now, None, cc.cwnd)
    assert cc.cwnd == 21 * MSS


def test_newreno_avoidance_app_limited_does_not_grow() -> None:
    cc = NewReno(MSS)
    now = after_loss(cc, 40 * MSS, T0, 100 * MS)
    for i in range(100):
        cc.on_ack(MSS, now + i, None, 19 * MSS)  # room for one more segment
    assert cc.cwnd == 20 * MSS
    for i in range(20):
        cc.on_ack(MSS, now + 200 + i, None, 19 * MSS + 1)
    assert cc.cwnd == 21 * MSS


# === NewReno: loss ============================================================


def test_newreno_enter_recovery_halves_flight_size_not_cwnd() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 40 * MSS, T0)
    cc.on_enter_recovery(now, 30 * MSS + 1)
    assert cc.ssthresh == 15 * MSS  # RFC 5681 eq. 4, FlightSize / 2
    assert cc.cwnd == 15 * MSS
    assert cc.in_recovery


def test_newreno_enter_recovery_small_flight_floors_at_two_mss() -> None:
    cc = NewReno(MSS)
    cc.on_enter_recovery(T0, 3 * MSS)
    assert (cc.ssthresh, cc.cwnd) == (2 * MSS, 2 * MSS)


def test_recovery_acks_and_second_entry_change_nothing() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 40 * MSS, T0)
    cc.on_enter_recovery(now, 40 * MSS)
    cc.on_ack(5 * MSS, now + 1, None, 20 * MSS)  # partial ACK
    cc.on_enter_recovery(now + 2, 20 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (20 * MSS, 20 * MSS)


def test_exit_recovery_sets_cwnd_to_ssthresh() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 40 * MSS, T0)
    cc.on_enter_recovery(now, 40 * MSS)
    cc.on_exit_recovery(now + 1)
    assert (cc.cwnd, cc.ssthresh, cc.in_recovery) == (20 * MSS, 20 * MSS, False)
    cc.on_exit_recovery(now + 2)  # not in recovery: nothing
    assert cc.cwnd == 20 * MSS


def test_exit_recovery_with_flight_size_avoids_a_burst() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 40 * MSS, T0)
    cc.on_enter_recovery(now, 40 * MSS)
    cc.on_exit_recovery(now + 1, in_flight=5 * MSS)  # RFC 6582 3.2 step 3, first option
    assert cc.cwnd == 6 * MSS
    assert cc.in_slow_start  # back to ssthresh in slow start
    cc.on_enter_recovery(now + 2, 20 * MSS)
    cc.on_exit_recovery(now + 3, in_flight=0)
    assert cc.cwnd == 2 * MSS


def test_newreno_rto_sets_loss_window_of_one_mss() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 40 * MSS, T0)
    cc.on_rto(now, 40 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (1 * MSS, 20 * MSS)
    assert cc.in_slow_start


def test_repeated_rto_holds_ssthresh_until_new_data_is_acked() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 40 * MSS, T0)
    cc.on_rto(now, 40 * MSS)
    cc.on_rto(now + 1 * S, 40 * MSS)  # the same segment timed out again
    assert (cc.cwnd, cc.ssthresh) == (1 * MSS, 20 * MSS)
    cc.on_ack(MSS, now + 2 * S, None, 40 * MSS)
    cc.on_rto(now + 3 * S, 10 * MSS)  # a new loss
    assert (cc.cwnd, cc.ssthresh) == (1 * MSS, 5 * MSS)


def test_rto_in_recovery_keeps_ssthresh_and_ends_recovery() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 40 * MSS, T0)
    cc.on_enter_recovery(now, 40 * MSS)
    cc.on_rto(now + 1 * S, 30 * MSS)
    assert (cc.cwnd, cc.ssthresh, cc.in_recovery) == (1 * MSS, 20 * MSS, False)
    cc.on_exit_recovery(now + 2 * S)  # a late full ACK: nothing to do
    assert cc.cwnd == 1 * MSS


# === Restart after idle (RFC 5681 4.1) ========================================


@pytest.mark.parametrize("cls", [NewReno, Cubic])
def test_idle_longer_than_rto_restarts_from_iw(cls: type[CongestionControl]) -> None:
    cc = cls(MSS)
    now = grow_to(cc, 40 * MSS, T0)
    cc.on_idle_restart(now + 1 * S, 1 * S, 1 * S)  # not longer than RTO
    assert (cc.cwnd, cc.ssthresh) == (40 * MSS, SSTHRESH_INFINITE)
    cc.on_idle_restart(now + 2 * S, 1 * S + 1, 1 * S)
    assert cc.cwnd == 10 * MSS
    assert cc.ssthresh == SSTHRESH_INFINITE


def test_idle_restart_remembers_three_quarters_of_cwnd_in_ssthresh() -> None:
    cc = NewReno(MSS)
    now = after_loss(cc, 40 * MSS, T0, 100 * MS)
    for _ in range(20):
        now = one_round(cc, now, 100 * MS)
    assert (cc.cwnd, cc.ssthresh) == (40 * MSS, 20 * MSS)
    cc.on_idle_restart(now + 5 * S, 5 * S, 300 * MS)
    assert (cc.cwnd, cc.ssthresh) == (10 * MSS, 30 * MSS)


def test_idle_restart_keeps_a_larger_ssthresh() -> None:
    cc = NewReno(MSS)
    now = after_loss(cc, 80 * MSS, T0, 100 * MS)
    cc.on_idle_restart(now + 5 * S, 5 * S, 300 * MS)
    assert (cc.cwnd, cc.ssthresh) == (10 * MSS, 40 * MSS)


def test_idle_restart_never_raises_a_small_cwnd() -> None:
    cc = NewReno(MSS)
    now = grow_to(cc, 20 * MSS, T0)
    cc.on_rto(now, 20 * MSS)
    cc.on_idle_restart(now + 5 * S, 5 * S, 300 * MS)
    assert (cc.cwnd, cc.ssthresh) == (1 * MSS, 10 * MSS)


# === CUBIC ====================================================================


def test_cubic_loss_uses_beta_0_7_of_flight_size() -> None:
    cc = Cubic(MSS)
    now = grow_to(cc, 100 * MSS, T0)
    cc.on_enter_recovery(now, 100 * MSS)
    assert (cc.ssthresh, cc.cwnd, cc.w_max) == (70 * MSS, 70 * MSS, 100 * MSS)
    cc.on_exit_recovery(now + 1)
    assert cc.cwnd == 70 * MSS


def test_cubic_loss_with_small_flight_floors_at_two_mss() -> None:
    cc = Cubic(MSS)
    cc.on_enter_recovery(T0, 33_333)
    assert cc.ssthresh == 23_333
    cc.on_exit_recovery(T0 + 1)
    cc.on_enter_recovery(T0 + 2, 2 * MSS)
    assert (cc.ssthresh, cc.cwnd) == (2 * MSS, 2 * MSS)


def test_cubic_k_follows_rfc9438_equation_2() -> None:
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, 100 * MS)
    assert cc.k_us == 0 and cc.epoch_start_us is None  # no stage yet
    cc.on_ack(MSS, now, 100 * MS, cc.cwnd)  # the first ACK starts the stage
    assert cc.epoch_start_us == now
    # K = cbrt((W_max - cwnd_epoch) / C) = cbrt((100 - 70) / 0.4) = cbrt(75) s
    assert cc.k_us == round(math.cbrt(75) * S) == 4_217_163
    assert cc.state() == {
        "cwnd": cc.cwnd,
        "ssthresh": 70 * MSS,
        "mss": MSS,
        "w_max": 100 * MSS,
        "k_us": 4_217_163,
        "w_est": cc.w_est,
    }


def test_cubic_w_cubic_values_at_chosen_times() -> None:
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, 100 * MS)
    cc.on_ack(MSS, now, 100 * MS, cc.cwnd)
    k = math.cbrt(75)
    # W_cubic(t) = C * (t - K)^3 + W_max, in segments times MSS.
    assert cc.w_cubic(0) == pytest.approx(70 * MSS)
    assert cc.w_cubic(1 * S) == pytest.approx(MSS * (0.4 * (1 - k) ** 3 + 100))
    assert cc.w_cubic(1 * S) == pytest.approx(86_680.8, abs=0.1)
    assert cc.w_cubic(round(k * S)) == pytest.approx(100 * MSS)
    assert cc.w_cubic(round((k + 1) * S)) == pytest.approx(100_400)
    assert cc.w_cubic(round((k + 5) * S)) == pytest.approx(MSS * (100 + 0.4 * 125))


def test_cubic_concave_approach_then_plateau_then_probing() -> None:
    rtt = 100 * MS
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, rtt)
    start = now
    cwnd_at: dict[int, int] = {}
    for r in range(1, 52):
        now = one_round(cc, now, rtt)
        cwnd_at[r] = cc.cwnd
        epoch = cc.epoch_start_us
        assert epoch is not None
        # Each round cwnd reaches about the target W_cubic(t + RTT) of its ACKs.
        assert cc.cwnd == pytest.approx(cc.w_cubic(now - epoch), abs=0.1 * MSS)
    assert cc.epoch_start_us == start + rtt // 70  # the first ACK of the stage
    # Concave: fast growth well below W_max, slowing down near it.
    assert cwnd_at[10] - cwnd_at[1] > 14 * MSS
    assert 0 < cwnd_at[42] - cwnd_at[32] < 1 * MSS  # the plateau around K = 4.2 s
    assert 99 * MSS < cwnd_at[42] < 100_100
    # Convex: past K, cwnd probes beyond W_max with growing steps.
    assert cwnd_at[51] > 100 * MSS
    assert cwnd_at[51] - cwnd_at[50] > cwnd_at[47] - cwnd_at[46] > 0


def test_cubic_probes_far_beyond_w_max_later() -> None:
    rtt = 100 * MS
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, rtt)
    for _ in range(90):
        now = one_round(cc, now, rtt)
    # t = 9 s, 4.8 s past K: W_cubic = 100 + 0.4 * 4.8^3 = 144 segments.
    assert cc.cwnd > 140 * MSS
    assert cc.ssthresh == 70 * MSS


def test_cubic_growth_per_ack_is_capped_at_half_the_acked_bytes() -> None:
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, 100 * MS)
    cc.on_ack(MSS, now, 100 * MS, cc.cwnd)
    before = cc.cwnd
    # 60 s later, still cwnd-limited: W_cubic(t + RTT) is far above 1.5 cwnd,
    # so target = 1.5 cwnd and cwnd grows by (0.5 cwnd) * acked / cwnd.
    cc.on_ack(MSS, now + 60 * S, 100 * MS, cc.cwnd)
    assert cc.cwnd - before in (500, 501)  # plus the carried fraction, if any


def test_cubic_fast_convergence_lowers_w_max() -> None:
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, 100 * MS)
    for _ in range(5):
        now = one_round(cc, now, 100 * MS)
    cwnd = cc.cwnd
    assert cwnd < 100 * MSS
    cc.on_enter_recovery(now, cwnd)
    # RFC 9438 4.7: W_max = cwnd * (1 + beta) / 2
    assert cc.w_max == int(cwnd * 0.85)
    assert cc.ssthresh == cwnd * 7 // 10


def test_cubic_without_fast_convergence_remembers_cwnd() -> None:
    cc = Cubic(MSS, fast_convergence=False)
    now = after_loss(cc, 100 * MSS, T0, 100 * MS)
    for _ in range(5):
        now = one_round(cc, now, 100 * MS)
    cwnd = cc.cwnd
    cc.on_enter_recovery(now, cwnd)
    assert cc.w_max == cwnd


def test_cubic_reno_friendly_region_dominates_on_short_rtt() -> None:
    rtt = 1 * MS
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, rtt)
    now = one_round(cc, now, rtt)
    # First stage rounds grow W_est by alpha_cubic segments per RTT (0.53).
    assert cc.cwnd - 70 * MSS == pytest.approx(ALPHA_CUBIC * MSS, abs=0.02 * MSS)
    for _ in range(99):
        now = one_round(cc, now, rtt)
    epoch = cc.epoch_start_us
    assert epoch is not None
    # After 100 ms W_cubic is still about 72 segments; cwnd follows W_est.
    assert cc.w_cubic(now - epoch) < 73 * MSS
    assert cc.cwnd == cc.w_est > 140 * MSS
    # Once W_est passed cwnd_prior (100 segments), alpha is 1: Reno's 1 MSS per RTT.
    before = cc.cwnd
    one_round(cc, now, rtt)
    assert cc.cwnd - before == pytest.approx(1 * MSS, abs=0.02 * MSS)


def test_cubic_app_limited_does_not_grow_and_stops_the_clock() -> None:
    rtt = 100 * MS
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, rtt)
    now = one_round(cc, now, rtt)
    cwnd = cc.cwnd
    epoch = cc.epoch_start_us
    assert epoch is not None
    # 10 s of ACKs with half the window in flight.
    for i in range(1, 1001):
        cc.on_ack(MSS, now + i * 10 * MS, rtt, cwnd // 2)
    now += 10 * S
    assert cc.cwnd == cwnd
    assert cc.epoch_start_us == epoch + 10 * S  # the app-limited time is not in t
    # Back to cwnd-limited: growth resumes where it was, not 10 s further on.
    now = one_round(cc, now, rtt)
    assert cwnd < cc.cwnd < cwnd + 3 * MSS


def test_cubic_short_idle_is_left_out_of_t() -> None:
    rtt = 100 * MS
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, rtt)
    now = one_round(cc, now, rtt)
    epoch = cc.epoch_start_us
    assert epoch is not None
    # Last ACK at `now`, idle since the last send one RTT before it.
    cc.on_idle_restart(now + 200 * MS, 300 * MS, 1 * S)
    assert cc.epoch_start_us == epoch + 200 * MS
    assert cc.cwnd > 70 * MSS


def test_cubic_rto_then_next_stage_has_k_zero_and_w_max_at_its_start() -> None:
    cc = Cubic(MSS)
    now = after_loss(cc, 100 * MSS, T0, 100 * MS)
    for _ in range(3):
        now = one_round(cc, now, 100 * MS)
    flight = cc.cwnd
    cc.on_rto(now, flight)
    assert cc.cwnd == 1 * MSS
    assert cc.ssthresh == flight * 7 // 10
    while cc.in_slow_start:
        now += 100
        cc.on_ack(MSS, now, 100 * MS, cc.cwnd)
    # The ACK that crossed ssthresh started the stage at cwnd = ssthresh.
    assert cc.epoch_start_us == now
    assert cc.k_us == 0
    assert cc.w_max == flight * 7 // 10


# === Factory ==================================================================


def test_factory_builds_each_algorithm() -> None:
    assert DEFAULT_CONGESTION_CONTROL == "cubic"
    cubic = make_congestion_control("cubic", 1460)
    newreno = make_congestion_control("newreno", 536)
    assert isinstance(cubic, Cubic) and cubic.name == "cubic" and cubic.mss == 1460
    assert isinstance(newreno, NewReno) and newreno.name == "newreno" and newreno.cwnd == 5360
    assert set(CONGESTION_CONTROLS) == {"cubic", "newreno"}


@pytest.mark.parametrize("name", ["bbr", "CUBIC", "", "reno"])
def test_factory_unknown_name_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(ValueError, match=r"valid: cubic, newreno"):
        make_congestion_control(name, 1460)


def test_repr_and_state() -> None:
    cc = NewReno(MSS)
    assert cc.state() == {"cwnd": 10 * MSS, "ssthresh": SSTHRESH_INFINITE, "mss": MSS}
    assert repr(cc) == f"NewReno(cwnd=10000, ssthresh={SSTHRESH_INFINITE}, mss=1000)"


# === Invariants ===============================================================

event = st.one_of(
    st.tuples(
        st.just("ack"),
        st.integers(1, 200_000),
        st.integers(0, 400_000),
        st.one_of(st.none(), st.integers(0, 2 * S)),
    ),
    st.tuples(st.just("enter"), st.integers(0, 400_000)),
    st.tuples(st.just("exit"), st.one_of(st.none(), st.integers(0, 400_000))),
    st.tuples(st.just("rto"), st.integers(0, 400_000)),
    st.tuples(st.just("idle"), st.integers(0, 10 * S), st.integers(1, 3 * S)),
    st.tuples(st.just("mss"), st.integers(1, 9000)),
    st.tuples(st.just("handshake")),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["cubic", "newreno"]),
    st.integers(1, 9000),
    st.lists(st.tuples(st.integers(0, 2 * S), event), max_size=60),
)
def test_any_event_sequence_keeps_windows_sane(
    name: str, mss: int, events: list[tuple[int, tuple[object, ...]]]
) -> None:
    cc = make_congestion_control(name, mss)
    now = T0
    for gap, ev in events:
        now += gap
        kind = ev[0]
        if kind == "ack":
            acked, flight, rtt = ev[1], ev[2], ev[3]
            assert isinstance(acked, int) and isinstance(flight, int)
            assert rtt is None or isinstance(rtt, int)
            cc.on_ack(acked, now, rtt, flight)
        elif kind == "enter":
            assert isinstance(ev[1], int)
            cc.on_enter_recovery(now, ev[1])
        elif kind == "exit":
            assert ev[1] is None or isinstance(ev[1], int)
            cc.on_exit_recovery(now, ev[1])
        elif kind == "rto":
            assert isinstance(ev[1], int)
            cc.on_rto(now, ev[1])
        elif kind == "idle":
            assert isinstance(ev[1], int) and isinstance(ev[2], int)
            cc.on_idle_restart(now, ev[1], ev[2])
        elif kind == "mss":
            assert isinstance(ev[1], int)
            cc.set_mss(ev[1])
        else:
            cc.on_handshake_loss()
        assert isinstance(cc.cwnd, int) and isinstance(cc.ssthresh, int)
        assert cc.cwnd >= cc.mss
        assert cc.ssthresh >= 2 * cc.mss
        if cc.in_recovery:
            assert cc.cwnd >= 2 * cc.mss
        if kind == "enter":
            assert cc.cwnd >= 2 * cc.mss
        assert all(isinstance(v, int) for v in cc.state().values())
