"""An epoll-like readiness API over ustack sockets, driven by the Context.

`Epoll` has the shape of `select.epoll` with ustack sockets in place of
file descriptors:

    ep = Epoll()
    ep.register(sock, EPOLLIN | EPOLLRDHUP)
    for sock, events in ep.poll(timeout):
        ...

Waiting in `poll()` is what drives the network (Kernel Polling,
ARCHITECTURE.md): it runs receive bursts, timers and TCP output through
`Context.wait_until` until some registered socket is ready or the timeout
passes, sleeping in the device's epoll or spinning as the polling mode says.

Theory of operation.  Each registration is an `_Entry`.  The Stack tells
a socket when something may have changed for it (a connection's or
listener's `on_event`, a UDP socket's `on_readable`, set only while the
socket is registered somewhere); the socket then puts its entries on
their Epoll's ready list, which costs a dict insertion.  `poll()` computes
each listed socket's mask from its state (`Socket._poll_mask`, the rules of
Linux's tcp_poll) and reports it when it meets the interest mask (EPOLLERR
and EPOLLHUP are always reported, as by epoll(7)).

- Level-triggered (default): a reported entry stays listed and is asked
  again at the next poll; it leaves the list when its mask has become 0,
  and the next event from the Stack puts it back.  Reported entries move to
  the end of the list, so `maxevents` rotates fairly.
- EPOLLET: an entry is reported once per event from the Stack (new data,
  an ACK that freed space, a state change or error, a connection in the
  accept queue, a datagram into an empty queue), then leaves the list until
  the next one, like epoll's edge-triggered mode.  The Stack's callbacks
  also run for events that raise nothing (a delayed-ACK timer, the
  application's own sends); for a connection, progress counters
  (`Socket._edge_key`: bytes received, bytes acknowledged, state, error)
  tell a real event from those, so they are not reported.
- EPOLLONESHOT: after one report the entry is disabled until `modify()`.

Registering or modifying an entry asks for its state at once, so a socket
that is already ready is reported by the next poll.  A socket's state can
also change by the application's own calls; those that can raise a mask
(shutdown, connect) list the socket's entries themselves.  Closing a
socket removes it from every Epoll (as closing the last descriptor does).

poll() runs at least one receive burst whenever nothing ran one since the
previous poll() returned, even if sockets were already ready, so an
application that always finds a socket writable cannot starve input and
timers.

Threads.  An Epoll belongs to the thread of its Context and watches only
that Context's sockets.  register, modify, unregister, poll and close from
another thread raise `ustack.loop.WrongThreadError` before anything
changes (one compare of `threading.get_ident()`); `closed`, `context`,
`fileno()` and repr() may be read from any thread.  A thread that wants
readiness makes its own Epoll over its own sockets; there is no waking
one thread's poll() from another.
"""

from __future__ import annotations

import errno
import os
from threading import get_ident as _get_ident
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ustack.api.socket import Socket
    from ustack.loop import Context

__all__ = [
    "EPOLLERR",
    "EPOLLET",
    "EPOLLEXCLUSIVE",
    "EPOLLHUP",
    "EPOLLIN",
    "EPOLLMSG",
    "EPOLLONESHOT",
    "EPOLLOUT",
    "EPOLLPRI",
    "EPOLLRDBAND",
    "EPOLLRDHUP",
    "EPOLLRDNORM",
    "EPOLLWRBAND",
    "EPOLLWRNORM",
    "Epoll",
    "epoll",
]

# The values of Linux's <sys/epoll.h> (and of the select module's constants).
EPOLLIN: Final = 0x001
EPOLLPRI: Final = 0x002
EPOLLOUT: Final = 0x004
EPOLLERR: Final = 0x008
EPOLLHUP: Final = 0x010
EPOLLRDNORM: Final = 0x040
EPOLLRDBAND: Final = 0x080
EPOLLWRNORM: Final = 0x100
EPOLLWRBAND: Final = 0x200
EPOLLMSG: Final = 0x400
EPOLLRDHUP: Final = 0x2000
EPOLLEXCLUSIVE: Final = 1 << 28
EPOLLWAKEUP: Final = 1 << 29
EPOLLONESHOT: Final = 1 << 30
EPOLLET: Final = 1 << 31

_ALWAYS: Final = EPOLLERR | EPOLLHUP
_DEFAULT_MASK: Final = EPOLLIN | EPOLLPRI | EPOLLOUT


def _never() -> bool:
    return False


class _Entry:
    """One socket registered in one Epoll."""

    __slots__ = ("armed", "epoll", "key", "mask", "sock")

    def __init__(self, epoll: Epoll, sock: Socket, mask: int) -> None:
        self.epoll = epoll
        self.sock = sock
        self.mask = mask
        self.armed = True
        self.key: object = None  # EPOLLET: the socket's progress at the last report

    def wake(self) -> None:
        """Something may have changed for the socket: ask for its mask at the next poll."""
        self.epoll._ready[self] = None


class Epoll:
    """Readiness of ustack sockets of one Context; see the module docstring."""

    def __init__(
        self, sizehint: int = -1, flags: int = 0, *, context: Context | None = None
    ) -> None:
        if context is None:
            from ustack.api.context import current

            context = current()
        self._ctx = context
        self._owner = context.thread_ident
        self._entries: dict[Socket, _Entry] = {}
        self._ready: dict[_Entry, None] = {}
        self._closed = False
        self._polls_seen = -1

    # -- like select.epoll ------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def context(self) -> Context:
        return self._ctx

    def fileno(self) -> int:
        """-1: a ustack Epoll has no file descriptor (it cannot be nested in a kernel epoll)."""
        return -1

    def close(self) -> None:
        if self._closed:
            return
        if _get_ident() != self._owner:
            raise self._wrong_thread()
        self._closed = True
        for entry in list(self._entries.values()):
            entry.sock._remove_watcher(entry)
        self._entries.clear()
        self._ready.clear()

    def register(self, sock: Socket, eventmask: int = _DEFAULT_MASK) -> None:
        """Watch `sock` for `eventmask`; FileExistsError if it is registered already."""
        if _get_ident() != self._owner:
            raise self._wrong_thread()
        self._check_open()
        self._check_sock(sock)
        if sock in self._entries:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        entry = _Entry(self, sock, self._check_mask(eventmask))
        self._entries[sock] = entry
        sock._add_watcher(entry)
        entry.wake()

    def modify(self, sock: Socket, eventmask: int) -> None:
        """Change the interest mask (and re-arm an EPOLLONESHOT entry)."""
        if _get_ident() != self._owner:
            raise self._wrong_thread()
        self._check_open()
        self._check_sock(sock)
        entry = self._entries.get(sock)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        entry.mask = self._check_mask(eventmask)
        entry.armed = True
        entry.key = None
        entry.wake()

    def unregister(self, sock: Socket) -> None:
        if _get_ident() != self._owner:
            raise self._wrong_thread()
        self._check_open()
        self._check_sock(sock)
        entry = self._entries.pop(sock, None)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        self._ready.pop(entry, None)
        sock._remove_watcher(entry)

    def poll(self, timeout: float | None = None, maxevents: int = -1) -> list[tuple[Socket, int]]:
        """Wait until a registered socket is ready or `timeout` seconds pass.

        Returns (socket, events) pairs; [] on timeout.  timeout None or
        negative waits for ever, 0 runs one burst.  At most `maxevents`
        pairs when it is positive.
        """
        if _get_ident() != self._owner:
            raise self._wrong_thread()
        self._check_open()
        if timeout is not None:
            timeout = float(timeout)
            if timeout < 0:
                timeout = None
        if maxevents == 0 or maxevents < -1:
            raise ValueError(f"maxevents must be greater than 0, got {maxevents}")
        ctx = self._ctx
        events: list[tuple[_Entry, int, object]] = []
        if self._scan(events, maxevents):
            if ctx.counters.polls == self._polls_seen:
                # Ready at entry, but nothing ran since the last poll(): one burst first.
                ctx.wait_until(_never, 0)
                self._scan(events, maxevents)
        else:
            ctx.wait_until(lambda: self._scan(events, maxevents), timeout)
        self._polls_seen = ctx.counters.polls
        return self._report(events)

    def __enter__(self) -> Epoll:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._entries)} registered"
        return f"<ustack Epoll {state}, {len(self._ready)} listed>"

    # -- internals ----------------------------------------------------------------

    def _scan(self, events: list[tuple[_Entry, int, object]], maxevents: int) -> bool:
        """Fill `events` with listed entries whose mask meets their interest; any?"""
        events.clear()
        ready = self._ready
        if not ready:
            return False
        for entry in list(ready):
            if not entry.armed:
                del ready[entry]
                continue
            sock = entry.sock
            mask = sock._poll_mask() & (entry.mask | _ALWAYS)
            key = None
            if entry.mask & EPOLLET:
                key = sock._edge_key()
                if key is not None and key == entry.key:
                    mask = 0  # woken, but nothing happened since the last report
            if not mask:
                del ready[entry]
                continue
            events.append((entry, mask, key))
            if len(events) == maxevents:
                break
        return bool(events)

    def _report(self, events: list[tuple[_Entry, int, object]]) -> list[tuple[Socket, int]]:
        ready = self._ready
        out: list[tuple[Socket, int]] = []
        for entry, mask, key in events:
            ready.pop(entry, None)
            entry.key = key
            if entry.mask & EPOLLONESHOT:
                entry.armed = False
            elif not entry.mask & EPOLLET:
                ready[entry] = None  # level-triggered: asked again next time, after the rest
            out.append((entry.sock, mask))
        return out

    def _forget(self, entry: _Entry) -> None:
        """The socket was closed: drop its entry."""
        if self._entries.get(entry.sock) is entry:
            del self._entries[entry.sock]
        self._ready.pop(entry, None)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed epoll object")

    def _wrong_thread(self) -> Exception:
        from ustack.loop import WrongThreadError

        return WrongThreadError(
            f"this ustack Epoll belongs to thread {self._owner}, whose Context it watches, "
            f"and was used from thread {_get_ident()}; use it only in its own thread "
            "(every thread has its own Context: make an Epoll in each thread)"
        )

    def _check_sock(self, sock: Socket) -> None:
        from ustack.api.socket import Socket

        if not isinstance(sock, Socket):
            raise TypeError(
                f"a ustack Epoll watches ustack sockets, not {type(sock).__name__} "
                "(kernel file descriptors cannot be mixed in)"
            )
        if sock._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if sock._ctx is not self._ctx:
            raise ValueError(
                "the socket belongs to another Context (another thread) than this Epoll"
            )

    @staticmethod
    def _check_mask(mask: int) -> int:
        if not isinstance(mask, int) or mask < 0 or mask > 0xFFFFFFFF:
            raise ValueError(f"eventmask must be a 32-bit unsigned int, got {mask!r}")
        if mask & (EPOLLEXCLUSIVE | EPOLLWAKEUP):
            raise ValueError("EPOLLEXCLUSIVE and EPOLLWAKEUP are not supported by ustack")
        return mask


epoll = Epoll
"""select.epoll's spelling."""
