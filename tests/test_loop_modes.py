"""Polling modes of the Context (and of the asyncio selector) on a simulated device and clock.

`SimRing` is a MemoryRing whose time is simulated: every receive burst costs
`POLL_US`, a sleep lasts until its timeout or until the next scheduled
frame arrives, and reading the clock costs nothing.  So every poll, sleep
and wake-up happens at a known microsecond and the counters of
`Context.stats()` are asserted exactly:

- busy never sleeps;
- interrupt sleeps at the first empty poll;
- hybrid sleeps once no frame has come for `idle_us` (counted from the
  first empty poll), so its first sleep is at T0 + POLL_US + idle_us;
- a frame arriving ends a sleep (a wake-up) and is received by the next
  burst;
- no burst takes more than `budget` frames, and a burst that brought
  frames is followed by another one, not by a sleep, in every mode.

The last section drives `UstackSelector.select` (the asyncio loop's one
waiting place) the same way, through a kernel selector whose waits take
simulated time: it follows the same `idle_us` and `budget`.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ustack.aio.selector import NO_FD_WAIT_S, UstackSelector
from ustack.dev.memring import MemoryRing
from ustack.loop import DEFAULT_BUDGET, DEFAULT_IDLE_US, Context
from ustack.stack.interface import Interface
from ustack.stack.stack import Stack
from ustack.stack.udp import UdpSocket

US = "198.18.0.2"
PEER = "198.18.0.1"
US_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
PORT = 9000

S = 1_000_000
T0 = 5 * S  # simulated time starts away from zero
POLL_US = 10  # what one receive burst costs in simulated time


class SimRing(MemoryRing):
    """A MemoryRing with simulated time: bursts cost POLL_US, sleeps last until a frame or timeout.

    `bursts` records what each rx_burst returned, `sleeps` the time and the
    timeout (us) of each wait.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self._due: list[tuple[int, int, bytes]] = []  # heap of (time, order, frame)
        self._order = itertools.count()
        self.bursts: list[int] = []
        self.sleeps: list[tuple[int, int]] = []

    def clock(self) -> int:
        return self.now

    def arrive(self, at_us: int, frame: bytes) -> None:
        """The frame reaches the device at simulated time at_us."""
        heapq.heappush(self._due, (at_us, next(self._order), frame))

    def _receive_due(self) -> None:
        while self._due and self._due[0][0] <= self.now:
            self.inject(heapq.heappop(self._due)[2])

    def rx_burst(self, max_frames: int = 32) -> int:
        self.now += POLL_US
        self._receive_due()
        n = super().rx_burst(max_frames)
        self.bursts.append(n)
        return n

    def sleep(self, timeout_us: int) -> bool:
        """Until a frame is there or timeout_us passes; True if a frame is there."""
        self.sleeps.append((self.now, timeout_us))
        self._receive_due()
        if super().wait(0):  # frames already waiting: no time passes
            return True
        if self._due and self._due[0][0] <= self.now + timeout_us:
            self.now = self._due[0][0]
            self._receive_due()
            return True
        self.now += timeout_us
        return False

    def wait(self, timeout_ms: int) -> bool:
        assert 0 <= timeout_ms <= 1000  # the Context never waits longer
        return self.sleep(timeout_ms * 1000)


def datagram(payload: bytes = b"ping") -> bytes:
    return bytes(
        Ether(dst=US_MAC, src=PEER_MAC)
        / IP(src=PEER, dst=US)
        / UDP(sport=40000, dport=PORT)
        / Raw(payload)
    )


def make(poll: str, **kw: Any) -> tuple[SimRing, Context, UdpSocket]:
    """A started Context on a SimRing with a UDP socket bound to PORT."""
    ring = SimRing()
    stack = Stack(ring, Interface.from_config(f"{US}/24", mac=US_MAC))
    ctx = Context(ring, stack, poll=poll, clock=ring.clock, **kw)
    ctx.start()
    sock = stack.udp_socket()
    sock.bind(("", PORT))
    return ring, ctx, sock


def counters(
    polls: int, empty: int, sleeps: int, wakeups: int, frames: int
) -> dict[str, int | float]:
    """What Context.stats() should say (no timers run in these tests)."""
    busy = polls - empty
    return {
        "loop_polls": polls,
        "loop_empty_polls": empty,
        "loop_sleeps": sleeps,
        "loop_wakeups": wakeups,
        "loop_frames": frames,
        "loop_timer_runs": 0,
        "loop_frames_per_burst": round(frames / busy, 2) if busy else 0.0,
    }


def test_defaults_are_the_documented_ones():
    _, ctx, _ = make("hybrid")
    assert (ctx.budget, ctx.idle_us) == (DEFAULT_BUDGET, DEFAULT_IDLE_US) == (64, 100)
    assert ctx.stats() == counters(0, 0, 0, 0, 0)


@pytest.mark.parametrize(("kw", "match"), [({"idle_us": -1}, "idle_us"), ({"budget": 0}, "budget")])
def test_bad_settings_raise_value_error(kw: dict[str, int], match: str):
    with pytest.raises(ValueError, match=match):
        make("hybrid", **kw)


# ---- waiting with nothing to receive ------------------------------------------------------


def test_busy_spins_through_the_whole_wait_and_never_sleeps():
    ring, ctx, _ = make("busy")
    assert ctx.wait_until(lambda: False, 0.001) is False
    # One burst every POLL_US until the 1000 us have passed.
    assert ring.now == T0 + 1000
    assert ring.sleeps == []
    assert ctx.stats() == counters(polls=100, empty=100, sleeps=0, wakeups=0, frames=0)


def test_interrupt_sleeps_at_the_first_empty_poll():
    ring, ctx, _ = make("interrupt")
    assert ctx.wait_until(lambda: False, 0.01) is False
    # Poll at T0+10, then sleep the rest of the 10 ms (rounded up to whole ms);
    # one more poll after the wake-up finds the time is up.
    assert ring.sleeps == [(T0 + 10, 10_000)]
    assert ring.bursts == [0, 0]
    assert ctx.stats() == counters(polls=2, empty=2, sleeps=1, wakeups=0, frames=0)


@pytest.mark.parametrize("idle_us", [0, 100, 250, 500])
def test_hybrid_sleeps_only_after_idle_us_of_empty_polls(idle_us: int):
    ring, ctx, _ = make("hybrid", idle_us=idle_us)
    assert ctx.wait_until(lambda: False, 0.01) is False
    # The streak starts at the first empty poll (T0+10); the poll that finds
    # it idle_us old is the last before the sleep.
    first_sleep = T0 + POLL_US + idle_us
    spins = idle_us // POLL_US + 1
    assert ring.sleeps[0] == (first_sleep, (T0 + 10_000 - first_sleep + 999) // 1000 * 1000)
    assert len(ring.sleeps) == 1
    assert ring.bursts == [0] * (spins + 1)
    assert ctx.stats() == counters(polls=spins + 1, empty=spins + 1, sleeps=1, wakeups=0, frames=0)


def test_hybrid_wait_shorter_than_idle_us_never_sleeps():
    ring, ctx, _ = make("hybrid", idle_us=100)
    assert ctx.wait_until(lambda: False, 0.00009) is False
    assert ring.sleeps == []
    assert ctx.stats() == counters(polls=9, empty=9, sleeps=0, wakeups=0, frames=0)


def test_hybrid_polls_idle_us_again_after_each_sleep():
    ring, ctx, _ = make("hybrid", idle_us=100)
    assert ctx.wait_until(lambda: False, 0.0025) is False
    # 11 empty polls, a 3 ms sleep rounded up past the end, one poll after
    # it (at T0+3120, the first of a new streak): then the wait is over.
    assert ring.sleeps == [(T0 + 110, 3000)]
    assert ctx.stats() == counters(polls=12, empty=12, sleeps=1, wakeups=0, frames=0)
    ctx.wait_until(lambda: False, 0.0002)
    # The streak goes on across waits: 10 more polls make it 100 us old.
    assert ring.sleeps == [(T0 + 110, 3000), (T0 + 3120 + 100, 1000)]
    assert ctx.stats() == counters(polls=23, empty=23, sleeps=2, wakeups=0, frames=0)


def test_hybrid_streak_restarts_when_a_frame_arrives():
    ring, ctx, sock = make("hybrid", idle_us=100)
    ring.arrive(T0 + 50, datagram())  # during the streak, before the threshold
    assert ctx.wait_until(lambda: False, 0.001) is False
    # Frame at the 5th poll; the 6th is the first empty one of a new streak
    # (T0+60), which reaches 100 us at T0+160.
    assert ring.bursts[:7] == [0, 0, 0, 0, 1, 0, 0]
    assert ring.sleeps == [(T0 + 160, 1000)]
    assert sock.queued == 1
    assert ctx.stats() == counters(polls=17, empty=16, sleeps=1, wakeups=0, frames=1)


# ---- a frame ends the wait --------------------------------------------------------------------


def test_interrupt_sleep_woken_by_a_frame():
    ring, ctx, sock = make("interrupt")
    ring.arrive(T0 + 5000, datagram())
    assert ctx.poll(0.1) == [sock]
    # Slept at the first poll until the frame came (not the 100 ms).
    assert ring.sleeps == [(T0 + 10, 100_000)]
    assert ring.now == T0 + 5010
    assert sock.recvfrom(100) == (b"ping", (PEER, 40000))
    assert ctx.stats() == counters(polls=2, empty=1, sleeps=1, wakeups=1, frames=1)


def test_hybrid_sleep_woken_by_a_frame():
    ring, ctx, sock = make("hybrid", idle_us=100)
    ring.arrive(T0 + 5000, datagram())
    assert ctx.poll(0.1) == [sock]
    assert ring.sleeps == [(T0 + 110, 100_000)]
    assert ring.now == T0 + 5010
    assert ctx.stats() == counters(polls=12, empty=11, sleeps=1, wakeups=1, frames=1)


def test_busy_receives_the_frame_at_the_first_poll_after_it_arrives():
    ring, ctx, sock = make("busy")
    ring.arrive(T0 + 5000, datagram())
    assert ctx.poll(0.1) == [sock]
    assert ring.now == T0 + 5000
    assert ring.sleeps == []
    assert ctx.stats() == counters(polls=500, empty=499, sleeps=0, wakeups=0, frames=1)


def test_sleep_that_times_out_is_no_wakeup():
    ring, ctx, sock = make("interrupt")
    ring.arrive(T0 + 20_000, datagram())  # after the wait's end
    assert ctx.poll(0.01) == []
    assert ring.sleeps == [(T0 + 10, 10_000)]
    assert ctx.stats() == counters(polls=2, empty=2, sleeps=1, wakeups=0, frames=0)
    assert ctx.poll(0.1) == [sock]
    assert ctx.stats() == counters(polls=4, empty=3, sleeps=2, wakeups=1, frames=1)


# ---- the budget -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["busy", "interrupt", "hybrid"])
def test_budget_caps_each_burst_and_full_bursts_are_not_followed_by_sleep(mode: str):
    ring, ctx, sock = make(mode, budget=64)
    for i in range(150):
        ring.arrive(T0, datagram(b"%d" % i))
    assert ctx.wait_until(lambda: sock.queued == 150, 0.1) is True
    assert ring.bursts == [64, 64, 22]
    assert ring.sleeps == []  # frames kept coming: no mode sleeps between bursts
    assert ctx.stats() == counters(polls=3, empty=0, sleeps=0, wakeups=0, frames=150)
    assert ctx.stats()["loop_frames_per_burst"] == 50.0


def test_budget_one_takes_one_frame_per_burst_and_the_application_sees_each():
    ring, ctx, sock = make("hybrid", budget=1)
    for i in range(3):
        ring.arrive(T0, datagram(b"%d" % i))
    seen: list[int] = []

    def done() -> bool:
        seen.append(sock.queued)
        return sock.queued == 3

    assert ctx.wait_until(done, 0.1)
    # done() is asked before the first burst and after each one.
    assert seen == [0, 1, 2, 3]
    assert ring.bursts == [1, 1, 1]
    assert ctx.stats() == counters(polls=3, empty=0, sleeps=0, wakeups=0, frames=3)


def test_poll_zero_runs_one_burst_of_at_most_budget_frames():
    ring, ctx, sock = make("interrupt", budget=4)
    for i in range(10):
        ring.arrive(T0, datagram(b"%d" % i))
    assert ctx.poll(0) == [sock]
    assert sock.queued == 4
    assert ring.bursts == [4]
    assert ctx.stats() == counters(polls=1, empty=0, sleeps=0, wakeups=0, frames=4)


# ---- the asyncio selector follows the same settings ------------------------------------------


class SimSelector(selectors.DefaultSelector):
    """A kernel selector with nothing registered whose waits take simulated time."""

    def __init__(self, ring: SimRing) -> None:
        super().__init__()
        self.ring = ring

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert timeout is not None and timeout <= NO_FD_WAIT_S  # a device without an fd
        if timeout > 0:
            self.ring.sleep(round(timeout * S))
        return []


def make_selector(poll: str, **kw: Any) -> tuple[SimRing, Context, UdpSocket, UstackSelector]:
    ring, ctx, sock = make(poll, **kw)
    return ring, ctx, sock, UstackSelector(ctx, SimSelector(ring))


@pytest.mark.parametrize("idle_us", [0, 100, 300])
def test_selector_hybrid_blocks_after_the_contexts_idle_us(idle_us: int):
    ring, ctx, _, sel = make_selector("hybrid", idle_us=idle_us)
    first_block = T0 + POLL_US + idle_us
    # The loop's timeout ends just as the first block (at most NO_FD_WAIT_S) does.
    assert sel.select((first_block + 1000 - T0) / S) == []
    assert ring.sleeps == [(first_block, 1000)]
    polls = idle_us // POLL_US + 2  # the streak, then one burst after the block
    assert sel.stats() == {
        "aio_selects": 1,
        "aio_spins": polls - 2,
        "aio_blocks": 1,
        "aio_tap_wakeups": 0,
    }
    assert ctx.stats() == counters(polls=polls, empty=polls, sleeps=0, wakeups=0, frames=0)


def test_selector_busy_never_blocks():
    ring, ctx, _, sel = make_selector("busy")
    assert sel.select(0.0011) == []
    assert ring.sleeps == []
    assert sel.stats()["aio_blocks"] == 0 and sel.stats()["aio_spins"] == 111
    assert ctx.stats() == counters(polls=111, empty=111, sleeps=0, wakeups=0, frames=0)


def test_selector_interrupt_blocks_at_the_first_empty_burst():
    ring, ctx, _, sel = make_selector("interrupt")
    assert sel.select(0.0011) == []
    # Block at once (1 ms at most without an fd), burst, block for the rest.
    assert ring.sleeps == [(T0 + 10, 1000), (T0 + 1020, 90)]
    assert sel.stats()["aio_blocks"] == 2 and sel.stats()["aio_spins"] == 0
    assert ctx.stats() == counters(polls=3, empty=3, sleeps=0, wakeups=0, frames=0)


@pytest.mark.parametrize("mode", ["busy", "interrupt", "hybrid"])
def test_selector_bursts_are_capped_by_budget_and_not_followed_by_a_block(mode: str):
    ring, ctx, sock, sel = make_selector(mode, budget=64, idle_us=100)
    for i in range(150):
        ring.arrive(T0, datagram(b"%d" % i))
    sel.select(0.0005)
    assert ring.bursts[:4] == [64, 64, 22, 0]
    assert sock.queued == 150
    assert ctx.stats()["loop_frames"] == 150
    # Nothing blocked before the last frame was in.
    assert all(t > T0 + 30 for t, _ in ring.sleeps)
