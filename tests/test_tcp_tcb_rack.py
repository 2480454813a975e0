"""RACK-TLP (RFC 8985) in the TCP control block, segment by segment with a fake clock.

The helpers and conventions are test_tcp_tcb's: PLAIN with SACK on, MSS
500, our data at offsets from L0, times in microseconds.  The handshake
takes 10 ms, so SRTT and the minimum RTT start at 10 ms: the probe timeout
is 2 * SRTT + 2 ms = 22 ms, and RACK's reordering window, once it is not
zero, is min_RTT / 4 = 2.5 ms.
"""

from __future__ import annotations

from tests.test_tcp_tcb import (
    L0,
    MS,
    PEER_WIN,
    R0,
    T1,
    Seg,
    _sack,
    established,
    expect,
    fire,
    plain,
    rx,
    s,
)
from ustack.tcp.tcb import Tcb
from ustack.wire.tcp import ACK, PSH

SACK_CFG = plain(sndbuf=8000, sack=True)


def _sending(nbytes: int) -> Tcb:
    """SACK negotiated; `nbytes` queued and the initial window (5000 bytes) sent at T1."""
    tcb = established(SACK_CFG, sack_permitted=True)
    assert tcb.send(b"d" * nbytes) == nbytes
    tcb.dispatch(T1)
    return tcb


def _d(off: int, flags: int = ACK) -> Seg:
    """Our data segment of 500 bytes at offset `off`."""
    return Seg(s(L0 + off), R0, flags, 4000, b"d" * 500)


# ==========================================================================
# tail loss probe
# ==========================================================================


def test_tlp_probe_recovers_a_lost_tail_without_a_timeout() -> None:
    tcb = _sending(2000)  # segments 0..3; 2 and 3 are lost
    assert tcb.poll_at() == T1 + 22 * MS  # PTO, well before the RTO at T1 + 200 ms
    rx(tcb, T1 + 10 * MS, R0, s(L0 + 1000), ACK)
    expect(tcb, T1 + 10 * MS)
    t = T1 + 32 * MS  # the ACK restarted the PTO
    fire(tcb, t)
    # Nothing new to send: the probe is the last segment again.
    expect(tcb, t, _d(1500, ACK | PSH))
    assert tcb.poll_at() == t + 200 * MS  # then the retransmission timer, restarted
    # The probe arrives: its SACK shows that segment 2, sent before it, is
    # lost (RACK), and recovery resends it at once.
    rx(tcb, t + 10 * MS, R0, s(L0 + 1000), ACK, sack_blocks=_sack((1500, 2000)))
    assert tcb.in_recovery
    expect(tcb, t + 10 * MS, _d(1000))
    rx(tcb, t + 20 * MS, R0, s(L0 + 2000), ACK)
    assert not tcb.in_recovery
    st = tcb.stats()
    assert (st["tlp_probes"], st["rtos"], st["retransmits"]) == (1, 0, 2)
    assert tcb.poll_at() is None


def test_tlp_probe_sends_new_data_when_the_window_allows() -> None:
    tcb = _sending(6000)  # cwnd holds 5000 bytes: 1000 wait
    fire(tcb, T1 + 22 * MS)
    # The probe is the next new segment (cwnd does not hold a probe back),
    # not an old one.
    expect(tcb, T1 + 22 * MS, _d(5000))
    assert tcb.stats()["retransmits"] == 0


def test_tlp_at_most_one_probe_per_flight() -> None:
    tcb = _sending(1500)
    fire(tcb, T1 + 22 * MS)
    expect(tcb, T1 + 22 * MS, _d(1000, ACK | PSH))
    # No second probe: the next deadline is the restarted retransmission timer.
    assert tcb.poll_at() == T1 + 222 * MS
    fire(tcb, T1 + 222 * MS)
    expect(tcb, T1 + 222 * MS, _d(0))
    assert tcb.stats()["rtos"] == 1


# ==========================================================================
# RACK loss detection
# ==========================================================================


def test_rack_detects_a_lost_retransmission_without_a_timeout() -> None:
    tcb = _sending(8000)  # segments 0..9 at T1; segment 0 is lost
    t = T1 + 10 * MS
    rx(tcb, t, R0, L0, ACK, sack_blocks=_sack((500, 1000)))
    expect(tcb, t, _d(5000))  # limited transmit
    rx(tcb, t + MS, R0, L0, ACK, sack_blocks=_sack((500, 1500)))
    expect(tcb, t + MS, _d(5500))
    rx(tcb, t + 2 * MS, R0, L0, ACK, sack_blocks=_sack((500, 2000)))
    assert tcb.in_recovery  # three segments SACKed: segment 0 is lost
    expect(tcb, t + 2 * MS, _d(0))  # and its retransmission is lost too
    rx(tcb, t + 3 * MS, R0, L0, ACK, sack_blocks=_sack((500, 3000)))
    expect(tcb, t + 3 * MS, _d(6000))
    rx(tcb, t + 4 * MS, R0, L0, ACK, sack_blocks=_sack((500, 3500)))
    expect(tcb, t + 4 * MS, _d(6500))
    # The segment sent at t + 3 ms is SACKed at t + 13 ms; the retransmission
    # sent before it at t + 2 ms is not: RACK marks it lost, and it goes again.
    rx(tcb, t + 13 * MS, R0, L0, ACK, sack_blocks=_sack((500, 6500)))
    segs = tcb.dispatch(t + 13 * MS)
    assert segs[0].seq == L0 and len(segs[0].payload) == 500
    st = tcb.stats()
    assert (st["retransmits"], st["rtos"], st["recoveries"]) == (2, 0, 1)


def test_rack_one_sacked_segment_marks_the_hole_lost_when_the_window_ends() -> None:
    tcb = _sending(2000)
    t = T1 + 10 * MS
    rx(tcb, t, R0, L0, ACK, sack_blocks=_sack((500, 1000)))
    expect(tcb, t)
    assert not tcb.in_recovery
    # Segment 0 went before the SACKed segment 1: lost unless it shows up
    # within the reordering window of 2.5 ms.
    fire(tcb, t + 2500)
    assert tcb.in_recovery
    expect(tcb, t + 2500, _d(0))
    assert tcb.stats()["rack_reo_timeouts"] == 1


# ==========================================================================
# reordering
# ==========================================================================


def test_rack_reordering_within_the_window_starts_no_recovery() -> None:
    tcb = _sending(5000)
    t = T1 + 10 * MS
    # Segment 0 is overtaken by segment 1, then arrives 1 ms later.
    rx(tcb, t, R0, L0, ACK, sack_blocks=_sack((500, 1000)))
    assert tcb.poll_at() == t + 2500  # RACK's reordering timer
    rx(tcb, t + MS, R0, s(L0 + 1000), ACK)
    assert tcb.stats()["rack_reordering_seen"] is True
    expect(tcb, t + MS)
    srtt = tcb.stats()["srtt_us"]
    assert isinstance(srtt, int)
    assert tcb.poll_at() == t + MS + 2 * srtt + 2 * MS  # the timer is gone: a probe timeout
    # Now segment 2 is displaced by three: three segments SACKed above it.
    # Without reordering seen this is DupThresh's loss; with it, RACK waits.
    for k, end in enumerate((2000, 2500, 3000)):
        rx(tcb, t + (2 + k) * MS, R0, s(L0 + 1000), ACK, sack_blocks=_sack((1500, end)))
        expect(tcb, t + (2 + k) * MS)
    assert not tcb.in_recovery
    rx(tcb, t + 5 * MS, R0, s(L0 + 3000), ACK)  # segment 2 arrives
    expect(tcb, t + 5 * MS)
    st = tcb.stats()
    assert (st["recoveries"], st["retransmits"]) == (0, 0)
    assert not tcb.in_recovery


def test_rack_reordering_beyond_the_window_is_a_loss() -> None:
    tcb = _sending(5000)
    t = T1 + 10 * MS
    rx(tcb, t, R0, L0, ACK, sack_blocks=_sack((500, 1000)))
    rx(tcb, t + MS, R0, s(L0 + 1000), ACK)  # reordering seen
    rx(tcb, t + 2 * MS, R0, s(L0 + 1000), ACK, sack_blocks=_sack((1500, 2000)))
    # Segment 2 (sent at T1) was due by t + 2 ms + 2.5 ms.
    fire(tcb, t + 4500)
    assert tcb.in_recovery
    expect(tcb, t + 4500, _d(1000))


def test_rack_dsack_widens_the_reordering_window_once_per_round() -> None:
    tcb = _sending(5000)
    t = T1 + 10 * MS
    assert tcb.stats()["rack_reo_wnd_us"] == 2500
    rx(tcb, t, R0, L0, ACK, sack_blocks=_sack((500, 1000)))
    fire(tcb, t + 2500)
    expect(tcb, t + 2500, _d(0))  # a retransmission that was not needed:
    rx(tcb, t + 3 * MS, R0, s(L0 + 1000), ACK)  # the original arrives
    # and the retransmission is reported as a duplicate (RFC 2883: a first
    # block below the cumulative ACK), while data is still outstanding.
    rx(tcb, t + 12 * MS, R0, s(L0 + 1000), ACK, sack_blocks=_sack((0, 500)))
    assert tcb.stats()["dsacks"] == 1
    # A second D-SACK in the same round trip does not widen the window again.
    rx(tcb, t + 12500, R0, s(L0 + 1000), ACK, window=PEER_WIN + 1, sack_blocks=_sack((0, 500)))
    assert tcb.stats()["dsacks"] == 2
    rx(tcb, t + 13 * MS, R0, s(L0 + 5000), ACK)
    assert not tcb.in_recovery
    assert tcb.stats()["rack_reo_wnd_us"] == 5000  # min_RTT / 4, times 2
