"""Random segments, timers and application calls never crash a control block.

ARCHITECTURE.md rule 8: nothing from the wire may raise out of the loop,
and every queue the network can grow is bounded.  Hypothesis drives a
connection from each opening with a random mix of crafted segments (mostly
near the expected sequence numbers, some anywhere), timer expiries and
application calls, and checks the invariants of the sequence spaces and
of every segment that comes out after each step.
"""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp.seq import seq_add, seq_le, seq_sub
from ustack.tcp.tcb import State, Tcb, TcpConfig
from ustack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment, options_len

LOCAL = (0xC6120002, 80)
REMOTE = (0xC6120001, 40000)
ISS = 2**32 - 1000
IRS = 2**32 - 600
T0 = 10_000_000

CONFIGS = [
    TcpConfig(mss=500, rcvbuf=4000, sndbuf=4000, timestamps=False, sack=False),
    TcpConfig(mss=536, rcvbuf=3000, sndbuf=5000, keepalive=True, keepalive_idle_us=1_000_000),
    TcpConfig(rcvbuf=300_000, tso_max_bytes=8000, nodelay=True),
]

FLAGS = [ACK, ACK | PSH, ACK | FIN, ACK | FIN | PSH, RST, RST | ACK, SYN, SYN | ACK, ACK | 0x20]


def segment(data: st.DataObject, tcb: Tcb) -> tuple[TcpSegment, bytes]:
    near = data.draw(st.booleans())
    if near:
        seq = seq_add(tcb.rcv_nxt, data.draw(st.integers(-2000, 6000)))
        ack = seq_add(tcb.snd_una, data.draw(st.integers(-2000, 6000)))
    else:
        seq = data.draw(st.integers(0, 2**32 - 1))
        ack = data.draw(st.integers(0, 2**32 - 1))
    flags = data.draw(st.sampled_from(FLAGS))
    plen = data.draw(st.sampled_from([0, 0, 1, 100, 500, 1460, 3000]))
    ts = data.draw(
        st.one_of(
            st.none(),
            st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        )
    )
    blocks = tuple(
        (seq_add(tcb.snd_una, a), seq_add(tcb.snd_una, a + n))
        for a, n in data.draw(
            st.lists(st.tuples(st.integers(-600, 6000), st.integers(-10, 3000)), max_size=3)
        )
    )
    seg = TcpSegment(
        REMOTE[1],
        LOCAL[1],
        seq,
        ack,
        flags,
        data.draw(st.sampled_from([0, 1, 100, 8000, 65535])),
        0,
        20,
        data.draw(st.sampled_from([None, 0, 88, 536, 1460, 65535])),
        data.draw(st.sampled_from([None, 0, 7, 14])),
        data.draw(st.booleans()),
        blocks,
        None if ts is None else ts[0],
        None if ts is None else ts[1],
    )
    return seg, bytes(plen)


def check(tcb: Tcb, now: int) -> None:
    out = tcb.dispatch(now)
    assert seq_le(tcb.snd_una, tcb.snd_nxt)
    assert seq_le(tcb.snd_nxt, tcb.snd_max)
    # in flight: buffered data plus at most a SYN and a FIN
    assert seq_sub(tcb.snd_max, tcb.snd_una) <= tcb.unacked_bytes + 2 or tcb.state in (
        State.CLOSED,
        State.TIME_WAIT,
    )
    assert tcb.unacked_bytes <= tcb.config.sndbuf
    assert tcb.readable_bytes <= tcb.config.rcvbuf
    assert tcb.stats()["ooo_bytes"] <= tcb.config.rcvbuf  # type: ignore[operator]
    cap = max(tcb.smss, tcb.config.tso_max_bytes or 0)
    for o in out:
        assert 0 <= o.window <= 65535
        assert len(o.payload) <= cap
        assert 0 <= o.seq < 2**32 and 0 <= o.ack < 2**32
        options_len(
            mss=o.mss,
            wscale=o.wscale,
            sack_permitted=o.sack_permitted,
            sack_blocks=o.sack_blocks,
            ts=o.ts,
        )
    p = tcb.poll_at()
    if tcb.state is State.CLOSED:
        assert p is None
    else:
        assert p is None or isinstance(p, int)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_inputs_never_raise_and_keep_invariants(data: st.DataObject) -> None:
    cfg = data.draw(st.sampled_from(CONFIGS))
    now = T0
    if data.draw(st.booleans()):
        tcb = Tcb.connect(LOCAL, REMOTE, ISS, now, cfg)
        tcb.dispatch(now)
        if data.draw(st.booleans()):
            synack = TcpSegment(
                REMOTE[1], LOCAL[1], IRS, seq_add(ISS, 1), SYN | ACK, 8000, 0, 20,
                536, 7, True, (), 100, 0,
            )  # fmt: skip
            tcb.on_segment(synack, b"", now)
    else:
        syn = TcpSegment(
            REMOTE[1], LOCAL[1], IRS, 0, SYN, 8000, 0, 20, 1460, 2, True, (), 100, 0
        )  # fmt: skip
        tcb = Tcb.accept_syn(LOCAL, REMOTE, syn, ISS, now, cfg)
        tcb.dispatch(now)
        if data.draw(st.booleans()):
            ack = TcpSegment(
                REMOTE[1], LOCAL[1], seq_add(IRS, 1), seq_add(ISS, 1), ACK, 8000, 0, 20,
                None, None, False, (), 101, 0,
            )  # fmt: skip
            tcb.on_segment(ack, b"", now)
    check(tcb, now)
    for _ in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.integers(0, 9))
        if action <= 4:
            seg, payload = segment(data, tcb)
            tcb.on_segment(seg, payload, now)
        elif action == 5:
            now += data.draw(st.sampled_from([1, 1000, 40_000, 200_000, 3_000_000, 70_000_000]))
            p = tcb.poll_at()
            if p is not None and p <= now:
                tcb.on_timer(now)
        elif action == 6:
            with contextlib.suppress(OSError):  # misuse after close or reset raises
                tcb.send(bytes(data.draw(st.sampled_from([1, 100, 2000, 10_000]))))
        elif action == 7:
            tcb.recv(data.draw(st.sampled_from([1, 100, 100_000])))
        elif action == 8:
            call = data.draw(st.sampled_from(["shutdown_write", "close", "abort"]))
            getattr(tcb, call)()
        else:
            p = tcb.poll_at()
            if p is not None:
                now = max(now, p)
                tcb.on_timer(now)
        check(tcb, now)
