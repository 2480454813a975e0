"""Two control blocks over a seeded lossy, reordering, duplicating in-memory link.

Every segment goes through emit_tcp and parse_tcp, so the option layout
and checksums the control block asks for are exercised too.

A fake clock jumps from event to event (the next delivery or the next
timer of either side).  Each side writes its whole stream, shuts down its
write side, reads everything and closes; the test checks that each side
read exactly the bytes the other wrote and that both reach CLOSED (one
through TIME-WAIT).  Every run is deterministic for its seed.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from ustack.tcp.tcb import OutSegment, State, Tcb, TcpConfig
from ustack.wire.tcp import SYN, TCP_HLEN, TcpSegment, emit_tcp, options_len, parse_tcp

A = (0xC6120001, 40000)
B = (0xC6120002, 80)
ISS_A = 2**32 - 1000
ISS_B = 2**32 - 3000


def on_the_wire(
    o: OutSegment, src: tuple[int, int], dst: tuple[int, int]
) -> tuple[TcpSegment, bytes]:
    """Emit `o` with emit_tcp and parse it back with parse_tcp, checksum and all."""
    hlen = TCP_HLEN + options_len(
        mss=o.mss,
        wscale=o.wscale,
        sack_permitted=o.sack_permitted,
        sack_blocks=o.sack_blocks,
        ts=o.ts,
    )
    n = len(o.payload)
    buf = bytearray(hlen + n)
    buf[hlen:] = o.payload
    emit_tcp(
        buf,
        0,
        sport=src[1],
        dport=dst[1],
        seq=o.seq,
        ack=o.ack,
        flags=o.flags,
        window=o.window,
        src=src[0],
        dst=dst[0],
        payload_len=n,
        mss=o.mss,
        wscale=o.wscale,
        sack_permitted=o.sack_permitted,
        sack_blocks=o.sack_blocks,
        ts=o.ts,
    )
    seg = parse_tcp(buf, 0, len(buf), src[0], dst[0])
    assert isinstance(seg, TcpSegment), seg
    return seg, bytes(buf[seg.header_len :])


@dataclass
class Link:
    """Per-direction loss, duplication and delay jitter (jitter reorders)."""

    rng: random.Random
    loss: float
    dup: float
    delay_us: int
    jitter_us: int
    queue: list[tuple[int, int, int, TcpSegment, bytes]] = field(default_factory=list)
    n: int = 0
    sent: int = 0
    lost: int = 0
    trace: list[tuple[int, int, TcpSegment, bytes]] | None = None

    def put(self, now_us: int, to: int, seg: TcpSegment, payload: bytes) -> None:
        self.sent += 1
        if self.trace is not None:
            self.trace.append((now_us, to, seg, payload))
        if self.rng.random() < self.loss:
            self.lost += 1
            return
        for _ in range(2 if self.rng.random() < self.dup else 1):
            self.n += 1
            t = now_us + self.delay_us + self.rng.randrange(self.jitter_us + 1)
            heapq.heappush(self.queue, (t, self.n, to, seg, payload))


@dataclass
class Side:
    tcb: Tcb | None
    data: bytes
    written: int = 0
    got: bytearray = field(default_factory=bytearray)
    shut: bool = False

    def app(self) -> None:
        tcb = self.tcb
        if tcb is None:
            return
        if tcb.state in (State.ESTABLISHED, State.CLOSE_WAIT) and not self.shut:
            if self.written < len(self.data):
                chunk = memoryview(self.data)[self.written : self.written + 65536]
                self.written += tcb.send(chunk)
            if self.written == len(self.data):
                tcb.shutdown_write()
                self.shut = True
        self.got += tcb.recv(1 << 20)


def run(
    seed: int,
    config: TcpConfig,
    size: int,
    loss: float,
    dup: float,
    jitter_us: int,
    trace: list[tuple[int, int, TcpSegment, bytes]] | None = None,
) -> tuple[Tcb, Tcb]:
    rng = random.Random(seed)
    link = Link(rng, loss, dup, 5_000, jitter_us, trace=trace)
    now = 1_000_000
    a = Side(Tcb.connect(A, B, ISS_A, now, config), rng.randbytes(size))
    b = Side(None, rng.randbytes(size))
    for o in a.tcb.dispatch(now):  # type: ignore[union-attr]
        link.put(now, 1, *on_the_wire(o, A, B))
    for _ in range(1_000_000):
        deadlines = [link.queue[0][0]] if link.queue else []
        for side in (a, b):
            if side.tcb is not None and (p := side.tcb.poll_at()) is not None:
                deadlines.append(p)
        if not deadlines:
            break
        now = max(now, min(deadlines))
        while link.queue and link.queue[0][0] <= now:
            _, _, to, seg, payload = heapq.heappop(link.queue)
            if to == 1:
                if b.tcb is None:
                    if seg.flags == SYN:
                        b.tcb = Tcb.accept_syn(B, A, seg, ISS_B, now, config)
                    continue
                b.tcb.on_segment(seg, payload, now)
            else:
                a.tcb.on_segment(seg, payload, now)  # type: ignore[union-attr]
        for side, src, dst, to in ((a, A, B, 1), (b, B, A, 2)):
            tcb = side.tcb
            if tcb is None:
                continue
            p = tcb.poll_at()
            if p is not None and p <= now:
                tcb.on_timer(now)
            side.app()
            if tcb.eof and side.shut:
                tcb.close()
            for o in tcb.dispatch(now):
                link.put(now, to, *on_the_wire(o, src, dst))
    else:
        pytest.fail("simulation did not finish")
    assert a.tcb is not None and b.tcb is not None
    assert bytes(b.got) == a.data
    assert bytes(a.got) == b.data
    assert a.tcb.state is State.CLOSED and b.tcb.state is State.CLOSED
    assert a.tcb.error is None and b.tcb.error is None
    assert a.tcb.bytes_received == size and b.tcb.bytes_received == size
    return a.tcb, b.tcb


CONFIGS = {
    "default": TcpConfig(),
    "plain": TcpConfig(timestamps=False, sack=False, window_scaling=False),
    "nodelay-newreno-small": TcpConfig(
        nodelay=True, congestion_control="newreno", rcvbuf=20_000, sndbuf=30_000
    ),
    "tso": TcpConfig(tso_max_bytes=64_000),
    "tiny": TcpConfig(mss=536, rcvbuf=4000, sndbuf=3000, window_scaling=False),
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sim_two_megabytes_each_way_lossy_reordering_duplicating(seed: int) -> None:
    run(seed, CONFIGS["default"], 2_000_000, loss=0.02, dup=0.01, jitter_us=3_000)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [11, 12])
def test_sim_configurations_under_heavy_loss(name: str, seed: int) -> None:
    run(seed, CONFIGS[name], 200_000, loss=0.08, dup=0.03, jitter_us=15_000)


def test_sim_clean_link_no_retransmissions() -> None:
    a, b = run(5, CONFIGS["default"], 500_000, loss=0.0, dup=0.0, jitter_us=0)
    assert a.retransmits == 0 and b.retransmits == 0
    assert a.counters == {} and b.counters == {}


@pytest.mark.parametrize("seed", range(100, 130))
def test_sim_short_transfers_under_very_heavy_loss(seed: int) -> None:
    cfg = CONFIGS["default"] if seed % 2 else CONFIGS["plain"]
    run(seed, cfg, 30_000, loss=0.15, dup=0.05, jitter_us=20_000)


@pytest.mark.parametrize("name", ["default", "plain"])
def test_sim_fast_path_changes_nothing_on_the_wire(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header-prediction fast path is an optimisation only: with it turned
    off, the same seeded run puts exactly the same segments on the wire."""
    fast: list[tuple[int, int, TcpSegment, bytes]] = []
    run(21, CONFIGS[name], 300_000, loss=0.03, dup=0.02, jitter_us=4_000, trace=fast)
    monkeypatch.setattr(Tcb, "_fast_path", lambda self, seg, payload, now_us: False)
    slow: list[tuple[int, int, TcpSegment, bytes]] = []
    run(21, CONFIGS[name], 300_000, loss=0.03, dup=0.02, jitter_us=4_000, trace=slow)
    assert len(fast) == len(slow)
    assert fast == slow
