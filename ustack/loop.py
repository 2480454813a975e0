"""The Context: one device queue, one Stack, their timers, driven by one thread.

Network processing happens when the application asks for more work (the
Kernel Polling model): `poll(timeout)` runs receive bursts and timers and
returns the sockets that became readable.  What it does when there is no
work is the polling mode:

- ``busy``: spin on rx_burst until the timeout; lowest latency, one core
  at 100%.
- ``interrupt``: block in epoll on the TAP fd as soon as a burst comes
  back empty (the classic kernel model).
- ``hybrid`` (default): keep polling while frames keep arriving; once no
  frame has come for `idle_us` microseconds (counted from the first empty
  poll of the streak), arm the fd and block.

Each burst is limited to `budget` frames (NAPI's budget) so that a flood
cannot starve the application of the frames already delivered.

The idle threshold is a time, not a number of polls: an empty poll costs
about 1-2 us natively but more in the asyncio selector (which also asks
the kernel selector), so a count would mean a different wait on each
path.  It costs no extra clock read: `poll_once` reads the clock anyway
and decides there whether the streak is long enough (`idle`).  Both are
settings (`ustack.config`: ``budget``/``USTACK_BUDGET``,
``idle_us``/``USTACK_IDLE_US``).

Counters (`stats()`): polls, empty polls, sleeps (blocking waits on the
device), wake-ups (waits ended by a frame), frames, timer runs and frames
per non-empty burst.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ustack.dev.base import FrameDevice
from ustack.errors import UstackError
from ustack.stack.stack import Stack
from ustack.stack.udp import UdpSocket

POLL_MODES = ("busy", "interrupt", "hybrid")
DEFAULT_BUDGET = 64
"""Frames per receive burst (NAPI's default weight is 64 too)."""
DEFAULT_IDLE_US = 100
"""Hybrid's idle threshold: about 64 empty polls on the TAP ring."""


class WrongThreadError(UstackError, RuntimeError):
    """A Context was used from a thread other than the one that created it."""


@dataclass
class LoopCounters:
    polls: int = 0
    empty_polls: int = 0
    sleeps: int = 0
    wakeups: int = 0
    frames: int = 0
    timer_runs: int = 0

    @property
    def frames_per_burst(self) -> float:
        busy = self.polls - self.empty_polls
        return self.frames / busy if busy else 0.0


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class Context:
    """Drives a Stack over a device; confined to the thread that made it."""

    def __init__(
        self,
        device: FrameDevice,
        stack: Stack,
        *,
        poll: str = "hybrid",
        budget: int = DEFAULT_BUDGET,
        idle_us: int = DEFAULT_IDLE_US,
        clock: Callable[[], int] = monotonic_us,
    ) -> None:
        if poll not in POLL_MODES:
            raise ValueError(f"poll mode must be one of {', '.join(POLL_MODES)}, got {poll!r}")
        if budget < 1:
            raise ValueError(f"budget must be at least 1 frame, got {budget}")
        if idle_us < 0:
            raise ValueError(f"idle_us must be 0 or more microseconds, got {idle_us}")
        self.device = device
        self.stack = stack
        self.mode = poll
        self.budget = budget
        self.idle_us = idle_us
        self.clock = clock
        self.counters = LoopCounters()
        self._thread = threading.get_ident()
        self._idle_since: int | None = None
        """Clock reading at the first empty poll of the current streak (None: no streak)."""
        self.idle = False
        """The last poll was empty and the streak has lasted `idle_us` or more."""
        self._started = False

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise WrongThreadError(
                "a ustack Context belongs to the thread that created it; "
                "create one Context per thread"
            )

    @property
    def thread_ident(self) -> int:
        """`threading.get_ident()` of the thread this Context belongs to.

        API objects keep it and compare it with the caller's before they
        change anything (one compare per call), raising WrongThreadError.
        """
        return self._thread

    def start(self) -> None:
        self._check_thread()
        if not self._started:
            self._started = True
            self.stack.start(self.clock())
            self.stack.flush()

    def poll_once(self) -> int:
        """One receive burst, due timers and one flush; returns frames received."""
        dev = self.device
        stack = self.stack
        c = self.counters
        c.polls += 1
        n = dev.rx_burst(self.budget)
        now = self.clock()
        if n:
            c.frames += n
            stack.process(n, now)
            self._idle_since = None
            self.idle = False
        else:
            c.empty_polls += 1
            since = self._idle_since
            if since is None:
                self._idle_since = since = now
            self.idle = now - since >= self.idle_us
        deadline = stack.next_deadline_us()
        if deadline is not None and now >= deadline:
            c.timer_runs += 1
            stack.on_timer(now)
        stack.flush(now)
        return n

    def poll(self, timeout: float | None = None) -> list[UdpSocket]:
        """Process the network until some UDP socket is readable or timeout seconds pass.

        Returns the sockets that became readable (and clears the list).
        timeout None waits for ever; 0 polls once.
        """
        stack = self.stack
        if self.wait_until(lambda: bool(stack.ready), timeout):
            ready = stack.ready
            stack.ready = []
            return ready
        return []

    def wait_until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Process the network until `done()` is true or timeout seconds pass.

        This is the one place where the network is driven: every blocking
        call of the APIs waits here.  `done` is checked after each burst
        (after TCP output, so what the application reacts to has been
        acknowledged where due).  Returns done()'s last answer.  timeout
        None waits for ever; 0 runs one burst.
        """
        self._check_thread()
        if not self._started:
            self.start()
        # What the application sent since the last poll leaves now, not
        # after another receive burst.
        self.stack.flush(self.clock())
        if done():
            return True
        end = None if timeout is None else self.clock() + int(timeout * 1_000_000)
        while True:
            got = self.poll_once()
            if done():
                return True
            now = self.clock()
            if end is not None and now >= end:
                return False
            # A burst that brought frames may have left more behind (budget):
            # poll again in every mode.  Only an empty one may lead to sleep.
            if got or self.mode == "busy" or (self.mode == "hybrid" and not self.idle):
                continue
            self._sleep(now, end)

    def _sleep(self, now: int, end: int | None) -> None:
        wake = end
        deadline = self.stack.next_deadline_us()
        if deadline is not None:
            wake = deadline if wake is None else min(wake, deadline)
        timeout_ms = -1 if wake is None else max(0, (wake - now + 999) // 1000)
        # A blocking wait with no end would not see signals in a timely way.
        if timeout_ms < 0 or timeout_ms > 1000:
            timeout_ms = 1000
        self.counters.sleeps += 1
        if self.device.wait(timeout_ms):
            self.counters.wakeups += 1
        self.reset_idle()

    def reset_idle(self) -> None:
        """Start a new idle streak: called after each sleep, so hybrid polls again first."""
        self._idle_since = None
        self.idle = False

    def stats(self) -> dict[str, int | float]:
        c = self.counters
        return {
            "loop_polls": c.polls,
            "loop_empty_polls": c.empty_polls,
            "loop_sleeps": c.sleeps,
            "loop_wakeups": c.wakeups,
            "loop_frames": c.frames,
            "loop_timer_runs": c.timer_runs,
            "loop_frames_per_burst": round(c.frames_per_burst, 2),
        }
