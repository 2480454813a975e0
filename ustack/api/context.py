"""The calling thread's Context, made on first use from the configuration.

A Context (`ustack.loop.Context`) belongs to one thread.  The socket-like
API and `ustack.socket` find theirs here: `current()` returns the calling
thread's Context, opening it on first use with the configuration that
`configure(**config)` set (keywords, then the environment, then defaults;
see `ustack.config`).  `configure` affects only Contexts opened after it.

Threads.  Every thread that uses the API gets its own Context on its own
queue of the topology's multi-queue TAP, and all of them together are
one host, as worker processes are (`ustack.runtime`, ``shared_queue``):
one address, one MAC chosen once per process and topology, neighbours
learnt from IPv4 traffic as well as ARP, one ephemeral port table.  So
threads may each connect out, and may each listen on the same port; the
kernel steers each flow to one queue (to the queue that last sent on it,
else by a hash of the flow), so a connection lives in one thread's
Context, and an active open claims its flow before its SYN leaves (see
`ustack.api.socket`).  What a thread may not do is use another thread's
sockets or Epolls: they raise `ustack.loop.WrongThreadError` before
changing anything.  Hand work between threads with your own queues.

Limits.  The kernel forgets a flow's queue after about 3 s in which its
Context sent nothing on it; the peer's next segment then goes where the
flow hash points.  For a connection the kernel opened (to a listener)
that is the queue that accepted it, but for an active open it may be
another thread's, which answers with a reset: a client connection that
waits more than ~3 s for the peer without sending is lost.  SO_KEEPALIVE
with TCP_KEEPIDLE and TCP_KEEPINTVL of 1 s keeps the flow claimed.
Opening or closing a thread's Context changes the number of queues and
so the hash: do it before traffic starts, not while other threads carry
long-lived connections.  Two threads that ask ARP at the same moment may
have one of them wait for its retry (1 s).

`use(ctx)` makes an existing Context (say, one over a MemoryRing in a
test, or one a program built itself) the calling thread's; `close_current()`
closes the thread's API sockets, lets their FINs and unsent data leave for
a moment, closes the device of a Context opened here and forgets it.

The module also keeps the per-Context state the API needs next to the
Stack (`state(ctx)`): which TCP ports API sockets hold by `bind`.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Final

from ustack.config import Config

if TYPE_CHECKING:
    from ustack.api.socket import Socket
    from ustack.loop import Context

__all__ = ["ApiState", "close_current", "configure", "current", "settings", "state", "use"]

DRAIN_TIMEOUT_S: Final = 1.0
"""How long close_current() lets closing connections deliver their data and FIN."""

_keywords: dict[str, object] = {}
_local = threading.local()
_states: weakref.WeakKeyDictionary[Context, ApiState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()
_atexit_registered = False


class ApiState:
    """What the API keeps per Context: TCP ports held by bound sockets, the open sockets."""

    __slots__ = ("__weakref__", "bound", "sockets")

    def __init__(self) -> None:
        self.bound: dict[int, weakref.WeakSet[Socket]] = {}
        self.sockets: weakref.WeakSet[Socket] = weakref.WeakSet()


def configure(**config: object) -> Config:
    """Set the configuration for Contexts opened from now on (per thread, on first use).

    Keywords: name, addr, gateway, poll, offload, pcap (see ustack.config).
    Each call replaces the keywords of the previous one; the environment
    fills what is not given.  Values are checked now: a bad one raises
    ValueError, an unknown keyword TypeError.  Returns the resolved Config.
    """
    global _keywords
    resolved = Config.resolve(config)
    _keywords = dict(config)
    return resolved


def settings() -> Config:
    """The configuration a Context opened now would get."""
    return Config.resolve(_keywords)


def current() -> Context:
    """The calling thread's Context, opened and started on first use."""
    ctx: Context | None = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _open(settings())
        _local.ctx = ctx
        _local.owned = True
        _register_atexit()
    return ctx


def use(ctx: Context | None) -> None:
    """Make `ctx` the calling thread's Context (None: forget it without closing).

    A Context given here is not closed by close_current(): its maker owns
    its device.  Any Context the thread had before is forgotten, not closed.
    """
    _local.ctx = ctx
    _local.owned = False


def close_current(drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Close the calling thread's API sockets and, if it was opened here, its Context.

    Closing sockets queues their FINs (or RSTs); the network is then driven
    for up to `drain_timeout` seconds so queued data and FINs can leave and
    be acknowledged, as the kernel would do after a process closes its
    sockets.  Nothing happens if the thread has no Context.
    """
    ctx: Context | None = getattr(_local, "ctx", None)
    if ctx is None:
        return
    owned: bool = getattr(_local, "owned", False)
    _local.ctx = None
    _local.owned = False
    try:
        st = _states.get(ctx)
        if st is not None:
            for sock in list(st.sockets):
                sock.close()
        if drain_timeout > 0:
            ctx.wait_until(lambda: _drained(ctx), drain_timeout)
    finally:
        with _states_lock:
            _states.pop(ctx, None)
        if owned:
            from ustack.runtime import close_context

            close_context(ctx)


def state(ctx: Context) -> ApiState:
    """The API's state kept for `ctx` (made on first use)."""
    st = _states.get(ctx)
    if st is None:
        with _states_lock:
            st = _states.get(ctx)
            if st is None:
                st = _states[ctx] = ApiState()
    return st


def _drained(ctx: Context) -> bool:
    """No connection has unacknowledged data or a FIN still to deliver."""
    from ustack.tcp.tcb import State

    closing = (State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK)
    return not any(c.state in closing or c.tcb.unacked_bytes for c in ctx.stack.tcp.conns.values())


def _open(cfg: Config) -> Context:
    import inspect

    from ustack.runtime import open_context

    kwargs = cfg.context_kwargs()
    if "offload" in kwargs and "offload" not in inspect.signature(open_context).parameters:
        raise ValueError(
            "offload=True was asked for, but this build's ustack.runtime.open_context "
            "cannot open the TAP with offloads"
        )
    # Every thread's Context is one more queue of this process's host: one
    # MAC, neighbours learnt from IPv4 too, one ephemeral port table.
    ctx = open_context(**kwargs, shared_queue=True)  # type: ignore[arg-type]  # checked by Config
    ctx.start()
    return ctx


def _register_atexit() -> None:
    global _atexit_registered
    if _atexit_registered or threading.current_thread() is not threading.main_thread():
        return
    _atexit_registered = True
    atexit.register(_close_at_exit)


def _close_at_exit() -> None:
    # The main thread's Context: let closing connections finish and flush the pcap.
    with contextlib.suppress(Exception):  # nothing sensible to do at interpreter exit
        close_current(drain_timeout=0.5)
