"""The TCP control block driven segment by segment with a fake clock.

Each test sends crafted segments at explicit times and asserts exactly
which segments `dispatch` returns, then that nothing else comes out.  Our
ISS is 2**32 - 1000 and the peer's 2**32 - 600, so any test that moves a
few hundred bytes crosses the wrap of the sequence space.  Most tests use
PLAIN: MSS 500, 4000-byte buffers and no options, so numbers stay readable;
option tests say which they turn on.  Times are microseconds.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import NamedTuple

import pytest

from ustack.tcp.seq import seq_add
from ustack.tcp.tcb import MAX_ACKS_PER_DISPATCH, OutSegment, State, Tcb, TcpConfig, TcpDrop
from ustack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment

LOCAL = (0xC6120002, 80)
REMOTE = (0xC6120001, 40000)
ISS = 2**32 - 1000
IRS = 2**32 - 600
L0 = seq_add(ISS, 1)  # our first data byte
R0 = seq_add(IRS, 1)  # the peer's first data byte
MS = 1_000
S = 1_000_000
T0 = 10 * S
T1 = T0 + 10 * MS  # when the helpers' handshakes complete (RTT 10 ms)
PEER_WIN = 8000

PLAIN = TcpConfig(
    mss=500, rcvbuf=4000, sndbuf=4000, timestamps=False, sack=False, window_scaling=False
)


def plain(**kw: object) -> TcpConfig:
    """PLAIN with some settings changed."""
    return dataclasses.replace(PLAIN, **kw)  # type: ignore[arg-type]


def s(x: int) -> int:
    """Sequence number x modulo 2**32."""
    return x & 0xFFFFFFFF


class Seg(NamedTuple):
    """OutSegment with the payload as bytes, for readable comparisons."""

    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    ts: tuple[int, int] | None = None


def norm(o: OutSegment) -> Seg:
    return Seg(
        o.seq,
        o.ack,
        o.flags,
        o.window,
        bytes(o.payload),
        o.mss,
        o.wscale,
        o.sack_permitted,
        o.sack_blocks,
        o.ts,
    )


def expect(tcb: Tcb, now: int, *segs: Seg) -> None:
    """dispatch(now) returns exactly `segs`, and a second dispatch nothing."""
    assert [norm(o) for o in tcb.dispatch(now)] == list(segs)
    assert tcb.dispatch(now) == []


def tcp(
    seq: int,
    ack: int = 0,
    flags: int = ACK,
    window: int = PEER_WIN,
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    sack_blocks: tuple[tuple[int, int], ...] = (),
    ts: tuple[int, int] | None = None,
) -> TcpSegment:
    ts_val, ts_ecr = ts if ts is not None else (None, None)
    return TcpSegment(
        REMOTE[1],
        LOCAL[1],
        s(seq),
        s(ack),
        flags,
        window,
        0,
        20,
        mss,
        wscale,
        sack_permitted,
        sack_blocks,
        ts_val,
        ts_ecr,
    )


def rx(
    tcb: Tcb,
    now: int,
    seq: int,
    ack: int = 0,
    flags: int = ACK,
    payload: bytes | bytearray = b"",
    window: int = PEER_WIN,
    **opts: object,
) -> None:
    tcb.on_segment(tcp(seq, ack, flags, window, **opts), payload, now)  # type: ignore[arg-type]


def state(tcb: Tcb) -> str:
    """The state in RFC spelling (a function call, so mypy does not narrow it)."""
    return str(tcb.state)


def fire(tcb: Tcb, now: int) -> None:
    """Run the timers at `now`, which must be the next deadline."""
    assert tcb.poll_at() == now
    tcb.on_timer(now)


def established(config: TcpConfig = PLAIN, peer_window: int = PEER_WIN, **opts: object) -> Tcb:
    """Active open at T0, SYN-ACK at T1 (options `opts`), our ACK sent."""
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, config)
    tcb.dispatch(T0)
    opts.setdefault("mss", 500)
    rx(tcb, T1, IRS, L0, SYN | ACK, window=peer_window, **opts)  # type: ignore[arg-type]
    assert state(tcb) == "ESTABLISHED"
    tcb.dispatch(T1)
    return tcb


def syn_received(config: TcpConfig = PLAIN, **opts: object) -> Tcb:
    """Passive open at T0 from a SYN with MSS 500 (and `opts`); SYN-ACK sent."""
    opts.setdefault("mss", 500)
    syn = tcp(IRS, 0, SYN, PEER_WIN, **opts)  # type: ignore[arg-type]
    tcb = Tcb.accept_syn(LOCAL, REMOTE, syn, ISS, T0, config)
    tcb.dispatch(T0)
    return tcb


QUICKACKS = 4
"""PLAIN's quick ACKs: the 4000-byte window holds 4 pairs of 500-byte segments."""
Q0 = seq_add(R0, QUICKACKS)  # the peer's next byte after `quickacks_used`


def quickacks_used(config: TcpConfig = PLAIN) -> Tcb:
    """established(), then the peer's first bytes, one per burst at T1, each ACKed
    at the dispatch (quick-ACK mode, Linux) and read, until no quick ACK is left.

    RCV.NXT is then Q0, the right edge still R0 + 4000 (receiver SWS)."""
    tcb = established(config)
    for i in range(QUICKACKS):
        rx(tcb, T1, s(R0 + i), L0, ACK, b"q")
        assert tcb.recv(10) == b"q"
        expect(tcb, T1, Seg(L0, s(R0 + i + 1), ACK, 3999 - i))
    assert tcb.stats()["quickacks"] == 0
    return tcb


def ack_all(tcb: Tcb, now: int, window: int = PEER_WIN) -> None:
    """The peer acknowledges everything we sent."""
    rx(tcb, now, tcb.rcv_nxt, tcb.snd_max, ACK, window=window)


# ==========================================================================
# configuration
# ==========================================================================


def test_config_window_scale_from_receive_buffer() -> None:
    assert TcpConfig(rcvbuf=65535).rcv_wscale == 0
    assert TcpConfig(rcvbuf=65536).rcv_wscale == 1
    assert TcpConfig(rcvbuf=256 * 1024).rcv_wscale == 3
    assert TcpConfig(rcvbuf=1 << 30).rcv_wscale == 14
    assert TcpConfig(rcvbuf=1 << 20, window_scaling=False).rcv_wscale == 0


def test_config_mss_clamped_to_mtu() -> None:
    assert TcpConfig().effective_mss == 1460
    assert TcpConfig(mtu=1500).effective_mss == 1460
    assert TcpConfig(mtu=9000).effective_mss == 1460
    assert TcpConfig(mss=9000, mtu=1280).effective_mss == 1240


@pytest.mark.parametrize(
    "kwargs",
    [{"mss": 10}, {"rcvbuf": 0}, {"rcvbuf": 1 << 31}, {"keepalive_count": 0}, {"mtu": 50}],
)
def test_config_rejects_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        TcpConfig(**kwargs)  # type: ignore[arg-type]


def test_state_str_is_rfc_spelling() -> None:
    assert str(State.SYN_RECEIVED) == "SYN-RECEIVED"
    assert str(State.TIME_WAIT) == "TIME-WAIT"
    assert [str(x) for x in State] == [
        "CLOSED",
        "LISTEN",
        "SYN-SENT",
        "SYN-RECEIVED",
        "ESTABLISHED",
        "FIN-WAIT-1",
        "FIN-WAIT-2",
        "CLOSE-WAIT",
        "CLOSING",
        "LAST-ACK",
        "TIME-WAIT",
    ]


# ==========================================================================
# SYN-SENT
# ==========================================================================


def test_syn_sent_connect_sends_syn_with_options() -> None:
    cfg = TcpConfig(mss=500, rcvbuf=300_000)
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, cfg, ts_offset=5)
    assert state(tcb) == "SYN-SENT"
    expect(
        tcb,
        T0,
        Seg(ISS, 0, SYN, 65535, mss=500, wscale=3, sack_permitted=True, ts=(T0 // MS + 5, 0)),
    )
    assert tcb.poll_at() == T0 + 1 * S  # initial RTO (RFC 6298 2.1)


def test_syn_sent_plain_syn_has_only_mss() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    expect(tcb, T0, Seg(ISS, 0, SYN, 4000, mss=500))


def test_syn_sent_synack_establishes_and_acks() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T1, IRS, L0, SYN | ACK, mss=500)
    assert state(tcb) == "ESTABLISHED"
    assert (tcb.snd_una, tcb.snd_nxt, tcb.rcv_nxt, tcb.irs) == (L0, L0, R0, IRS)
    expect(tcb, T1, Seg(L0, R0, ACK, 4000))
    assert tcb.poll_at() is None
    st = tcb.stats()
    assert (st["srtt_us"], st["rttvar_us"], st["rto_us"]) == (10 * MS, 5 * MS, 200 * MS)
    assert tcb.snd_wnd == PEER_WIN and tcb.smss == 500


def test_syn_sent_synack_negotiates_options() -> None:
    cfg = TcpConfig(mss=500, rcvbuf=300_000)
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, cfg)
    tcb.dispatch(T0)
    rx(
        tcb,
        T1,
        IRS,
        L0,
        SYN | ACK,
        window=8000,
        mss=1460,
        wscale=7,
        sack_permitted=True,
        ts=(777, T0 // MS),
    )
    # The window field is scaled from now on: 300000 >> 3.
    expect(tcb, T1, Seg(L0, R0, ACK, 37500, ts=(T1 // MS, 777)))
    st = tcb.stats()
    assert (st["snd_wscale"], st["rcv_wscale"], st["timestamps"], st["sack"]) == (7, 3, True, True)
    assert tcb.smss == 500 - 12  # our MSS bounds it; timestamps take 12 bytes
    assert tcb.snd_wnd == 8000  # a SYN's window is never scaled (RFC 7323 2.2)


def test_syn_sent_synack_without_options_turns_them_off() -> None:
    cfg = TcpConfig(mss=500, rcvbuf=300_000)
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, cfg)
    tcb.dispatch(T0)
    rx(tcb, T1, IRS, L0, SYN | ACK)
    expect(tcb, T1, Seg(L0, R0, ACK, 65535))
    st = tcb.stats()
    assert (st["snd_wscale"], st["rcv_wscale"], st["timestamps"], st["sack"]) == (
        0,
        0,
        False,
        False,
    )
    assert tcb.smss == 500  # no MSS option: 536 (RFC 9293 3.7.1), less than ours


def test_syn_sent_tiny_peer_mss_is_clamped() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T1, IRS, L0, SYN | ACK, mss=1)
    assert tcb.smss == 48  # Linux's tcp_min_snd_mss
    tcb.send(b"x" * 100)
    assert [len(o.payload) for o in tcb.dispatch(T1)] == [48, 48]  # Nagle holds 4


def test_syn_sent_rst_with_acceptable_ack_is_refused() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T1, 0, L0, RST | ACK)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ECONNREFUSED
    expect(tcb, T1)
    assert tcb.poll_at() is None


def test_syn_sent_rst_without_ack_is_ignored() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T1, IRS, 0, RST)
    assert state(tcb) == "SYN-SENT"
    assert tcb.counters == {TcpDrop.RST_IGNORED: 1}
    expect(tcb, T1)


@pytest.mark.parametrize("bad_ack", [ISS, s(ISS - 5), s(ISS + 2), s(ISS + 100_000)])
def test_syn_sent_unacceptable_ack_is_answered_with_rst(bad_ack: int) -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T1, IRS, bad_ack, SYN | ACK, mss=500)
    assert state(tcb) == "SYN-SENT"
    expect(tcb, T1, Seg(bad_ack, 0, RST, 0))


def test_syn_sent_rst_with_unacceptable_ack_is_dropped_silently() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T1, IRS, s(ISS + 7), RST | ACK)
    assert state(tcb) == "SYN-SENT"
    expect(tcb, T1)


def test_syn_sent_ack_without_syn_is_dropped() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T1, IRS, L0, ACK)
    assert state(tcb) == "SYN-SENT"
    assert tcb.counters == {TcpDrop.NOT_SYN: 1}
    expect(tcb, T1)


def test_syn_sent_timeout_retransmits_syn_with_backoff_then_etimedout() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, plain(syn_retries=2))
    syn = Seg(ISS, 0, SYN, 4000, mss=500)
    expect(tcb, T0, syn)
    tcb.on_timer(T0 + S - 1)  # not yet
    expect(tcb, T0 + S - 1)
    fire(tcb, T0 + S)
    expect(tcb, T0 + S, syn)
    fire(tcb, T0 + 3 * S)
    expect(tcb, T0 + 3 * S, syn)
    fire(tcb, T0 + 7 * S)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ETIMEDOUT
    expect(tcb, T0 + 7 * S)
    assert tcb.poll_at() is None


def test_syn_sent_synack_after_syn_retransmission_uses_fallback_rto() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    fire(tcb, T0 + S)
    tcb.dispatch(T0 + S)
    rx(tcb, T0 + S + 10 * MS, IRS, L0, SYN | ACK, mss=500)
    expect(tcb, T0 + S + 10 * MS, Seg(L0, R0, ACK, 4000))
    # Karn: no sample from the retransmitted SYN; RFC 6298 5.7: RTO of 3 s.
    assert tcb.stats()["srtt_us"] is None
    assert tcb.rto_us == 3 * S
    assert tcb.cwnd == 500  # RFC 5681 3.1: IW is one segment after a lost SYN


def test_syn_sent_simultaneous_open() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T0 + 5 * MS, IRS, 0, SYN, mss=500)
    assert state(tcb) == "SYN-RECEIVED"
    expect(tcb, T0 + 5 * MS, Seg(ISS, R0, SYN | ACK, 4000, mss=500))
    rx(tcb, T1, R0, L0, ACK)
    assert state(tcb) == "ESTABLISHED"
    expect(tcb, T1)
    assert tcb.poll_at() is None


def test_syn_sent_simultaneous_open_crossing_synacks() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T0 + 5 * MS, IRS, 0, SYN, mss=500)
    tcb.dispatch(T0 + 5 * MS)
    # The peer's SYN-ACK acknowledges our SYN (RFC 9293 figure 8, line 6).
    rx(tcb, T1, IRS, L0, SYN | ACK, mss=500)
    assert state(tcb) == "ESTABLISHED"
    expect(tcb, T1)


def test_syn_sent_close_goes_closed_silently() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    tcb.close()
    assert state(tcb) == "CLOSED"
    assert tcb.error is None
    expect(tcb, T0)
    assert tcb.poll_at() is None


def test_syn_sent_data_queued_goes_after_handshake() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    assert tcb.send(b"hello") == 5
    expect(tcb, T0, Seg(ISS, 0, SYN, 4000, mss=500))
    rx(tcb, T1, IRS, L0, SYN | ACK, mss=500)
    expect(tcb, T1, Seg(L0, R0, ACK | PSH, 4000, b"hello"))


def test_syn_sent_synack_with_data_delivers_it() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T1, IRS, L0, SYN | ACK, b"early", mss=500)
    assert tcb.recv(100) == b"early"
    expect(tcb, T1, Seg(L0, s(R0 + 5), ACK, 3995))  # receiver SWS: the edge stays


# ==========================================================================
# SYN-RECEIVED
# ==========================================================================


def test_syn_received_accept_syn_sends_synack() -> None:
    syn = tcp(IRS, 0, SYN, PEER_WIN, mss=500)
    tcb = Tcb.accept_syn(LOCAL, REMOTE, syn, ISS, T0, PLAIN)
    assert state(tcb) == "SYN-RECEIVED"
    expect(tcb, T0, Seg(ISS, R0, SYN | ACK, 4000, mss=500))
    assert tcb.poll_at() == T0 + S


def test_syn_received_synack_echoes_only_offered_options() -> None:
    cfg = TcpConfig(mss=500, rcvbuf=300_000)
    syn = tcp(IRS, 0, SYN, PEER_WIN, mss=1460, ts=(4242, 0))
    tcb = Tcb.accept_syn(LOCAL, REMOTE, syn, ISS, T0, cfg, ts_offset=100)
    # no Window Scale and no SACK-Permitted: the peer did not offer them
    expect(tcb, T0, Seg(ISS, R0, SYN | ACK, 65535, mss=500, ts=(T0 // MS + 100, 4242)))


def test_syn_received_synack_with_all_options() -> None:
    cfg = TcpConfig(mss=500, rcvbuf=300_000)
    syn = tcp(IRS, 0, SYN, PEER_WIN, mss=1460, wscale=9, sack_permitted=True, ts=(4242, 0))
    tcb = Tcb.accept_syn(LOCAL, REMOTE, syn, ISS, T0, cfg)
    expect(
        tcb,
        T0,
        Seg(ISS, R0, SYN | ACK, 65535, mss=500, wscale=3, sack_permitted=True, ts=(T0 // MS, 4242)),
    )


def test_syn_received_ack_establishes() -> None:
    tcb = syn_received()
    rx(tcb, T1, R0, L0, ACK)
    assert state(tcb) == "ESTABLISHED"
    expect(tcb, T1)
    assert tcb.poll_at() is None
    assert tcb.stats()["srtt_us"] == 10 * MS


@pytest.mark.parametrize("bad_ack", [ISS, s(ISS + 50), s(ISS - 3000)])
def test_syn_received_unacceptable_ack_is_answered_with_rst(bad_ack: int) -> None:
    tcb = syn_received()
    rx(tcb, T1, R0, bad_ack, ACK)
    assert state(tcb) == "SYN-RECEIVED"
    expect(tcb, T1, Seg(bad_ack, 0, RST, 0))


def test_syn_received_retransmitted_syn_resends_synack() -> None:
    tcb = syn_received()
    rx(tcb, T0 + 300 * MS, IRS, 0, SYN, mss=500)
    assert state(tcb) == "SYN-RECEIVED"
    expect(tcb, T0 + 300 * MS, Seg(ISS, R0, SYN | ACK, 4000, mss=500))
    rx(tcb, T0 + 310 * MS, R0, L0, ACK)
    assert state(tcb) == "ESTABLISHED"
    assert tcb.stats()["srtt_us"] is None  # Karn: the SYN-ACK went twice


def test_syn_received_timeout_retransmits_synack_then_etimedout() -> None:
    syn = tcp(IRS, 0, SYN, PEER_WIN, mss=500)
    tcb = Tcb.accept_syn(LOCAL, REMOTE, syn, ISS, T0, plain(synack_retries=1))
    synack = Seg(ISS, R0, SYN | ACK, 4000, mss=500)
    expect(tcb, T0, synack)
    fire(tcb, T0 + S)
    expect(tcb, T0 + S, synack)
    fire(tcb, T0 + 3 * S)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ETIMEDOUT
    expect(tcb, T0 + 3 * S)


def test_syn_received_rst_at_rcv_nxt_closes_quietly() -> None:
    tcb = syn_received()
    rx(tcb, T1, R0, 0, RST)
    assert state(tcb) == "CLOSED"
    assert tcb.error is None  # passive open: the listener carries on
    expect(tcb, T1)


def test_syn_received_rst_in_window_draws_challenge_ack() -> None:
    tcb = syn_received()
    rx(tcb, T1, s(R0 + 5), 0, RST)
    assert state(tcb) == "SYN-RECEIVED"
    expect(tcb, T1, Seg(L0, R0, ACK, 4000))


def test_syn_received_data_on_handshake_ack_is_delivered() -> None:
    tcb = syn_received()
    rx(tcb, T1, R0, L0, ACK | PSH, b"hi")
    assert state(tcb) == "ESTABLISHED"
    assert tcb.readable_bytes == 2
    # The first data of the connection: ACKed at once (quick-ACK mode, Linux).
    expect(tcb, T1, Seg(L0, s(R0 + 2), ACK, 3998))
    assert tcb.poll_at() is None


def test_syn_received_close_sends_fin_once_established() -> None:
    tcb = syn_received()
    tcb.close()
    assert state(tcb) == "SYN-RECEIVED"
    expect(tcb, T0 + MS)
    rx(tcb, T1, R0, L0, ACK)
    assert state(tcb) == "FIN-WAIT-1"
    expect(tcb, T1, Seg(L0, R0, FIN | ACK, 4000))


def test_accept_syn_rejects_a_segment_that_is_not_a_syn() -> None:
    with pytest.raises(ValueError):
        Tcb.accept_syn(LOCAL, REMOTE, tcp(IRS, 5, SYN | ACK), ISS, T0, PLAIN)


# ==========================================================================
# ESTABLISHED: receiving
# ==========================================================================


def test_established_in_order_data_ack_is_delayed() -> None:
    tcb = quickacks_used()
    rx(tcb, T1 + MS, Q0, L0, ACK | PSH, b"x" * 100)
    expect(tcb, T1 + MS)
    fire(tcb, T1 + 41 * MS)
    expect(tcb, T1 + 41 * MS, Seg(L0, s(Q0 + 100), ACK, 3896))
    assert tcb.recv(1000) == b"x" * 100
    assert tcb.poll_at() is None


def test_established_second_full_segment_is_acked_at_once() -> None:
    tcb = quickacks_used()
    rx(tcb, T1 + MS, Q0, L0, ACK, b"a" * 500)
    expect(tcb, T1 + MS)
    rx(tcb, T1 + 2 * MS, s(Q0 + 500), L0, ACK, b"b" * 500)
    expect(tcb, T1 + 2 * MS, Seg(L0, s(Q0 + 1000), ACK, 2996))
    assert tcb.poll_at() is None
    assert tcb.recv(2000) == b"a" * 500 + b"b" * 500


def test_established_out_of_order_data_dupacks_at_once_and_hole_fill_acks_at_once() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 500), L0, ACK, b"b" * 500)
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    assert tcb.readable_bytes == 0
    rx(tcb, T1 + 2 * MS, R0, L0, ACK, b"a" * 500)
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 1000), ACK, 3000))
    assert tcb.recv(2000) == b"a" * 500 + b"b" * 500
    assert tcb.bytes_received == 1000


def test_established_out_of_order_sends_sack_blocks_most_recent_first() -> None:
    tcb = established(plain(sack=True), sack_permitted=True)
    rx(tcb, T1 + MS, s(R0 + 500), L0, ACK, b"b" * 100)
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000, sack_blocks=((s(R0 + 500), s(R0 + 600)),)))
    rx(tcb, T1 + 2 * MS, s(R0 + 1000), L0, ACK, b"c" * 100)
    expect(
        tcb,
        T1 + 2 * MS,
        Seg(
            L0,
            R0,
            ACK,
            4000,
            sack_blocks=((s(R0 + 1000), s(R0 + 1100)), (s(R0 + 500), s(R0 + 600))),
        ),
    )
    rx(tcb, T1 + 3 * MS, s(R0 + 600), L0, ACK, b"b" * 100)  # extends the first block
    expect(
        tcb,
        T1 + 3 * MS,
        Seg(
            L0,
            R0,
            ACK,
            4000,
            sack_blocks=((s(R0 + 500), s(R0 + 700)), (s(R0 + 1000), s(R0 + 1100))),
        ),
    )
    rx(tcb, T1 + 4 * MS, R0, L0, ACK, b"a" * 500)
    expect(
        tcb,
        T1 + 4 * MS,
        Seg(L0, s(R0 + 700), ACK, 3300, sack_blocks=((s(R0 + 1000), s(R0 + 1100)),)),
    )


def test_established_out_of_order_ranges_are_bounded() -> None:
    tcb = established(plain(max_ooo_ranges=2))
    rx(tcb, T1 + MS, s(R0 + 100), L0, ACK, b"a")
    rx(tcb, T1 + MS, s(R0 + 200), L0, ACK, b"b")
    rx(tcb, T1 + MS, s(R0 + 300), L0, ACK, b"c")  # a third range: refused
    assert tcb.stats()["ooo_bytes"] == 2
    assert tcb.counters == {TcpDrop.OOO_RANGES: 1}
    # Each out-of-order segment has its duplicate ACK, the refused one too.
    expect(tcb, T1 + MS, *[Seg(L0, R0, ACK, 4000)] * 3)


def test_established_out_of_order_segments_before_one_dispatch_each_get_a_dupack() -> None:
    """RFC 5681 4.2: the Stack dispatches once per burst; every out-of-order segment
    of the burst still gets its own duplicate ACK, with the SACK blocks of the flush."""
    tcb = established(plain(sack=True), sack_permitted=True)
    for i in range(4):
        rx(tcb, T1 + MS, s(R0 + 500 + 100 * i), L0, ACK, b"b" * 100)
    dup = Seg(L0, R0, ACK, 4000, sack_blocks=((s(R0 + 500), s(R0 + 900)),))
    expect(tcb, T1 + MS, *[dup] * 4)
    assert tcb.segs_out == 2 + 4  # SYN, handshake ACK, four duplicate ACKs


def test_established_owed_dupacks_go_as_pure_acks_beside_data() -> None:
    """A segment with data is no duplicate ACK (RFC 5681 2): the owed ACKs still go."""
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 500), L0, ACK, b"b" * 100)
    rx(tcb, T1 + MS, s(R0 + 600), L0, ACK, b"c" * 100)
    assert tcb.send(b"reply") == 5
    expect(
        tcb,
        T1 + MS,
        Seg(L0, R0, ACK | PSH, 4000, b"reply"),
        Seg(s(L0 + 5), R0, ACK, 4000),
        Seg(s(L0 + 5), R0, ACK, 4000),
    )


def test_established_hole_fill_restarts_the_count_at_the_new_rcv_nxt() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 1000), L0, ACK, b"c" * 500)  # owed at R0
    rx(tcb, T1 + MS, s(R0 + 1500), L0, ACK, b"d" * 500)  # owed at R0
    rx(tcb, T1 + MS, R0, L0, ACK, b"a" * 500)  # partly fills: owed at R0 + 500
    rx(tcb, T1 + MS, s(R0 + 2000), L0, ACK, b"e" * 500)  # owed at R0 + 500
    expect(tcb, T1 + MS, *[Seg(L0, s(R0 + 500), ACK, 3500)] * 2)
    # Filled wholly, then in-order data on the fast path: one ACK for all.
    rx(tcb, T1 + 2 * MS, s(R0 + 2500), L0, ACK, b"f" * 500)  # owed at R0 + 500
    rx(tcb, T1 + 2 * MS, s(R0 + 500), L0, ACK, b"b" * 500)  # fills: owed at R0 + 3000
    rx(tcb, T1 + 2 * MS, s(R0 + 3000), L0, ACK, b"g" * 500)  # in order, RCV.NXT moves
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 3500), ACK, 500))


def test_established_immediate_acks_per_dispatch_are_bounded() -> None:
    tcb = established(plain(rcvbuf=65535, mss=500))
    for i in range(100):
        rx(tcb, T1 + MS, s(R0 + 500 + i), L0, ACK, b"x")
    out = tcb.dispatch(T1 + MS)
    assert len(out) == MAX_ACKS_PER_DISPATCH
    assert {(o.seq, o.ack, o.flags, len(o.payload)) for o in out} == {(L0, R0, ACK, 0)}
    assert tcb.dispatch(T1 + MS) == []


def test_established_data_partly_beyond_window_is_trimmed_and_acked() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 3800), L0, ACK, b"z" * 500)
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    assert tcb.stats()["ooo_bytes"] == 200


def test_established_data_wholly_beyond_window_is_dropped_and_acked() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 4000), L0, ACK, b"z" * 10)
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    assert tcb.counters == {TcpDrop.OUT_OF_WINDOW: 1}
    assert tcb.stats()["ooo_bytes"] == 0


def test_established_old_duplicate_segment_is_acked_at_once() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, b"x" * 100)
    rx(tcb, T1 + 2 * MS, R0, L0, ACK, b"x" * 100)
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 100), ACK, 3900))
    assert tcb.readable_bytes == 100


def test_established_overlapping_segment_delivers_only_new_bytes() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, b"abc")
    rx(tcb, T1 + 2 * MS, s(R0 + 1), L0, ACK, b"bcdef")
    assert tcb.recv(100) == b"abcdef"


def test_established_payload_is_copied_out_of_the_callers_buffer() -> None:
    tcb = established()
    buf = bytearray(b"abc")
    rx(tcb, T1 + MS, R0, L0, ACK, buf)
    buf[:] = b"xyz"
    assert tcb.recv(10) == b"abc"


def test_established_recv_into_copies_and_consumes() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, b"hello world")
    out = bytearray(5)
    assert tcb.recv_into(out) == 5
    assert out == b"hello"
    assert tcb.readable_bytes == 6
    assert tcb.recv(100) == b" world"
    assert tcb.recv_into(out) == 0


def test_established_full_receive_buffer_closes_window_and_read_reopens_it() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, b"f" * 4000)  # e.g. a GRO-merged segment
    expect(tcb, T1 + MS, Seg(L0, s(R0 + 4000), ACK, 0))
    assert tcb.recv(1000) == b"f" * 1000
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 4000), ACK, 1000))  # window update
    tcb.recv(100)
    expect(tcb, T1 + 3 * MS)  # 1100 is not twice 1000: no update (receiver SWS)
    tcb.recv(4000)
    expect(tcb, T1 + 4 * MS, Seg(L0, s(R0 + 4000), ACK, 4000))


def test_established_receiver_sws_keeps_the_right_edge_until_an_mss_fits() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, b"a" * 1000)
    expect(tcb, T1 + MS, Seg(L0, s(R0 + 1000), ACK, 3000))
    tcb.recv(300)  # room for 300 more: less than an MSS, the edge stays
    rx(tcb, T1 + 2 * MS, s(R0 + 1000), L0, ACK, b"b" * 1000)
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 2000), ACK, 2000))
    tcb.recv(300)  # 600 bytes of room: now the edge moves
    rx(tcb, T1 + 3 * MS, s(R0 + 2000), L0, ACK, b"c" * 1000)
    expect(tcb, T1 + 3 * MS, Seg(L0, s(R0 + 3000), ACK, 1600))


def test_established_zero_window_segment_counts_for_its_ack_only() -> None:
    tcb = established()
    tcb.send(b"q" * 100)
    tcb.dispatch(T1)
    rx(tcb, T1 + MS, R0, L0, ACK, b"f" * 4000)
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 2 * MS, s(R0 + 4000), s(L0 + 100), ACK, b"z")
    assert tcb.snd_una == s(L0 + 100)
    assert tcb.readable_bytes == 4000
    expect(tcb, T1 + 2 * MS, Seg(s(L0 + 100), s(R0 + 4000), ACK, 0))


def test_established_bare_fin_is_accepted_with_a_zero_window() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, b"f" * 4000)
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 2 * MS, s(R0 + 4000), L0, FIN | ACK)
    assert state(tcb) == "CLOSE-WAIT"
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 4001), ACK, 0))


def test_established_urgent_data_is_delivered_inline() -> None:
    tcb = established()
    tcb.on_segment(tcp(R0, L0, ACK | 0x20)._replace(urgent=1), b"!", T1 + MS)
    assert tcb.recv(10) == b"!"


# ==========================================================================
# ESTABLISHED: quick-ACK mode and pingpong (Linux's tcp_input.c)
# ==========================================================================


def test_established_first_data_is_acked_at_the_next_dispatch() -> None:
    tcb = established()
    # One burst of three in-order segments: one ACK at its flush, not 40 ms later.
    rx(tcb, T1 + MS, R0, L0, ACK, b"a" * 100)
    rx(tcb, T1 + MS, s(R0 + 100), L0, ACK, b"b" * 100)
    rx(tcb, T1 + MS, s(R0 + 200), L0, ACK | PSH, b"c" * 100)
    expect(tcb, T1 + MS, Seg(L0, s(R0 + 300), ACK, 3700))
    assert tcb.poll_at() is None
    assert tcb.stats()["quickacks"] == QUICKACKS - 1  # one ACK, one quick ACK used


@pytest.mark.parametrize(
    ("rcvbuf", "quick"),
    [(4000, 4), (65535, 16), (1500, 1), (900, 2)],
    ids=["four-pairs", "at-most-16", "one-pair", "no-pair-gives-2"],
)
def test_established_quick_acks_are_bounded_by_the_window(rcvbuf: int, quick: int) -> None:
    """Linux's tcp_incr_quickack: window // (2 * MSS) quick ACKs, at most 16, 2 for 0."""
    tcb = established(plain(rcvbuf=rcvbuf))
    t = T1 + MS
    for i in range(quick):
        rx(tcb, t, s(R0 + i), L0, ACK, b"q")
        assert tcb.recv(10) == b"q"
        out = [(o.seq, o.ack, o.flags, bytes(o.payload)) for o in tcb.dispatch(t)]
        assert out == [(L0, s(R0 + i + 1), ACK, b"")]
    # Used up: the ACK is delayed as before.
    rx(tcb, t, s(R0 + quick), L0, ACK, b"q")
    expect(tcb, t)
    fire(tcb, t + 40 * MS)
    assert [(o.ack, o.flags) for o in tcb.dispatch(t + 40 * MS)] == [(s(R0 + quick + 1), ACK)]


def test_established_reply_within_40ms_makes_the_next_ack_wait_for_the_reply() -> None:
    """Pingpong: our data within 40 ms of theirs is a reply (tcp_event_data_sent), so
    the next request's ACK waits for the next reply; when none comes in time, the
    delayed ACK ends pingpong mode (tcp_delack_timer_handler)."""
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK | PSH, b"req1")
    expect(tcb, T1 + MS, Seg(L0, s(R0 + 4), ACK, 3996))  # quick ACK
    assert tcb.recv(10) == b"req1"
    tcb.send(b"resp1")
    expect(tcb, T1 + 5 * MS, Seg(L0, s(R0 + 4), ACK | PSH, 3996, b"resp1"))
    assert tcb.stats()["pingpong"] is True
    rx(tcb, T1 + 15 * MS, s(R0 + 4), s(L0 + 5), ACK | PSH, b"req2")
    expect(tcb, T1 + 15 * MS)  # quick ACKs are left, but the ACK waits
    assert tcb.stats()["quickacks"] == QUICKACKS - 1
    assert tcb.recv(10) == b"req2"
    tcb.send(b"resp2")
    expect(tcb, T1 + 20 * MS, Seg(s(L0 + 5), s(R0 + 8), ACK | PSH, 3992, b"resp2"))
    assert tcb.stats()["quickacks"] == QUICKACKS - 2  # the reply's ACK used one
    # No reply within 40 ms: the delayed ACK goes, and pingpong mode ends ...
    rx(tcb, T1 + 30 * MS, s(R0 + 8), s(L0 + 10), ACK | PSH, b"req3")
    expect(tcb, T1 + 30 * MS)
    fire(tcb, T1 + 70 * MS)
    expect(tcb, T1 + 70 * MS, Seg(s(L0 + 10), s(R0 + 12), ACK, 3988))
    assert tcb.stats()["pingpong"] is False
    # ... so the next request is ACKed at once again.
    rx(tcb, T1 + 80 * MS, s(R0 + 12), s(L0 + 10), ACK | PSH, b"req4")
    expect(tcb, T1 + 80 * MS, Seg(s(L0 + 10), s(R0 + 16), ACK, 3984))
    assert tcb.stats()["quickacks"] == 0


def test_established_data_sent_40ms_after_the_peers_is_no_reply() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK | PSH, b"req1")
    expect(tcb, T1 + MS, Seg(L0, s(R0 + 4), ACK, 3996))
    assert tcb.recv(10) == b"req1"
    tcb.send(b"late")
    expect(tcb, T1 + 41 * MS, Seg(L0, s(R0 + 4), ACK | PSH, 3996, b"late"))
    assert tcb.stats()["pingpong"] is False
    rx(tcb, T1 + 50 * MS, s(R0 + 4), s(L0 + 4), ACK | PSH, b"req2")
    expect(tcb, T1 + 50 * MS, Seg(s(L0 + 4), s(R0 + 8), ACK, 3992))  # quick ACK


def test_established_data_after_idle_longer_than_rto_reenters_quick_ack_mode() -> None:
    tcb = quickacks_used()  # the last data came at T1
    assert tcb.rto_us == 200 * MS
    t = T1 + 200 * MS  # exactly one RTO later: not idle long enough
    rx(tcb, t, Q0, L0, ACK, b"x" * 100)
    expect(tcb, t)
    fire(tcb, t + 40 * MS)
    expect(tcb, t + 40 * MS, Seg(L0, s(Q0 + 100), ACK, 3896))
    assert tcb.recv(1000) == b"x" * 100
    t += 200 * MS + 1  # longer than the RTO since that data (tcp_event_data_recv)
    rx(tcb, t, s(Q0 + 100), L0, ACK, b"y" * 100)
    expect(tcb, t, Seg(L0, s(Q0 + 200), ACK, 3796))
    # The window last advertised, 3896, holds 3 pairs of segments; one is used.
    assert tcb.stats()["quickacks"] == 2


def test_established_duplicate_data_reenters_quick_ack_mode_and_ends_pingpong() -> None:
    """Data sent again means our ACK was lost or late (Linux's tcp_send_dupack)."""
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK | PSH, b"req1")
    tcb.send(b"resp1")
    expect(tcb, T1 + MS, Seg(L0, s(R0 + 4), ACK | PSH, 3996, b"resp1"))  # a reply
    rx(tcb, T1 + 10 * MS, s(R0 + 4), s(L0 + 5), ACK | PSH, b"req2")
    expect(tcb, T1 + 10 * MS)  # pingpong: the ACK waits for a reply
    rx(tcb, T1 + 20 * MS, s(R0 + 4), s(L0 + 5), ACK | PSH, b"req2")  # sent again
    expect(tcb, T1 + 20 * MS, Seg(s(L0 + 5), s(R0 + 8), ACK, 3992))
    rx(tcb, T1 + 30 * MS, s(R0 + 8), s(L0 + 5), ACK | PSH, b"req3")
    expect(tcb, T1 + 30 * MS, Seg(s(L0 + 5), s(R0 + 12), ACK, 3988))  # quick ACK
    assert tcb.stats()["pingpong"] is False


# ==========================================================================
# ESTABLISHED: sending
# ==========================================================================


def test_established_send_is_cut_at_mss_and_limited_by_initial_cwnd() -> None:
    tcb = established(plain(sndbuf=8000))
    assert tcb.send(b"d" * 6000) == 6000
    # IW = min(10 * 500, max(2 * 500, 14600)) = 5000 (RFC 6928)
    expect(tcb, T1, *[Seg(s(L0 + 500 * k), R0, ACK, 4000, b"d" * 500) for k in range(10)])
    assert tcb.poll_at() == T1 + 200 * MS
    rx(tcb, T1 + 10 * MS, R0, s(L0 + 1000), ACK)
    # slow start: cwnd 6000 (+1000), 4000 in flight: 2000 more may go
    assert tcb.cwnd == 6000
    expect(
        tcb,
        T1 + 10 * MS,
        Seg(s(L0 + 5000), R0, ACK, 4000, b"d" * 500),
        Seg(s(L0 + 5500), R0, ACK | PSH, 4000, b"d" * 500),
    )


def test_established_send_respects_the_peer_window_exactly() -> None:
    tcb = established(plain(nodelay=True), peer_window=1200)
    assert tcb.send(b"w" * 1500) == 1500
    expect(
        tcb,
        T1,
        Seg(L0, R0, ACK, 4000, b"w" * 500),
        Seg(s(L0 + 500), R0, ACK, 4000, b"w" * 500),
    )
    # 200 bytes of window are left but 500 bytes wait: sender SWS avoidance
    rx(tcb, T1 + 10 * MS, R0, s(L0 + 1000), ACK, window=500)
    expect(tcb, T1 + 10 * MS, Seg(s(L0 + 1000), R0, ACK | PSH, 4000, b"w" * 500))


def test_established_send_respects_a_scaled_peer_window() -> None:
    cfg = plain(window_scaling=True, nodelay=True)
    tcb = established(cfg, peer_window=8000, wscale=2)
    rx(tcb, T1 + MS, R0, L0, ACK, window=300)  # 300 << 2 = 1200 bytes
    assert tcb.snd_wnd == 1200
    tcb.send(b"w" * 1200)
    expect(
        tcb,
        T1 + MS,
        Seg(L0, R0, ACK, 4000, b"w" * 500),
        Seg(s(L0 + 500), R0, ACK, 4000, b"w" * 500),
        Seg(s(L0 + 1000), R0, ACK | PSH, 4000, b"w" * 200),
    )
    tcb.send(b"x")
    expect(tcb, T1 + MS)  # not one byte beyond the window


def test_established_nagle_holds_a_small_segment_until_the_ack() -> None:
    tcb = established()
    tcb.send(b"a" * 100)
    expect(tcb, T1, Seg(L0, R0, ACK | PSH, 4000, b"a" * 100))
    tcb.send(b"b" * 100)
    expect(tcb, T1 + MS)
    tcb.send(b"c" * 100)
    expect(tcb, T1 + 2 * MS)
    rx(tcb, T1 + 10 * MS, R0, s(L0 + 100), ACK)
    expect(tcb, T1 + 10 * MS, Seg(s(L0 + 100), R0, ACK | PSH, 4000, b"b" * 100 + b"c" * 100))


def test_established_nagle_lets_full_segments_go() -> None:
    tcb = established()
    tcb.send(b"a" * 100)
    tcb.dispatch(T1)
    tcb.send(b"b" * 600)
    expect(tcb, T1 + MS, Seg(s(L0 + 100), R0, ACK, 4000, b"b" * 500))


def test_established_nodelay_sends_small_segments_at_once() -> None:
    tcb = established(plain(nodelay=True))
    tcb.send(b"a" * 100)
    expect(tcb, T1, Seg(L0, R0, ACK | PSH, 4000, b"a" * 100))
    tcb.send(b"b" * 100)
    expect(tcb, T1 + MS, Seg(s(L0 + 100), R0, ACK | PSH, 4000, b"b" * 100))


def test_established_data_carries_the_delayed_ack() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, b"ping")
    tcb.send(b"pong")
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 4), ACK | PSH, 3996, b"pong"))
    assert tcb.poll_at() == T1 + 2 * MS + 200 * MS  # only the retransmission timer


def test_established_send_buffer_bounds_send() -> None:
    tcb = established()
    assert tcb.send_space == 4000
    assert tcb.send(b"b" * 5000) == 4000
    assert tcb.send_space == 0
    assert tcb.send(b"more") == 0
    tcb.dispatch(T1)
    rx(tcb, T1 + 10 * MS, R0, s(L0 + 1000), ACK)
    assert tcb.send_space == 1000


def test_established_idle_longer_than_rto_restarts_from_the_initial_window() -> None:
    tcb = established(plain(sndbuf=8000))
    tcb.send(b"a" * 5000)
    tcb.dispatch(T1)
    ack_all(tcb, T1 + 10 * MS)
    assert tcb.cwnd == 6000  # slow start: +2 SMSS for the one ACK (RFC 3465 L = 2)
    t = T1 + 10 * MS + S  # idle for 1 s > RTO (RFC 5681 4.1)
    tcb.send(b"b" * 6000)
    assert len(tcb.dispatch(t)) == 10  # cwnd back to IW = 5000
    assert tcb.cwnd == 5000


def test_established_tso_segments_are_whole_multiples_of_mss() -> None:
    tcb = established(plain(sndbuf=8000, tso_max_bytes=2100))
    tcb.send(b"t" * 5200)
    expect(
        tcb,
        T1,
        Seg(L0, R0, ACK, 4000, b"t" * 2000),
        Seg(s(L0 + 2000), R0, ACK, 4000, b"t" * 2000),
        Seg(s(L0 + 4000), R0, ACK, 4000, b"t" * 1000),
    )


def test_established_sender_sws_waits_for_persist_with_a_tiny_window() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, window=100)
    tcb.send(b"s" * 1000)
    expect(tcb, T1 + MS)  # 100 < half the largest window (8000): wait
    fire(tcb, T1 + MS + 200 * MS)
    # persist expiry overrides SWS avoidance: send what fits
    expect(tcb, T1 + 201 * MS, Seg(L0, R0, ACK, 4000, b"s" * 100))
    assert tcb.poll_at() == T1 + 401 * MS  # now the retransmission timer


# ==========================================================================
# ESTABLISHED: retransmission
# ==========================================================================


def test_established_rto_retransmits_and_backs_off() -> None:
    tcb = established()
    tcb.send(b"a" * 100)
    seg = Seg(L0, R0, ACK | PSH, 4000, b"a" * 100)
    expect(tcb, T1, seg)
    assert tcb.rto_us == 200 * MS
    fire(tcb, T1 + 200 * MS)
    expect(tcb, T1 + 200 * MS, seg)
    fire(tcb, T1 + 600 * MS)
    expect(tcb, T1 + 600 * MS, seg)
    assert tcb.poll_at() == T1 + 1400 * MS
    assert (tcb.cwnd, tcb.retransmits, tcb.stats()["backoffs"]) == (500, 2, 2)
    rx(tcb, T1 + 700 * MS, R0, s(L0 + 100), ACK)
    assert tcb.poll_at() is None
    assert tcb.stats()["srtt_us"] == 10 * MS  # Karn: no sample from a retransmission
    assert tcb.rto_us == 800 * MS  # the back-off stays until a valid sample


def test_established_rto_goes_back_to_snd_una_and_slow_starts() -> None:
    tcb = established()
    tcb.send(b"r" * 1500)
    assert len(tcb.dispatch(T1)) == 3
    fire(tcb, T1 + 200 * MS)
    expect(tcb, T1 + 200 * MS, Seg(L0, R0, ACK, 4000, b"r" * 500))
    rx(tcb, T1 + 210 * MS, R0, s(L0 + 500), ACK)
    expect(
        tcb,
        T1 + 210 * MS,
        Seg(s(L0 + 500), R0, ACK, 4000, b"r" * 500),
        Seg(s(L0 + 1000), R0, ACK | PSH, 4000, b"r" * 500),
    )
    # the receiver had the rest already: one ACK covers everything
    rx(tcb, T1 + 220 * MS, R0, s(L0 + 1500), ACK)
    assert tcb.snd_una == s(L0 + 1500)
    assert tcb.poll_at() is None


def test_established_timeout_after_max_retries_is_etimedout() -> None:
    tcb = established(plain(max_retries=2))
    tcb.send(b"a")
    tcb.dispatch(T1)
    fire(tcb, T1 + 200 * MS)
    tcb.dispatch(T1 + 200 * MS)
    fire(tcb, T1 + 600 * MS)
    tcb.dispatch(T1 + 600 * MS)
    fire(tcb, T1 + 1400 * MS)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ETIMEDOUT
    expect(tcb, T1 + 1400 * MS)
    with pytest.raises(TimeoutError):
        tcb.send(b"x")


def test_established_user_timeout_bounds_retransmission_time() -> None:
    tcb = established(plain(user_timeout_us=500 * MS))
    tcb.send(b"a")
    tcb.dispatch(T1)
    fire(tcb, T1 + 200 * MS)  # first retransmission: the clock starts
    tcb.dispatch(T1 + 200 * MS)
    fire(tcb, T1 + 600 * MS)  # 400 ms since: retransmit again
    assert len(tcb.dispatch(T1 + 600 * MS)) == 1
    fire(tcb, T1 + 1400 * MS)  # 1200 ms since
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ETIMEDOUT


def _ten_segments_in_flight(config: TcpConfig) -> Tcb:
    tcb = established(config)
    tcb.send(b"d" * 6000)
    assert len(tcb.dispatch(T1)) == 10  # IW 5000; 1000 bytes wait
    return tcb


def test_established_three_dupacks_fast_retransmit() -> None:
    tcb = _ten_segments_in_flight(plain(sndbuf=8000))
    # limited transmit: each of the first two duplicate ACKs lets one new segment out
    rx(tcb, T1 + 10 * MS, R0, L0, ACK)
    expect(tcb, T1 + 10 * MS, Seg(s(L0 + 5000), R0, ACK, 4000, b"d" * 500))
    rx(tcb, T1 + 11 * MS, R0, L0, ACK)
    expect(tcb, T1 + 11 * MS, Seg(s(L0 + 5500), R0, ACK | PSH, 4000, b"d" * 500))
    assert not tcb.in_recovery
    rx(tcb, T1 + 12 * MS, R0, L0, ACK)
    assert tcb.in_recovery
    assert (tcb.ssthresh, tcb.cwnd) == (4200, 4200)  # CUBIC: 0.7 * 6000 in flight
    expect(tcb, T1 + 12 * MS, Seg(L0, R0, ACK, 4000, b"d" * 500))
    assert tcb.retransmits == 1


def test_established_newreno_partial_ack_retransmits_next_hole_full_ack_ends_recovery() -> None:
    tcb = _ten_segments_in_flight(plain(sndbuf=8000, congestion_control="newreno"))
    for k in range(3):
        rx(tcb, T1 + (10 + k) * MS, R0, L0, ACK)
        tcb.dispatch(T1 + (10 + k) * MS)
    assert tcb.in_recovery and tcb.ssthresh == 3000
    rx(tcb, T1 + 20 * MS, R0, s(L0 + 1000), ACK)  # partial: up to the next hole
    expect(tcb, T1 + 20 * MS, Seg(s(L0 + 1000), R0, ACK, 4000, b"d" * 500))
    assert tcb.in_recovery
    assert tcb.poll_at() == T1 + 220 * MS  # timer restarted by the partial ACK
    rx(tcb, T1 + 30 * MS, R0, s(L0 + 6000), ACK)
    assert not tcb.in_recovery
    assert tcb.cwnd == 3000
    assert tcb.poll_at() is None


def _sack(*pairs: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """SACK blocks given as byte offsets from L0."""
    return tuple((s(L0 + a), s(L0 + b)) for a, b in pairs)


# Several ACKs in one receive burst: the Stack calls dispatch only after the
# whole burst, so nothing is sent between them and every ACK but the first
# sees a flight that its predecessors already drained.


def test_established_burst_of_acks_all_grow_cwnd_in_slow_start() -> None:
    tcb = _ten_segments_in_flight(plain(sndbuf=8000))
    assert tcb.cwnd == 5000
    t = T1 + 10 * MS
    for k in range(1, 6):
        rx(tcb, t, R0, s(L0 + 1000 * k), ACK)  # two segments each, no dispatch between
    # The window was full when the burst began: each ACK counts as
    # cwnd-limited (5000 in flight > cwnd / 2) and grows cwnd by 2 * SMSS.
    # Judged by the flight each ACK leaves behind, the third would already
    # see 3000 <= 7000 / 2 and stop the growth at 7000.
    assert tcb.cwnd == 10_000


def test_established_burst_of_acks_ssthresh_from_flight_at_last_transmission() -> None:
    cfg = plain(sndbuf=8000, sack=True)
    tcb = established(cfg, sack_permitted=True)
    tcb.send(b"d" * 5000)
    assert len(tcb.dispatch(T1)) == 10  # 5000 bytes in flight
    t = T1 + 10 * MS
    rx(tcb, t, R0, s(L0 + 1000), ACK)  # first ACK of the burst: two segments
    # Second ACK, same burst: 1500 bytes SACKed above the hole at 1000..1500.
    rx(tcb, t, R0, s(L0 + 1000), ACK, sack_blocks=_sack((1500, 3000)))
    assert tcb.in_recovery
    # FlightSize is what was in flight when the burst began, 5000 bytes, not
    # the 4000 left after the first ACK: CUBIC's ssthresh = 0.7 * 5000.
    assert tcb.ssthresh == 3500
    assert tcb.cwnd == 3500


def test_established_burst_of_dupacks_newreno_ssthresh_from_flight_at_last_transmission() -> None:
    tcb = _ten_segments_in_flight(plain(sndbuf=8000, congestion_control="newreno"))
    t = T1 + 10 * MS
    rx(tcb, t, R0, s(L0 + 1000), ACK)
    for _ in range(3):
        rx(tcb, t, R0, s(L0 + 1000), ACK)  # three duplicate ACKs in the same burst
    assert tcb.in_recovery
    assert tcb.ssthresh == 2500  # FlightSize 5000 / 2, not 4000 / 2


def test_established_sack_recovery_retransmits_each_lost_hole_once() -> None:
    cfg = plain(sndbuf=8000, sack=True)
    tcb = established(cfg, sack_permitted=True)  # min RTT 10 ms: reordering window 2.5 ms
    tcb.send(b"d" * 6000)
    assert len(tcb.dispatch(T1)) == 10  # segments 0..9; 0 and 2 get lost
    t = T1 + 10 * MS
    rx(tcb, t, R0, L0, ACK, sack_blocks=_sack((500, 1000)))
    expect(tcb, t, Seg(s(L0 + 5000), R0, ACK, 4000, b"d" * 500))  # limited transmit
    # RACK: segment 0 went before the SACKed one; it may still be reordered
    # for min_rtt / 4, so a timer waits that long rather than a loss.
    assert tcb.poll_at() == t + 2500
    rx(tcb, t + MS, R0, L0, ACK, sack_blocks=_sack((1500, 2000), (500, 1000)))
    expect(tcb, t + MS, Seg(s(L0 + 5500), R0, ACK | PSH, 4000, b"d" * 500))
    assert not tcb.in_recovery
    # Three segments SACKed and no reordering seen: the window is 0 (RFC 8985
    # 6.2 step 4, DupThresh's verdict): segments 0 and 2 are lost at once.
    rx(tcb, t + 2 * MS, R0, L0, ACK, sack_blocks=_sack((1500, 2500), (500, 1000)))
    assert tcb.in_recovery
    assert tcb.cwnd == 4200  # 0.7 * 6000
    expect(tcb, t + 2 * MS, Seg(L0, R0, ACK, 4000, b"d" * 500))  # the first segment at once
    # pipe = 6000 sent - 1500 SACKed - 500 lost = 4000: no room for segment 2 yet
    rx(tcb, t + 3 * MS, R0, L0, ACK, sack_blocks=_sack((1500, 3000), (500, 1000)))
    # 2000 SACKed: pipe 3500 leaves room for one segment: resend segment 2
    expect(tcb, t + 3 * MS, Seg(s(L0 + 1000), R0, ACK, 4000, b"d" * 500))
    rx(tcb, t + 4 * MS, R0, L0, ACK, sack_blocks=_sack((1500, 3500), (500, 1000)))
    expect(tcb, t + 4 * MS)  # nothing else went before a delivered segment; no new data
    st = tcb.stats()
    assert (st["sacked_bytes"], st["sack_holes"]) == (2500, 2)
    # The first retransmission arrives, and everything from 1500 on.
    rx(tcb, t + 12 * MS, R0, s(L0 + 1000), ACK, sack_blocks=_sack((1500, 6000)))
    expect(tcb, t + 12 * MS)  # segment 2's retransmission went after all of that
    assert tcb.in_recovery
    rx(tcb, t + 13 * MS, R0, s(L0 + 6000), ACK)
    assert not tcb.in_recovery
    assert tcb.cwnd == 4200
    assert tcb.retransmits == 2
    assert tcb.stats()["sacked_bytes"] == 0


def test_established_sack_enters_recovery_before_three_dupacks_when_loss_is_clear() -> None:
    tcb = established(plain(sndbuf=8000, sack=True), sack_permitted=True)
    tcb.send(b"d" * 5000)
    tcb.dispatch(T1)
    # one ACK SACKing 1500 bytes above the first segment: IsLost(SND.UNA)
    rx(tcb, T1 + 10 * MS, R0, L0, ACK, sack_blocks=_sack((500, 2000)))
    assert tcb.in_recovery
    expect(tcb, T1 + 10 * MS, Seg(L0, R0, ACK, 4000, b"d" * 500))


def test_established_sack_blocks_outside_the_window_are_ignored() -> None:
    tcb = established(plain(sack=True), sack_permitted=True)
    tcb.send(b"d" * 1000)
    tcb.dispatch(T1)
    rx(tcb, T1 + MS, R0, L0, ACK, window=PEER_WIN + 1, sack_blocks=_sack((-100, 0), (500, 1500)))
    rx(tcb, T1 + MS, R0, L0, ACK, window=PEER_WIN + 2, sack_blocks=_sack((0, 500)))  # D-SACK
    assert tcb.stats()["sacked_bytes"] == 0
    assert tcb.stats()["dupacks"] == 0


def test_established_rto_forgets_sack_and_goes_back_skipping_what_is_sacked_again() -> None:
    tcb = established(plain(sack=True), sack_permitted=True)
    tcb.send(b"d" * 2000)
    tcb.dispatch(T1)
    rx(tcb, T1 + MS, R0, L0, ACK, sack_blocks=_sack((500, 1000)))
    # RACK's reordering window (min RTT 10 ms / 4) runs out: segment 0 is lost.
    fire(tcb, T1 + 3500)
    expect(tcb, T1 + 3500, Seg(L0, R0, ACK, 4000, b"d" * 500))
    # Nothing more arrives: the retransmission timer, started at T1, expires.
    fire(tcb, T1 + 200 * MS)
    assert tcb.stats()["sacked_bytes"] == 0  # RFC 2018 8: the receiver may renege
    expect(tcb, T1 + 200 * MS, Seg(L0, R0, ACK, 4000, b"d" * 500))
    t = T1 + 210 * MS
    rx(tcb, t, R0, s(L0 + 500), ACK, sack_blocks=_sack((1000, 1500)))
    # slow start: two segments; 1000..1500 is SACKed and skipped
    expect(
        tcb,
        t,
        Seg(s(L0 + 500), R0, ACK, 4000, b"d" * 500),
        Seg(s(L0 + 1500), R0, ACK | PSH, 4000, b"d" * 500),
    )


def test_established_dupacks_without_data_in_flight_are_not_counted() -> None:
    tcb = established()
    for k in range(5):
        rx(tcb, T1 + k * MS, R0, L0, ACK)
    assert tcb.stats()["dupacks"] == 0
    expect(tcb, T1 + 5 * MS)


def test_established_window_change_is_not_a_dupack() -> None:
    tcb = established()
    tcb.send(b"a" * 500)
    tcb.dispatch(T1)
    for k in range(3):
        rx(tcb, T1 + k * MS, R0, L0, ACK, window=PEER_WIN + 1 + k)
    assert tcb.stats()["dupacks"] == 0
    assert not tcb.in_recovery


def test_established_timestamps_give_rtt_sample_for_retransmitted_data() -> None:
    cfg = plain(timestamps=True)
    tcb = established(cfg, ts=(500, T0 // MS))
    assert tcb.smss == 488
    tcb.send(b"a" * 100)
    expect(tcb, T1, Seg(L0, R0, ACK | PSH, 4000, b"a" * 100, ts=(T1 // MS, 500)))
    fire(tcb, T1 + 200 * MS)
    t = T1 + 200 * MS
    expect(tcb, t, Seg(L0, R0, ACK | PSH, 4000, b"a" * 100, ts=(t // MS, 500)))
    # the ACK echoes the retransmission's TSval: a valid sample of 30 ms
    rx(tcb, t + 30 * MS, R0, s(L0 + 100), ACK, ts=(501, t // MS))
    assert tcb.stats()["srtt_us"] == (7 * 10 * MS + 30 * MS) // 8
    assert tcb.stats()["backoffs"] == 0


# ==========================================================================
# ESTABLISHED: zero window and persist
# ==========================================================================


def test_established_zero_window_probes_with_backoff_until_it_opens() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, window=0)
    tcb.send(b"p" * 100)
    expect(tcb, T1 + MS)
    probe = Seg(s(L0 - 1), R0, ACK, 4000)  # Linux's probe: SND.UNA - 1, no data
    t = T1 + 201 * MS
    fire(tcb, t)
    expect(tcb, t, probe)
    fire(tcb, t + 400 * MS)
    expect(tcb, t + 400 * MS, probe)
    t += 400 * MS
    fire(tcb, t + 800 * MS)
    expect(tcb, t + 800 * MS, probe)
    t += 800 * MS
    assert tcb.poll_at() == t + 1600 * MS
    assert state(tcb) == "ESTABLISHED"
    rx(tcb, t + 10 * MS, R0, L0, ACK, window=PEER_WIN)  # a window update
    expect(tcb, t + 10 * MS, Seg(L0, R0, ACK | PSH, 4000, b"p" * 100))
    assert tcb.poll_at() == t + 10 * MS + 200 * MS


def test_established_persist_never_times_out_while_the_peer_answers() -> None:
    tcb = established(plain(max_retries=2))
    rx(tcb, T1 + MS, R0, L0, ACK, window=0)
    tcb.send(b"p")
    tcb.dispatch(T1 + MS)
    for _ in range(20):
        t = tcb.poll_at()
        assert t is not None
        tcb.on_timer(t)
        assert len(tcb.dispatch(t)) == 1
        rx(tcb, t + MS, R0, L0, ACK, window=0)
    assert state(tcb) == "ESTABLISHED"
    assert tcb.poll_at() is not None and tcb.poll_at() - t <= 120 * S + MS  # type: ignore[operator]


def test_established_window_shrunk_to_zero_rto_probes_with_data() -> None:
    tcb = established()
    tcb.send(b"z" * 100)
    tcb.dispatch(T1)
    rx(tcb, T1 + MS, R0, L0, ACK, window=0)
    fire(tcb, T1 + 200 * MS)
    # the window is shut, but a timeout resends the first segment anyway
    expect(tcb, T1 + 200 * MS, Seg(L0, R0, ACK | PSH, 4000, b"z" * 100))


# ==========================================================================
# ESTABLISHED: RFC 5961 and PAWS
# ==========================================================================


def test_established_rst_at_rcv_nxt_resets() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, 0, RST)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ECONNRESET
    expect(tcb, T1 + MS)
    with pytest.raises(ConnectionResetError):
        tcb.send(b"x")


def test_established_rst_in_window_draws_challenge_ack() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 10), 0, RST)
    assert state(tcb) == "ESTABLISHED"
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    assert tcb.counters == {TcpDrop.RST_CHALLENGED: 1}


def test_established_rst_out_of_window_is_ignored_without_reply() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 4000), 0, RST)
    rx(tcb, T1 + MS, s(R0 - 1), 0, RST)
    assert state(tcb) == "ESTABLISHED"
    expect(tcb, T1 + MS)


@pytest.mark.parametrize("offset", [0, 100, 5000, -10])
def test_established_syn_draws_challenge_ack(offset: int) -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + offset), 0, SYN, mss=500)
    assert state(tcb) == "ESTABLISHED"
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    assert tcb.counters == {TcpDrop.SYN_CHALLENGED: 1}


def test_established_challenge_acks_are_rate_limited_per_connection() -> None:
    tcb = established()
    t = T1 + MS
    for _ in range(10):
        rx(tcb, t, s(R0 + 10), 0, RST)
        expect(tcb, t, Seg(L0, R0, ACK, 4000))
    rx(tcb, t, s(R0 + 10), 0, RST)
    rx(tcb, t, s(R0 + 20), 0, SYN)
    expect(tcb, t)
    assert tcb.counters[TcpDrop.CHALLENGE_LIMITED] == 2
    rx(tcb, t + 100 * MS, s(R0 + 10), 0, RST)  # one token back after 100 ms
    expect(tcb, t + 100 * MS, Seg(L0, R0, ACK, 4000))


def test_established_ack_too_old_is_dropped_with_challenge_ack() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, s(L0 - PEER_WIN - 1), ACK, b"data")
    assert tcb.readable_bytes == 0
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    assert tcb.counters == {TcpDrop.ACK_TOO_OLD: 1}


def test_established_ack_of_unsent_data_is_dropped_with_challenge_ack() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, s(L0 + 1), ACK, b"data")
    assert tcb.readable_bytes == 0
    assert tcb.snd_una == L0
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    assert tcb.counters == {TcpDrop.ACK_UNSENT: 1}


def test_established_old_ack_within_max_window_still_delivers_data() -> None:
    tcb = established()
    tcb.send(b"a" * 100)
    tcb.dispatch(T1)
    ack_all(tcb, T1 + 5 * MS)
    rx(tcb, T1 + 6 * MS, R0, L0, ACK, b"late")  # acknowledges less than SND.UNA
    assert tcb.recv(10) == b"late"
    assert tcb.snd_una == s(L0 + 100)


def test_established_segment_without_ack_is_dropped() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, 0, PSH, b"noack")
    assert tcb.readable_bytes == 0
    assert tcb.counters == {TcpDrop.NO_ACK: 1}


def test_established_unacceptable_pure_acks_are_answered_at_most_every_500ms() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 - 1), L0, ACK)  # e.g. a keepalive probe
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    rx(tcb, T1 + 2 * MS, s(R0 - 1), L0, ACK)
    expect(tcb, T1 + 2 * MS)
    assert tcb.counters[TcpDrop.OOW_ACK_LIMITED] == 1
    rx(tcb, T1 + 501 * MS, s(R0 - 1), L0, ACK)
    expect(tcb, T1 + 501 * MS, Seg(L0, R0, ACK, 4000))


def _ts_established() -> Tcb:
    tcb = established(plain(timestamps=True), ts=(1000, T0 // MS))
    rx(tcb, T1 + MS, R0, L0, ACK, b"a", ts=(1001, T1 // MS))
    return tcb


def test_established_paws_drops_old_timestamp_and_acks() -> None:
    tcb = _ts_established()
    t = T1 + 2 * MS
    rx(tcb, t, s(R0 + 1), L0, ACK, b"b", ts=(999, T1 // MS))
    assert tcb.readable_bytes == 1  # only the first byte
    assert tcb.counters == {TcpDrop.PAWS: 1}
    expect(tcb, t, Seg(L0, s(R0 + 1), ACK, 3999, ts=(t // MS, 1001)))


def test_established_paws_accepts_equal_and_newer_timestamps() -> None:
    tcb = _ts_established()
    rx(tcb, T1 + 2 * MS, s(R0 + 1), L0, ACK, b"b", ts=(1001, T1 // MS))
    rx(tcb, T1 + 3 * MS, s(R0 + 2), L0, ACK, b"c", ts=(1500, T1 // MS))
    assert tcb.recv(10) == b"abc"
    # One ACK for the three (the first data: quick-ACK mode, but nothing was
    # dispatched in between) echoes the TSval of the earliest segment it
    # acknowledges (RFC 7323 4.3: TS.Recent moves only for SEG.SEQ <= Last.ACK.sent).
    t = T1 + 3 * MS
    expect(tcb, t, Seg(L0, s(R0 + 3), ACK, 3997, ts=(t // MS, 1001)))
    rx(tcb, t + MS, s(R0 + 3), L0, ACK, b"d", ts=(1600, T1 // MS))
    assert tcb.stats()["ts_recent"] == 1600


def test_established_paws_does_not_apply_to_rst() -> None:
    tcb = _ts_established()
    rx(tcb, T1 + 2 * MS, s(R0 + 1), 0, RST, ts=(5, 0))
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ECONNRESET


def _ts_sack_sending() -> Tcb:
    """Timestamps and SACK; four segments of 488 bytes in flight since T1."""
    cfg = plain(timestamps=True, sack=True)
    tcb = established(cfg, ts=(1000, T0 // MS), sack_permitted=True)
    tcb.send(b"d" * 1952)
    assert len(tcb.dispatch(T1)) == 4
    return tcb


def test_established_paws_processes_a_reordered_duplicate_ack() -> None:
    tcb = _ts_sack_sending()
    t = T1 + 10 * MS
    rx(tcb, t, R0, L0, ACK, sack_blocks=_sack((488, 976)), ts=(1005, T1 // MS))
    # The peer's earlier duplicate ACK, overtaken on the way: older TSval.
    rx(tcb, t, R0, L0, ACK, sack_blocks=_sack((488, 1464)), ts=(1004, T1 // MS))
    assert tcb.counters == {}  # not a PAWS drop (Linux's tcp_disordered_ack)
    st = tcb.stats()
    assert (st["paws_exempt_acks"], st["dupacks"], st["sacked_bytes"]) == (1, 2, 976)
    assert st["ts_recent"] == 1005  # TS.Recent does not go back
    expect(tcb, t)  # and it is not answered with an ACK


def test_established_paws_still_drops_an_old_ack_that_moved_nothing_new() -> None:
    tcb = _ts_sack_sending()
    t = T1 + 10 * MS
    rx(tcb, t, R0, s(L0 + 976), ACK, ts=(1005, T1 // MS))
    rx(tcb, t, R0, s(L0 + 488), ACK, ts=(1004, T1 // MS))  # older cumulative ACK
    assert tcb.counters == {TcpDrop.PAWS: 1}
    # A duplicate ACK whose TSval is older than TS.Recent by more than an RTO
    # (200 ms) is no reordering: dropped.
    rx(tcb, t, R0, s(L0 + 976), ACK, ts=(1005 - 300, T1 // MS))
    assert tcb.counters[TcpDrop.PAWS] == 2
    # Nor is a duplicate ACK that would change the window.
    rx(tcb, t, R0, s(L0 + 976), ACK, window=PEER_WIN + 100, ts=(1004, T1 // MS))
    assert tcb.counters[TcpDrop.PAWS] == 3
    assert tcb.stats()["paws_exempt_acks"] == 0


def test_established_paws_wraps_modulo_2_32() -> None:
    tcb = established(plain(timestamps=True), ts=(2**32 - 2, T0 // MS))
    rx(tcb, T1 + MS, R0, L0, ACK, b"a", ts=(3, T1 // MS))  # 5 ticks later, across the wrap
    assert tcb.readable_bytes == 1
    assert tcb.counters == {}


# ==========================================================================
# closing: FIN from either side, half-close, simultaneous close, TIME-WAIT
# ==========================================================================


def test_established_peer_fin_moves_to_close_wait_and_eof() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, FIN | ACK)
    assert state(tcb) == "CLOSE-WAIT"
    assert tcb.eof
    # The FIN takes a sequence number but no buffer: the right edge stays put.
    expect(tcb, T1 + MS, Seg(L0, s(R0 + 1), ACK, 3999))


def test_established_peer_data_and_fin_eof_after_reading() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, FIN | ACK | PSH, b"bye")
    assert state(tcb) == "CLOSE-WAIT"
    assert not tcb.eof
    assert tcb.recv(10) == b"bye"
    assert tcb.eof
    assert tcb.recv(10) == b""
    expect(tcb, T1 + MS, Seg(L0, s(R0 + 4), ACK, 3996))


def test_established_out_of_order_fin_waits_for_the_hole() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 100), L0, FIN | ACK, b"b" * 100)
    assert state(tcb) == "ESTABLISHED"
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    rx(tcb, T1 + 2 * MS, R0, L0, ACK, b"a" * 100)
    assert state(tcb) == "CLOSE-WAIT"
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 201), ACK, 3799))


def test_established_early_bare_fin_is_processed_when_the_data_arrives() -> None:
    tcb = established()
    rx(tcb, T1 + MS, s(R0 + 100), L0, FIN | ACK)
    expect(tcb, T1 + MS, Seg(L0, R0, ACK, 4000))
    rx(tcb, T1 + 2 * MS, R0, L0, ACK | PSH, b"a" * 100)
    assert state(tcb) == "CLOSE-WAIT"
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 101), ACK, 3899))


def test_close_wait_close_sends_fin_and_last_ack_closes() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, FIN | ACK)
    tcb.dispatch(T1 + MS)
    tcb.close()
    assert state(tcb) == "LAST-ACK"
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 1), FIN | ACK, 3999))
    rx(tcb, T1 + 12 * MS, s(R0 + 1), s(L0 + 1), ACK)
    assert state(tcb) == "CLOSED"
    assert tcb.error is None
    expect(tcb, T1 + 12 * MS)
    assert tcb.poll_at() is None


def test_close_wait_data_then_fin_ride_one_segment() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, FIN | ACK)
    tcb.send(b"last words")
    tcb.close()
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 1), FIN | ACK | PSH, 3999, b"last words"))


def test_last_ack_fin_is_retransmitted_on_timeout() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, FIN | ACK)
    tcb.close()
    fin = Seg(L0, s(R0 + 1), FIN | ACK, 3999)
    expect(tcb, T1 + MS, fin)
    fire(tcb, T1 + 201 * MS)
    expect(tcb, T1 + 201 * MS, fin)


def test_established_close_goes_through_fin_wait_1_2_and_time_wait() -> None:
    tcb = established()
    tcb.close()
    assert state(tcb) == "FIN-WAIT-1"
    expect(tcb, T1 + MS, Seg(L0, R0, FIN | ACK, 4000))
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), ACK)
    assert state(tcb) == "FIN-WAIT-2"
    assert tcb.poll_at() == T1 + 11 * MS + 60 * S  # orphan FIN-WAIT-2 timeout
    rx(tcb, T1 + 20 * MS, R0, s(L0 + 1), FIN | ACK)
    assert state(tcb) == "TIME-WAIT"
    expect(tcb, T1 + 20 * MS, Seg(s(L0 + 1), s(R0 + 1), ACK, 3999))
    assert tcb.poll_at() == T1 + 20 * MS + 60 * S
    fire(tcb, T1 + 20 * MS + 60 * S)
    assert state(tcb) == "CLOSED"
    assert tcb.error is None
    expect(tcb, T1 + 20 * MS + 60 * S)
    assert tcb.poll_at() is None


def test_fin_wait_1_fin_acking_our_fin_goes_straight_to_time_wait() -> None:
    tcb = established()
    tcb.close()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), FIN | ACK)
    assert state(tcb) == "TIME-WAIT"
    expect(tcb, T1 + 11 * MS, Seg(s(L0 + 1), s(R0 + 1), ACK, 3999))


def test_fin_wait_1_simultaneous_close_through_closing() -> None:
    tcb = established()
    tcb.close()
    expect(tcb, T1 + MS, Seg(L0, R0, FIN | ACK, 4000))
    rx(tcb, T1 + 2 * MS, R0, L0, FIN | ACK)  # the peer's FIN crossed ours
    assert state(tcb) == "CLOSING"
    expect(tcb, T1 + 2 * MS, Seg(s(L0 + 1), s(R0 + 1), ACK, 3999))
    rx(tcb, T1 + 11 * MS, s(R0 + 1), s(L0 + 1), ACK)
    assert state(tcb) == "TIME-WAIT"
    assert tcb.poll_at() == T1 + 11 * MS + 60 * S


def test_closing_fin_retransmitted_on_timeout() -> None:
    tcb = established()
    tcb.close()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 2 * MS, R0, L0, FIN | ACK)
    tcb.dispatch(T1 + 2 * MS)
    fire(tcb, T1 + 201 * MS)
    expect(tcb, T1 + 201 * MS, Seg(L0, s(R0 + 1), FIN | ACK, 3999))


def test_fin_wait_1_data_then_fin_are_sent_in_order() -> None:
    tcb = established(plain(sndbuf=8000))
    tcb.send(b"x" * 700)
    tcb.shutdown_write()
    assert state(tcb) == "FIN-WAIT-1"
    expect(
        tcb,
        T1,
        Seg(L0, R0, ACK, 4000, b"x" * 500),
        Seg(s(L0 + 500), R0, FIN | ACK | PSH, 4000, b"x" * 200),  # Nagle is off for the tail
    )
    rx(tcb, T1 + 10 * MS, R0, s(L0 + 700), ACK)
    assert state(tcb) == "FIN-WAIT-1"  # the FIN is not acknowledged yet
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 701), ACK)
    assert state(tcb) == "FIN-WAIT-2"


def test_fin_wait_2_half_close_keeps_receiving_without_timeout() -> None:
    tcb = established()
    tcb.shutdown_write()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), ACK)
    assert state(tcb) == "FIN-WAIT-2"
    assert tcb.poll_at() is None  # not orphaned: wait for the peer as long as it takes
    rx(tcb, T1 + 20 * MS, R0, s(L0 + 1), ACK | PSH, b"more")
    assert tcb.recv(10) == b"more"
    rx(tcb, T1 + 30 * MS, s(R0 + 4), s(L0 + 1), FIN | ACK)
    assert state(tcb) == "TIME-WAIT"
    expect(tcb, T1 + 30 * MS, Seg(s(L0 + 1), s(R0 + 5), ACK, 3995))


def test_fin_wait_2_orphan_times_out() -> None:
    tcb = established(plain(fin_wait2_timeout_us=5 * S))
    tcb.close()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), ACK)
    fire(tcb, T1 + 11 * MS + 5 * S)
    assert state(tcb) == "CLOSED"
    expect(tcb, T1 + 11 * MS + 5 * S)


def test_fin_wait_2_close_after_half_close_starts_the_timeout() -> None:
    tcb = established(plain(fin_wait2_timeout_us=5 * S))
    tcb.shutdown_write()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), ACK)
    tcb.close()
    expect(tcb, T1 + 20 * MS)
    assert tcb.poll_at() == T1 + 20 * MS + 5 * S


def test_fin_wait_2_data_after_close_resets() -> None:
    tcb = established()
    tcb.close()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), ACK)
    rx(tcb, T1 + 20 * MS, R0, s(L0 + 1), ACK, b"unwanted")
    assert state(tcb) == "CLOSED"
    expect(tcb, T1 + 20 * MS, Seg(s(L0 + 1), R0, RST | ACK, 0))


def test_close_wait_rst_resets() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, FIN | ACK)
    rx(tcb, T1 + 2 * MS, s(R0 + 1), 0, RST)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ECONNRESET


def test_last_ack_rst_closes_without_error() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, FIN | ACK)
    tcb.close()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 2 * MS, s(R0 + 1), 0, RST)
    assert state(tcb) == "CLOSED"
    assert tcb.error is None  # the application is done with it already
    assert tcb.poll_at() is None


def test_closing_rst_closes_without_error() -> None:
    tcb = established()
    tcb.close()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 2 * MS, R0, L0, FIN | ACK)
    rx(tcb, T1 + 3 * MS, s(R0 + 1), 0, RST)
    assert state(tcb) == "CLOSED"
    assert tcb.error is None


def test_fin_wait_1_rst_after_half_close_is_a_reset() -> None:
    tcb = established()
    tcb.shutdown_write()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 2 * MS, R0, 0, RST)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ECONNRESET  # the application may still be reading


def test_syn_received_simultaneous_open_rst_is_refused() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PLAIN)
    tcb.dispatch(T0)
    rx(tcb, T0 + 5 * MS, IRS, 0, SYN, mss=500)
    tcb.dispatch(T0 + 5 * MS)
    rx(tcb, T1, R0, 0, RST)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ECONNREFUSED


def test_time_wait_retransmitted_fin_is_acked_and_restarts_the_timer() -> None:
    tcb = established()
    tcb.close()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), FIN | ACK)
    tcb.dispatch(T1 + 11 * MS)
    t = T1 + 10 * S
    rx(tcb, t, R0, s(L0 + 1), FIN | ACK)
    assert state(tcb) == "TIME-WAIT"
    expect(tcb, t, Seg(s(L0 + 1), s(R0 + 1), ACK, 3999))
    assert tcb.poll_at() == t + 60 * S


def test_time_wait_rst_is_ignored() -> None:
    tcb = established()
    tcb.close()
    tcb.dispatch(T1 + MS)
    rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), FIN | ACK)
    tcb.dispatch(T1 + 11 * MS)
    rx(tcb, T1 + 12 * MS, s(R0 + 1), 0, RST)
    assert state(tcb) == "TIME-WAIT"  # RFC 1337
    assert tcb.counters == {TcpDrop.RST_IGNORED: 1}


def _time_wait(config: TcpConfig = PLAIN, **opts: object) -> Tcb:
    tcb = established(config, **opts)  # type: ignore[arg-type]
    tcb.close()
    tcb.dispatch(T1 + MS)
    if "ts" in opts:
        rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), FIN | ACK, ts=(2000, T1 // MS))
    else:
        rx(tcb, T1 + 11 * MS, R0, s(L0 + 1), FIN | ACK)
    assert state(tcb) == "TIME-WAIT"
    return tcb


def test_time_wait_reopen_by_sequence_number_without_timestamps() -> None:
    tcb = _time_wait()
    assert tcb.time_wait_reopen(tcp(s(R0 + 10), 0, SYN)) == s(L0 + 1 + 65538)
    assert tcb.time_wait_reopen(tcp(R0, 0, SYN)) is None  # not beyond RCV.NXT (R0 + 1)
    assert tcb.time_wait_reopen(tcp(s(R0 - 100), 0, SYN)) is None
    assert tcb.time_wait_reopen(tcp(s(R0 + 10), 5, ACK)) is None


def test_time_wait_reopen_by_timestamp() -> None:
    tcb = _time_wait(plain(timestamps=True), ts=(1000, T0 // MS))
    assert tcb.time_wait_reopen(tcp(s(R0 - 100), 0, SYN, ts=(2001, 0))) is not None
    assert tcb.time_wait_reopen(tcp(s(R0 + 100), 0, SYN, ts=(2000, 0))) is None


def test_established_close_with_unread_data_sends_rst() -> None:
    tcb = established()
    rx(tcb, T1 + MS, R0, L0, ACK, b"unread")
    tcb.close()
    assert state(tcb) == "CLOSED"
    expect(tcb, T1 + 2 * MS, Seg(L0, s(R0 + 6), RST | ACK, 0))
    assert tcb.poll_at() is None


def test_established_abort_sends_rst() -> None:
    tcb = established()
    tcb.send(b"pending")
    tcb.abort()
    assert state(tcb) == "CLOSED"
    expect(tcb, T1, Seg(L0, R0, RST | ACK, 0))


def test_established_send_after_shutdown_raises_broken_pipe() -> None:
    tcb = established()
    tcb.shutdown_write()
    with pytest.raises(BrokenPipeError):
        tcb.send(b"x")
    assert tcb.send_space == 0


def test_closed_send_raises_not_connected() -> None:
    tcb = established()
    tcb.abort()
    with pytest.raises(OSError) as info:
        tcb.send(b"x")
    assert info.value.errno == errno.ENOTCONN


def test_closed_segments_are_dropped_and_counted() -> None:
    tcb = established()
    tcb.abort()
    tcb.dispatch(T1)
    rx(tcb, T1 + MS, R0, L0, ACK, b"late")
    expect(tcb, T1 + MS)
    assert tcb.counters == {TcpDrop.CLOSED_STATE: 1}


# ==========================================================================
# keepalive
# ==========================================================================


def _keepalive() -> Tcb:
    return established(
        plain(keepalive=True, keepalive_idle_us=10 * S, keepalive_interval_us=S, keepalive_count=2)
    )


def test_established_keepalive_probes_then_etimedout() -> None:
    tcb = _keepalive()
    probe = Seg(s(L0 - 1), R0, ACK, 4000)
    assert tcb.poll_at() == T1 + 10 * S
    fire(tcb, T1 + 10 * S)
    expect(tcb, T1 + 10 * S, probe)
    fire(tcb, T1 + 11 * S)
    expect(tcb, T1 + 11 * S, probe)
    fire(tcb, T1 + 12 * S)
    assert state(tcb) == "CLOSED"
    assert tcb.error == errno.ETIMEDOUT


def test_established_keepalive_answer_restarts_idle_wait() -> None:
    tcb = _keepalive()
    fire(tcb, T1 + 10 * S)
    tcb.dispatch(T1 + 10 * S)
    rx(tcb, T1 + 10 * S + MS, R0, L0, ACK)
    fire(tcb, T1 + 11 * S)
    expect(tcb, T1 + 11 * S)  # heard from the peer 1 s ago: wait out the idle time
    assert tcb.poll_at() == T1 + 10 * S + MS + 10 * S


# ==========================================================================
# stats
# ==========================================================================


def test_stats_reads_like_ss() -> None:
    tcb = established()
    tcb.send(b"a" * 100)
    tcb.dispatch(T1)
    ack_all(tcb, T1 + 20 * MS)
    rx(tcb, T1 + 21 * MS, R0, s(L0 + 100), ACK, b"b" * 50)
    st = tcb.stats()
    assert st["state"] == "ESTABLISHED"
    assert (st["bytes_acked"], st["bytes_received"], st["bytes_sent"]) == (100, 50, 100)
    assert st["srtt_us"] == (7 * 10 * MS + 20 * MS) // 8
    assert st["retransmits"] == 0
    assert st["cwnd"] == tcb.cwnd and st["ssthresh"] == tcb.ssthresh
    assert st["congestion_control"] == "cubic"


# ==========================================================================
# path MTU discovery (RFC 1191, RFC 5927): on_path_mtu
# ==========================================================================

PMTU_CFG = plain(mss=1460, sndbuf=16000)
"""MSS 1460 both ways (a 1500-byte path), no options: segments are 1500-byte datagrams."""


def _pmtu_sending(
    config: TcpConfig = PMTU_CFG, nbytes: int = 4380, peer_window: int = PEER_WIN, **opts: object
) -> Tcb:
    """Established at T1 with MSS 1460, two segments sent and ACKed (cwnd is no longer
    the untouched initial window), then `nbytes` more sent at T1 + 10 ms."""
    opts.setdefault("mss", 1460)
    tcb = established(config, peer_window, **opts)
    tcb.send(b"a" * 2 * tcb.smss)
    tcb.dispatch(T1)
    ack_all(tcb, T1 + 10 * MS, window=peer_window)
    assert tcb.cwnd == 10 * tcb.smss  # IW, not grown: the sender was not cwnd-limited
    tcb.send(b"p" * nbytes)
    tcb.dispatch(T1 + 10 * MS)
    return tcb


def test_established_path_mtu_resends_the_flight_in_smaller_segments_keeping_cwnd() -> None:
    tcb = _pmtu_sending()
    ssthresh = tcb.ssthresh
    t = T1 + 11 * MS
    # A router's next hop takes 1280 bytes: MSS 1280 - 40 = 1240.
    assert tcb.on_path_mtu(1280, t)
    assert (tcb.smss, tcb.stats()["pmtu"]) == (1240, 1280)
    # Every 1460-byte segment was dropped: all of it again, at once, in 1240s
    # (Linux's tcp_simple_retransmit), cwnd and ssthresh as they were.
    expect(
        tcb,
        t,
        Seg(s(L0 + 2920), R0, ACK, 4000, b"p" * 1240),
        Seg(s(L0 + 4160), R0, ACK, 4000, b"p" * 1240),
        Seg(s(L0 + 5400), R0, ACK, 4000, b"p" * 1240),
        Seg(s(L0 + 6640), R0, ACK | PSH, 4000, b"p" * 660),
    )
    assert (tcb.cwnd, tcb.ssthresh) == (14600, ssthresh)
    st = tcb.stats()
    assert (st["retransmits"], st["rtos"], st["backoffs"], st["recoveries"]) == (4, 0, 0, 0)
    assert tcb.poll_at() == t + 200 * MS  # the retransmission timer restarted, not backed off
    # Duplicate ACKs for the old flight start no fast retransmit (recover = SND.MAX).
    for k in range(3):
        rx(tcb, t + (1 + k) * MS, R0, s(L0 + 2920), ACK)
    assert not tcb.in_recovery
    rx(tcb, t + 10 * MS, R0, s(L0 + 7300), ACK)
    assert tcb.snd_una == s(L0 + 7300) and not tcb.in_recovery
    # New data goes in the new size (the 60-byte tail waits: Nagle).
    tcb.send(b"n" * 1300)
    expect(tcb, t + 10 * MS, Seg(s(L0 + 7300), R0, ACK, 4000, b"n" * 1240))


def test_established_path_mtu_never_raised_and_repeats_ignored() -> None:
    tcb = _pmtu_sending()
    t = T1 + 11 * MS
    assert tcb.on_path_mtu(1280, t)
    assert len(tcb.dispatch(t)) == 4
    # One ICMP per dropped segment: the others say the same and change nothing.
    assert not tcb.on_path_mtu(1280, t + MS)
    assert not tcb.on_path_mtu(1400, t + MS)  # larger: never raised from ICMP (RFC 1191 6.3)
    assert not tcb.on_path_mtu(1500, t + MS)
    expect(tcb, t + MS)
    assert tcb.smss == 1240
    assert tcb.counters == {TcpDrop.PMTU_NOT_LOWER: 3}
    # An MTU that would not lower the MSS of the handshake is ignored as well.
    tcb = _pmtu_sending()
    assert not tcb.on_path_mtu(1500, t)
    expect(tcb, t)
    assert tcb.smss == 1460


def test_established_path_mtu_floor_is_552() -> None:
    tcb = _pmtu_sending()
    t = T1 + 11 * MS
    # Linux's min_pmtu: an ICMP cannot shrink segments below 512 bytes (RFC 5927 5.2).
    assert tcb.on_path_mtu(296, t)
    assert (tcb.smss, tcb.stats()["pmtu"]) == (512, 552)
    segs = tcb.dispatch(t)
    assert [len(o.payload) for o in segs] == [512] * 8 + [284]
    assert not tcb.on_path_mtu(68, t + MS)  # RFC 791's minimum: still the floor
    assert tcb.smss == 512


def test_established_path_mtu_zero_uses_the_plateau_below_the_quoted_datagram() -> None:
    tcb = _pmtu_sending()
    t = T1 + 11 * MS
    # RFC 1191 5 and 7: an old router says 0; the datagram was 1500 bytes.
    assert tcb.on_path_mtu(0, t, datagram_len=1500)
    assert tcb.smss == 1492 - 40
    tcb.dispatch(t)
    # More such errors about the same 1500-byte datagrams lower nothing.
    assert not tcb.on_path_mtu(0, t + MS, datagram_len=1500)
    # One about a 1492-byte datagram: the next plateau, 1006.
    assert tcb.on_path_mtu(0, t + 2 * MS, datagram_len=1492)
    assert tcb.smss == 1006 - 40
    # Without the datagram's length: the plateau below the MTU in use (508),
    # held at the floor of 552.
    assert tcb.on_path_mtu(0, t + 3 * MS)
    assert tcb.smss == 512


def test_established_path_mtu_with_timestamps_takes_the_option_off() -> None:
    cfg = plain(mss=1460, sndbuf=16000, timestamps=True)
    tcb = _pmtu_sending(cfg, ts=(1000, 0))
    assert tcb.smss == 1448
    assert tcb.on_path_mtu(1280, T1 + 11 * MS)
    assert tcb.smss == 1240 - 12
    segs = tcb.dispatch(T1 + 11 * MS)
    assert [(o.seq, len(o.payload)) for o in segs] == [
        (s(L0 + 2896), 1228),
        (s(L0 + 4124), 1228),
        (s(L0 + 5352), 1228),
        (s(L0 + 6580), 696),
    ]


def test_established_path_mtu_tso_segments_follow_the_new_mss() -> None:
    cfg = plain(mss=1460, sndbuf=16000, tso_max_bytes=6000)
    tcb = _pmtu_sending(cfg, nbytes=8760, peer_window=65535)
    t = T1 + 11 * MS
    assert tcb.on_path_mtu(1280, t)
    # The device cuts at smss (gso_size): 1240; a TSO segment is a whole
    # number of them, at most 6000 bytes.
    assert tcb.sack_mss(0) == 1240
    expect(
        tcb,
        t,
        Seg(s(L0 + 2920), R0, ACK, 4000, b"p" * 4960),
        Seg(s(L0 + 7880), R0, ACK | PSH, 4000, b"p" * 3800),
    )


def test_established_path_mtu_in_sack_recovery_resends_unsacked_ranges_in_the_new_size() -> None:
    cfg = plain(mss=1460, sndbuf=16000, sack=True)
    tcb = _pmtu_sending(cfg, nbytes=8760, peer_window=65535, sack_permitted=True)
    t = T1 + 11 * MS
    # Segments 3..5 of six arrived (say the route changed under them): RACK
    # marks 0..2 lost and recovery resends them, in the old size, as cwnd
    # allows.
    rx(tcb, t, R0, s(L0 + 2920), ACK, sack_blocks=_sack((7300, 11680)))
    assert tcb.in_recovery
    cwnd = tcb.cwnd
    assert cwnd == 6132  # CUBIC: 0.7 * 8760 in flight
    expect(tcb, t, *[Seg(s(L0 + 2920 + k * 1460), R0, ACK, 4000, b"p" * 1460) for k in range(3)])
    # Then the ICMP: everything not SACKed is lost (the retransmissions too)
    # and goes again, each lost segment cut to the new MSS (as Linux's
    # tcp_retransmit_skb fragments it); the SACKed range does not; recovery
    # goes on with cwnd as it was (pipe is 0: 4380 bytes fit in 6132).
    assert tcb.on_path_mtu(1280, t + MS)
    expect(
        tcb,
        t + MS,
        *[
            Seg(s(L0 + 2920 + k * 1460 + off), R0, ACK, 4000, b"p" * n)
            for k in range(3)
            for off, n in ((0, 1240), (1240, 220))
        ],
    )
    assert tcb.in_recovery and tcb.cwnd == cwnd
    rx(tcb, t + 20 * MS, R0, s(L0 + 11680), ACK)
    assert not tcb.in_recovery
    assert tcb.recoveries == 1  # the ICMP started none of its own


def test_established_path_mtu_with_nothing_in_flight_only_lowers_the_mss() -> None:
    tcb = established(PMTU_CFG, mss=1460)
    assert tcb.on_path_mtu(1280, T1 + MS)
    expect(tcb, T1 + MS)
    tcb.send(b"x" * 2000)
    # The 760-byte tail waits for the ACK (Nagle).
    expect(tcb, T1 + 2 * MS, Seg(L0, R0, ACK, 4000, b"x" * 1240))


def test_syn_sent_path_mtu_is_ignored_and_counted() -> None:
    tcb = Tcb.connect(LOCAL, REMOTE, ISS, T0, PMTU_CFG)
    tcb.dispatch(T0)
    assert not tcb.on_path_mtu(1280, T0 + MS)
    assert tcb.counters == {TcpDrop.PMTU_STATE: 1}
    rx(tcb, T1, IRS, L0, SYN | ACK, mss=1460)
    assert tcb.smss == 1460
