"""The selector of the ustack event loop: where the stack is driven.

ARCHITECTURE.md, "Where polling happens": network processing runs when
the application waits for work.  asyncio's `SelectorEventLoop` waits in
exactly one place, `selector.select(timeout)`, once per loop iteration,
after the callbacks of the previous iteration ran.  `UstackSelector` wraps
the kernel's default selector and does, in that call:

1. flush: what the callbacks of the last iteration wrote (replies, window
   updates, FINs) leaves now, before anything else;
2. one receive burst, the due timers and TCP output (`Context.poll_once`);
   the transports' `on_event` callbacks run inside it and schedule
   protocol callbacks with `loop.call_soon` (nothing of the application
   runs inside `select`), and tell the selector through `wake()`;
3. if that produced work for the application, or the loop asked for a
   zero timeout, return the kernel selector's events without blocking;
4. otherwise wait, as the polling mode says:

   - ``busy``: never block; spin on bursts and zero-timeout kernel polls
     until work shows up or the loop's timeout passes;
   - ``hybrid``: spin like ``busy`` until no frame has come for the
     Context's `idle_us` (the same setting and the same streak as the
     native waits: `Context.idle`, decided in `poll_once`), then block
     like ``interrupt``;
   - ``interrupt``: block in the kernel selector with the TAP fd
     registered, until a frame arrives, a kernel fd is ready, the loop's
     own timeout (its `call_later` timers) or the stack's next timer
     deadline (`Stack.next_deadline_us`) passes.

   In every mode a burst that brought frames is followed by another burst
   before any blocking: the budget may have left frames behind.

The TAP fd is in the kernel selector only while blocking: a registered fd
costs the kernel a callback per frame it queues (see ext/ring.c us_wait).
"""

from __future__ import annotations

import selectors
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from ustack.loop import Context

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike as FileObj

_TAP: Final = object()
"""`data` of the TAP fd's key, told apart from the loop's own keys."""

NO_FD_WAIT_S: Final = 0.001
"""A device without a file descriptor (an in-memory one) cannot wake a
blocked selector; the loop then sleeps at most this long between polls."""


class UstackSelector(selectors.BaseSelector):
    """A kernel selector that runs the ustack Context before it waits."""

    def __init__(self, ctx: Context, inner: selectors.BaseSelector | None = None) -> None:
        self.ctx = ctx
        self.inner = inner if inner is not None else selectors.DefaultSelector()
        self.mode = ctx.mode
        self._work = False
        self._got = 0
        """Frames the last burst brought."""
        self._closed = False
        # Counters (exposed through the loop's stats()).
        self.selects = 0
        self.spins = 0
        self.blocks = 0
        self.tap_wakeups = 0

    # -- the kernel selector's interface, delegated ----------------------------

    def register(self, fileobj: FileObj, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileObj) -> selectors.SelectorKey:
        return self.inner.unregister(fileobj)

    def modify(self, fileobj: FileObj, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.modify(fileobj, events, data)

    def get_key(self, fileobj: FileObj) -> selectors.SelectorKey:
        return self.inner.get_key(fileobj)

    def get_map(self) -> Mapping[FileObj, selectors.SelectorKey]:
        return self.inner.get_map()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.inner.close()

    # -- driving ---------------------------------------------------------------

    def wake(self) -> None:
        """Called by transports when they scheduled work for the application."""
        self._work = True

    def _burst(self) -> None:
        self._got = self.ctx.poll_once()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ctx = self.ctx
        clock = ctx.clock
        self.selects += 1
        self._work = False
        ctx.stack.flush(clock())
        self._burst()
        inner = self.inner
        if self._work or (timeout is not None and timeout <= 0):
            return inner.select(0)
        end = None if timeout is None else clock() + int(timeout * 1_000_000)
        mode = self.mode
        while True:
            if self._got or mode == "busy" or (mode == "hybrid" and not ctx.idle):
                self.spins += 1
                events = inner.select(0)
                if events:
                    return events
                if end is not None and clock() >= end:
                    return events
                self._burst()
                if self._work:
                    return events  # empty; the kernel selector was asked a burst ago
                continue
            events = self._block(end)
            ctx.reset_idle()
            self._burst()
            # The kernel selector was just asked: its answer is current.
            if events or self._work or (end is not None and clock() >= end):
                return events

    def _block(self, end: int | None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait in the kernel selector until a frame, a kernel fd, `end` or a stack timer."""
        ctx = self.ctx
        now = ctx.clock()
        wake = end
        deadline = ctx.stack.next_deadline_us()
        if deadline is not None and (wake is None or deadline < wake):
            wake = deadline
        timeout = None if wake is None else max(0.0, (wake - now) / 1_000_000)
        fd = ctx.device.fileno()
        inner = self.inner
        self.blocks += 1
        if fd < 0:
            if timeout is None or timeout > NO_FD_WAIT_S:
                timeout = NO_FD_WAIT_S
            return inner.select(timeout)
        inner.register(fd, selectors.EVENT_READ, _TAP)
        try:
            events = inner.select(timeout)
        finally:
            inner.unregister(fd)
        for i, (key, _mask) in enumerate(events):
            if key.data is _TAP:
                self.tap_wakeups += 1
                del events[i]
                break
        return events

    def stats(self) -> dict[str, int]:
        return {
            "aio_selects": self.selects,
            "aio_spins": self.spins,
            "aio_blocks": self.blocks,
            "aio_tap_wakeups": self.tap_wakeups,
        }
