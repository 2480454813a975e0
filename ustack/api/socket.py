"""Socket-like objects for TCP and UDP over a Context, with Python's `socket` semantics.

`Socket` has the methods, exceptions and blocking behaviour of
`socket.socket` for AF_INET stream and datagram sockets, so code written
for kernel sockets runs on ustack unchanged (`ustack.socket` is the
module-like namespace that builds them).  What differs is stated here.

Theory of operation.  A Socket wraps what the Stack offers: a
`TcpConnection`, a `TcpListener` or a `UdpSocket`.  It never touches the
wire itself.  Every call that may block waits in `Context.wait_until` with
a predicate over that object's state, which runs receive bursts, timers
and output until the predicate holds or the socket's timeout passes
(TimeoutError "timed out", as CPython raises).  A non-blocking socket
(timeout 0) runs exactly one burst before giving up with BlockingIOError
(EAGAIN), so a loop of non-blocking calls still moves the network.  The
network moves only while some call on the thread's Context waits: a
blocking call, `Epoll.poll`, or `ctx.wait_until`.  `send` only queues
(the data leaves at the next wait, batched with the rest of the burst);
`close` flushes at once.

Errors follow Linux: a connection reset after data arrived returns that
data first, then raises ConnectionResetError once; later recv() calls
return b"" and send() raises BrokenPipeError (the error, like the kernel's
sk_err, is reported once; SO_ERROR reads and clears it).  recv at end of
stream returns b"".  send on an unconnected stream socket raises
BrokenPipeError, recv ENOTCONN.  connect fails with ConnectionRefusedError,
TimeoutError (ETIMEDOUT after the SYN retries, or "timed out" at the
socket's timeout) or OSError(ENETUNREACH); connect_ex returns those errno
values (EAGAIN for a timeout, EINPROGRESS when non-blocking, as CPython).
On a timeout a blocking connect abandons the attempt (the kernel would
keep trying in the background).

Options: SO_REUSEADDR, SO_KEEPALIVE, SO_RCVBUF, SO_SNDBUF, SO_LINGER,
SO_BROADCAST (stored), SO_ERROR, SO_TYPE and SO_ACCEPTCONN (read only);
TCP_NODELAY, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT,
TCP_MAXSEG (read only) and TCP_INFO (read only: Linux's struct tcp_info
layout; `tcp_info()` gives the full ss-like dict).  SO_RCVBUF and
SO_SNDBUF size the buffers of connections made after they are set (set
them before connect or listen, as for window scaling on Linux) and read
back as set, not doubled.  Other options raise OSError(ENOPROTOOPT).

A Socket belongs to the Context (so the thread) it was made on.  It has no
file descriptor: fileno() returns -1, so it cannot go into select() or a
kernel epoll; use `ustack.api.epoll.Epoll`.  MSG_PEEK and out-of-band data
are not supported.

Threads.  A socket is made in the thread of its Context (a Context given
with ``context=`` from another thread raises).  Only the owning thread may
call what touches the connection or the Context: bind, listen, accept,
connect(_ex), send, sendall, sendto, sendfile, recv, recv_into,
recvfrom(_into), shutdown, close, setsockopt, getsockopt (SO_ERROR clears
the error) and makefile.  From another thread they raise
`ustack.loop.WrongThreadError` (a RuntimeError, not an OSError) before
anything changes, so the owner can go on using the socket; the check is
one compare with `threading.get_ident()`.  Other threads may read
`family`, `type`, `proto`, getsockname(), getpeername(), repr() and the
timeout (a snapshot, taken without a lock), and may set the timeout,
which the owner's next call uses.  Closing an already closed socket does
nothing from any thread.  Other threads open their own sockets on their
own Contexts (`ustack.api.context`).  Such a Context shares the TAP with
the other threads' Contexts, so an active open there sends a RST for the
connection it is about to open just before the SYN, which makes the
kernel steer the replies to this thread's queue
(`ustack.stack.tcp.TcpLayer._claim_flow`; counted as
``tcp_out_flow_claims``).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import socket as _stdsocket
import struct
from collections.abc import Callable
from threading import get_ident as _get_ident
from typing import TYPE_CHECKING, Any, Final

from ustack.api import context as _context
from ustack.api.epoll import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EPOLLRDHUP,
    EPOLLRDNORM,
    EPOLLWRNORM,
)
from ustack.loop import WrongThreadError
from ustack.stack.tcp import TcpConnection, TcpListener
from ustack.stack.udp import EPHEMERAL_HIGH, EPHEMERAL_LOW, UdpSocket
from ustack.tcp.tcb import State, TcpConfig
from ustack.wire.ipv4 import ip_from_str, ip_to_str

if TYPE_CHECKING:
    from ustack.api.epoll import _Entry
    from ustack.loop import Context
    from ustack.wire.types import Buffer, WritableBuffer

__all__ = ["Socket", "getdefaulttimeout", "setdefaulttimeout"]

AF_INET: Final = _stdsocket.AF_INET
AF_INET6: Final = _stdsocket.AF_INET6
SOCK_STREAM: Final = _stdsocket.SOCK_STREAM
SOCK_DGRAM: Final = _stdsocket.SOCK_DGRAM
SOCK_NONBLOCK: Final = _stdsocket.SOCK_NONBLOCK
SOCK_CLOEXEC: Final = _stdsocket.SOCK_CLOEXEC
IPPROTO_TCP: Final = _stdsocket.IPPROTO_TCP
IPPROTO_UDP: Final = _stdsocket.IPPROTO_UDP
SOL_SOCKET: Final = _stdsocket.SOL_SOCKET
SHUT_RD: Final = _stdsocket.SHUT_RD
SHUT_WR: Final = _stdsocket.SHUT_WR
SHUT_RDWR: Final = _stdsocket.SHUT_RDWR
MSG_DONTWAIT: Final = _stdsocket.MSG_DONTWAIT
MSG_NOSIGNAL: Final = _stdsocket.MSG_NOSIGNAL
MSG_PEEK: Final = _stdsocket.MSG_PEEK

_SO_REUSEADDR: Final = _stdsocket.SO_REUSEADDR
_SO_KEEPALIVE: Final = _stdsocket.SO_KEEPALIVE
_SO_RCVBUF: Final = _stdsocket.SO_RCVBUF
_SO_SNDBUF: Final = _stdsocket.SO_SNDBUF
_SO_LINGER: Final = _stdsocket.SO_LINGER
_SO_ERROR: Final = _stdsocket.SO_ERROR
_SO_TYPE: Final = _stdsocket.SO_TYPE
_SO_ACCEPTCONN: Final = _stdsocket.SO_ACCEPTCONN
_SO_BROADCAST: Final = _stdsocket.SO_BROADCAST
_TCP_NODELAY: Final = _stdsocket.TCP_NODELAY
_TCP_MAXSEG: Final = _stdsocket.TCP_MAXSEG
_TCP_KEEPIDLE: Final = _stdsocket.TCP_KEEPIDLE
_TCP_KEEPINTVL: Final = _stdsocket.TCP_KEEPINTVL
_TCP_KEEPCNT: Final = _stdsocket.TCP_KEEPCNT
_TCP_INFO: Final = _stdsocket.TCP_INFO
_TCP_USER_TIMEOUT: Final = _stdsocket.TCP_USER_TIMEOUT

_MIN_RCVBUF: Final = 2304  # Linux SOCK_MIN_RCVBUF
_MIN_SNDBUF: Final = 4608  # Linux SOCK_MIN_SNDBUF
_MAX_BUF: Final = 1 << 30
_LINGER: Final = struct.Struct("ii")
_INT: Final = struct.Struct("i")

_EAGAIN_MSG: Final = os.strerror(errno.EAGAIN)

_CLOSED: Final = State.CLOSED
_ESTABLISHED: Final = State.ESTABLISHED
_SYN_SENT: Final = State.SYN_SENT
_SYN_RECEIVED: Final = State.SYN_RECEIVED
_CONNECTING: Final = frozenset({State.SYN_SENT, State.SYN_RECEIVED})
# Our FIN has been queued or sent: the write side is shut.
_SENT_FIN: Final = frozenset(
    {State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING, State.TIME_WAIT, State.LAST_ACK}
)
# The peer's FIN has been processed: the read side is at its end.
_PEER_FIN: Final = frozenset({State.CLOSE_WAIT, State.LAST_ACK, State.CLOSING, State.TIME_WAIT})
# The connection may still carry our data.
_SEND_STATES: Final = frozenset(
    {State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT}
)
# Our FIN was acknowledged (or the connection is gone): what SO_LINGER waits for.
_LINGER_DONE: Final = frozenset({State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED})

_default_timeout: float | None = None


def getdefaulttimeout() -> float | None:
    """The timeout new ustack sockets start with (None: blocking)."""
    return _default_timeout


def setdefaulttimeout(timeout: float | None) -> None:
    global _default_timeout
    _default_timeout = _check_timeout(timeout)


def _check_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    t = float(value)
    if t < 0 or t != t:
        raise ValueError("Timeout value out of range")
    return t


def _oserror(code: int) -> OSError:
    """OSError(code) with the kernel's message; the constructor picks the subclass."""
    return OSError(code, os.strerror(code))


def _wrong_thread(sock: Socket) -> WrongThreadError:
    return WrongThreadError(
        f"this ustack socket belongs to thread {sock._owner}, whose Context made it, and "
        f"was used from thread {_get_ident()}; use it only in its own thread (every thread "
        "has its own Context: open the sockets a thread needs in that thread)"
    )


def _bytes_view(data: Buffer) -> memoryview:
    mv = memoryview(data)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


def _always() -> bool:
    return True


@dataclasses.dataclass
class _Options:
    """Socket options a Socket keeps; TCP ones become a TcpConfig."""

    reuseaddr: bool = False
    broadcast: bool = False
    keepalive: bool = False
    keepidle_s: int | None = None
    keepintvl_s: int | None = None
    keepcnt: int | None = None
    nodelay: bool = False
    user_timeout_ms: int = 0
    rcvbuf: int | None = None
    sndbuf: int | None = None
    linger: tuple[int, int] | None = None  # (l_onoff, l_linger) when set

    def tcp_config(self, base: TcpConfig) -> TcpConfig:
        changes = self.live_changes(base)
        if self.rcvbuf is not None and self.rcvbuf != base.rcvbuf:
            changes["rcvbuf"] = self.rcvbuf
        if self.sndbuf is not None and self.sndbuf != base.sndbuf:
            changes["sndbuf"] = self.sndbuf
        return dataclasses.replace(base, **changes) if changes else base

    def live_changes(self, base: TcpConfig) -> dict[str, Any]:
        """The settings that may change on an open connection and differ from `base`."""
        want: dict[str, Any] = {
            "nodelay": self.nodelay,
            "keepalive": self.keepalive,
            "user_timeout_us": self.user_timeout_ms * 1000 if self.user_timeout_ms else None,
        }
        if self.keepidle_s is not None:
            want["keepalive_idle_us"] = self.keepidle_s * 1_000_000
        if self.keepintvl_s is not None:
            want["keepalive_interval_us"] = self.keepintvl_s * 1_000_000
        if self.keepcnt is not None:
            want["keepalive_count"] = self.keepcnt
        return {k: v for k, v in want.items() if getattr(base, k) != v}


# Linux's TCP state numbers (include/net/tcp_states.h) for TCP_INFO.
_LINUX_STATE: Final = {
    State.ESTABLISHED: 1,
    State.SYN_SENT: 2,
    State.SYN_RECEIVED: 3,
    State.FIN_WAIT_1: 4,
    State.FIN_WAIT_2: 5,
    State.TIME_WAIT: 6,
    State.CLOSED: 7,
    State.CLOSE_WAIT: 8,
    State.LAST_ACK: 9,
    State.LISTEN: 10,
    State.CLOSING: 11,
}
# struct tcp_info up to tcpi_snd_wnd (Linux 5.4+ layout, 232 bytes, native order).
TCP_INFO_STRUCT: Final = struct.Struct("=8B24I4Q2I4IQ3Q2I2Q2I2I")


class Socket:
    """A TCP or UDP socket on a ustack Context; see the module docstring.

    `Socket(family=AF_INET, type=SOCK_STREAM, proto=0, fileno=None, *, context=None)`
    uses the calling thread's Context (ustack.api.context.current()) unless
    `context` is given.
    """

    __slots__ = (
        "__weakref__",
        "_bound_any",
        "_closed",
        "_conn",
        "_ctx",
        "_err_reported",
        "_io_refs",
        "_listener",
        "_local_port",
        "_opts",
        "_owner",
        "_peer",
        "_proto",
        "_real_closed",
        "_shut_rd",
        "_shut_wr",
        "_stream",
        "_timeout",
        "_udp",
        "_watchers",
    )

    _ctx: Context
    _owner: int
    _stream: bool
    _proto: int
    _opts: _Options
    _timeout: float | None
    _closed: bool
    _real_closed: bool
    _io_refs: int
    _conn: TcpConnection | None
    _listener: TcpListener | None
    _udp: UdpSocket | None
    _local_port: int
    _bound_any: bool
    _peer: tuple[int, int] | None
    _shut_rd: bool
    _shut_wr: bool
    _err_reported: bool
    _watchers: list[_Entry]

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        context: Context | None = None,
    ) -> None:
        if fileno is not None:
            raise OSError(
                errno.EBADF, "ustack sockets have no file descriptor: fileno= is not supported"
            )
        if family == -1:
            family = AF_INET
        if type == -1:
            type = SOCK_STREAM
        if family != AF_INET:
            raise OSError(
                errno.EAFNOSUPPORT,
                f"{os.strerror(errno.EAFNOSUPPORT)}: ustack speaks IPv4 (AF_INET) only",
            )
        kind = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)
        if proto == -1:
            proto = 0
        if kind == SOCK_STREAM:
            stream = True
            ok_proto = (0, IPPROTO_TCP)
        elif kind == SOCK_DGRAM:
            stream = False
            ok_proto = (0, IPPROTO_UDP)
        else:
            raise OSError(
                errno.ESOCKTNOSUPPORT,
                f"{os.strerror(errno.ESOCKTNOSUPPORT)}: ustack has SOCK_STREAM and SOCK_DGRAM",
            )
        if proto not in ok_proto:
            raise OSError(errno.EPROTONOSUPPORT, os.strerror(errno.EPROTONOSUPPORT))
        ctx = _context.current() if context is None else context
        if ctx.thread_ident != _get_ident():  # another thread's Context
            self._owner = ctx.thread_ident
            raise _wrong_thread(self)
        self._setup(ctx, stream, proto, _Options())
        if type & SOCK_NONBLOCK:
            self._timeout = 0.0
        if not stream:
            self._udp = ctx.stack.udp_socket()

    def _setup(self, ctx: Context, stream: bool, proto: int, opts: _Options) -> None:
        self._ctx = ctx
        self._owner = ctx.thread_ident
        self._stream = stream
        self._proto = proto
        self._opts = opts
        self._timeout = _default_timeout
        self._closed = False
        self._real_closed = False
        self._io_refs = 0
        self._conn = None
        self._listener = None
        self._udp = None
        self._local_port = 0
        self._bound_any = True
        self._peer = None  # UDP default destination
        self._shut_rd = False
        self._shut_wr = False
        self._err_reported = False
        self._watchers = []
        _context.state(ctx).sockets.add(self)

    @classmethod
    def _accepted(cls, parent: Socket, conn: TcpConnection) -> Socket:
        sock = cls.__new__(cls)
        sock._setup(parent._ctx, True, parent._proto, dataclasses.replace(parent._opts))
        sock._conn = conn
        sock._local_port = conn.local[1]
        sock._bound_any = False
        conn.user = sock
        return sock

    # -- properties -------------------------------------------------------------

    @property
    def family(self) -> _stdsocket.AddressFamily:
        return AF_INET

    @property
    def type(self) -> _stdsocket.SocketKind:
        return SOCK_STREAM if self._stream else SOCK_DGRAM

    @property
    def proto(self) -> int:
        return self._proto

    @property
    def context(self) -> Context:
        return self._ctx

    @property
    def connection(self) -> TcpConnection | None:
        """The TCP connection under this socket, if any (for statistics and tests)."""
        return self._conn

    def fileno(self) -> int:
        """-1 always: a ustack socket has no kernel file descriptor (use Epoll, not select)."""
        return -1

    def __repr__(self) -> str:
        kind = "SOCK_STREAM" if self._stream else "SOCK_DGRAM"
        if self._closed:
            return f"<ustack.socket [closed] family=AF_INET, type={kind}>"
        parts = [f"<ustack.socket family=AF_INET, type={kind}"]
        try:
            parts.append(f"laddr={self.getsockname()}")
            parts.append(f"raddr={self.getpeername()}")
        except OSError:
            pass
        return ", ".join(parts) + ">"

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- timeouts -----------------------------------------------------------------

    def settimeout(self, value: float | None) -> None:
        self._timeout = _check_timeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # -- addresses ----------------------------------------------------------------

    def bind(self, address: tuple[str, int]) -> None:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._check_open()
        ip, port = _parse_address(address, "bind")
        stack = self._ctx.stack
        if ip not in (0, stack.iface.addr):
            raise OSError(
                errno.EADDRNOTAVAIL,
                f"{os.strerror(errno.EADDRNOTAVAIL)}: {ip_to_str(ip)} is not this stack's "
                f"address ({ip_to_str(stack.iface.addr)})",
            )
        if self._stream:
            if self._local_port or self._conn is not None or self._listener is not None:
                raise _oserror(errno.EINVAL)
            self._local_port = self._claim_port(port)
        else:
            udp = self._udp_sock()
            if udp.port:
                raise _oserror(errno.EINVAL)
            udp.bind(("", port))
        self._bound_any = ip == 0

    def getsockname(self) -> tuple[str, int]:
        self._check_open()
        our = ip_to_str(self._ctx.stack.iface.addr)
        if self._stream:
            conn = self._conn
            if conn is not None:
                return (our, conn.local[1])
            port = self._local_port
        else:
            port = self._udp_sock().port
        if not port:
            return ("0.0.0.0", 0)
        return ("0.0.0.0" if self._bound_any else our, port)

    def getpeername(self) -> tuple[str, int]:
        self._check_open()
        if self._stream:
            conn = self._conn
            if conn is None or conn.state in (_SYN_SENT, _CLOSED):
                raise _oserror(errno.ENOTCONN)
            ip, port = conn.remote
        else:
            if self._peer is None:
                raise _oserror(errno.ENOTCONN)
            ip, port = self._peer
        return (ip_to_str(ip), port)

    def _claim_port(self, port: int) -> int:
        """A TCP port for this socket: `port` if free for it, or an ephemeral one (port 0)."""
        tcp = self._ctx.stack.tcp
        st = _context.state(self._ctx)
        reuse = self._opts.reuseaddr
        if port == 0:
            used = {c.local[1] for c in tcp.conns.values()}
            used.update(tcp.listeners)
            used.update(p for p, socks in st.bound.items() if socks)
            start = int.from_bytes(os.urandom(2), "big")
            span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
            for i in range(span):
                p = EPHEMERAL_LOW + (start + i) % span
                if p not in used:
                    port = p
                    break
            else:
                raise OSError(errno.EADDRINUSE, "no ephemeral TCP port is free")
        else:
            if port in tcp.listeners:
                raise _oserror(errno.EADDRINUSE)
            holders = st.bound.get(port)
            if holders and any(not (reuse and s._opts.reuseaddr) for s in holders):
                raise _oserror(errno.EADDRINUSE)
            # Without SO_REUSEADDR a connection still using the port (TIME-WAIT
            # included) keeps it, as on Linux.
            if not reuse and any(c.local[1] == port for c in tcp.conns.values()):
                raise _oserror(errno.EADDRINUSE)
        st.bound.setdefault(port, _weakset()).add(self)
        return port

    def _release_port(self) -> None:
        port = self._local_port
        if port:
            holders = _context.state(self._ctx).bound.get(port)
            if holders is not None:
                holders.discard(self)

    # -- TCP: passive open --------------------------------------------------------

    def listen(self, backlog: int = min(_stdsocket.SOMAXCONN, 128)) -> None:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._check_open()
        if not self._stream:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        if self._conn is not None:
            raise _oserror(errno.EINVAL)
        backlog = max(1, int(backlog))
        if self._listener is not None:
            self._listener.core.backlog = backlog
            return
        if not self._local_port:
            self._local_port = self._claim_port(0)
        tcp = self._ctx.stack.tcp
        self._listener = tcp.listen(
            self._local_port, backlog=backlog, config=self._opts.tcp_config(tcp.config)
        )
        self._listener.user = self
        self._arm()

    def accept(self) -> tuple[Socket, tuple[str, int]]:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._check_open()
        listener = self._listener
        if listener is None:
            raise _oserror(errno.EINVAL)
        while not listener.ready:
            self._wait(lambda: listener.ready > 0 or listener.closed, self._timeout)
            if listener.closed:
                raise _oserror(errno.EINVAL)
        conn = listener.accept()
        assert conn is not None
        sock = Socket._accepted(self, conn)
        # As CPython: the new socket gets the default timeout, but a listening
        # socket with a timeout hands out blocking sockets when that is None.
        if _default_timeout is None and self._timeout:
            sock._timeout = None
        ip, port = conn.remote
        return sock, (ip_to_str(ip), port)

    # -- active open ----------------------------------------------------------------

    def connect(self, address: tuple[str, int]) -> None:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._check_open()
        if not self._stream:
            self._connect_udp(address)
            return
        if self._listener is not None:
            raise _oserror(errno.EINVAL)
        conn = self._conn
        if conn is not None:
            if conn.state in _CONNECTING:
                if self._timeout == 0.0:
                    raise BlockingIOError(errno.EALREADY, os.strerror(errno.EALREADY))
                self._finish_connect(conn)
                return
            if conn.state is not _CLOSED or conn.error is None:
                raise _oserror(errno.EISCONN)
            # A failed attempt: report its error once, else start again.
            if not self._err_reported:
                self._err_reported = True
                raise _oserror(conn.error)
            self._drop_conn(conn)
            self._err_reported = False
        ip, port = _parse_address(address, "connect")
        if port == 0:
            raise _oserror(errno.ECONNREFUSED)
        stack = self._ctx.stack
        if ip == stack.iface.addr or ip == 0:
            raise OSError(
                errno.ENETUNREACH, "ustack has no loopback: it cannot connect to its own address"
            )
        if stack.iface.next_hop(ip) is None:
            raise OSError(
                errno.ENETUNREACH,
                f"{os.strerror(errno.ENETUNREACH)}: {ip_to_str(ip)} is off-link and no gateway "
                "is configured",
            )
        tcp = stack.tcp
        local = self._local_port or None
        conn = tcp.connect(ip, port, local_port=local, config=self._opts.tcp_config(tcp.config))
        conn.user = self
        self._conn = conn
        if not self._local_port:
            self._bound_any = False
        self._arm()
        self._wake()
        if self._timeout == 0.0:
            self._ctx.wait_until(_always, 0)  # the SYN leaves now
            raise BlockingIOError(errno.EINPROGRESS, os.strerror(errno.EINPROGRESS))
        self._finish_connect(conn)

    def _finish_connect(self, conn: TcpConnection) -> None:
        if not self._ctx.wait_until(lambda: conn.state not in _CONNECTING, self._timeout):
            conn.abort()
            self._drop_conn(conn)
            self._ctx.wait_until(_always, 0)
            raise TimeoutError("timed out")
        if conn.error is not None:
            self._err_reported = True
            raise _oserror(conn.error)

    def _drop_conn(self, conn: TcpConnection) -> None:
        conn.on_event = None
        conn.user = None
        self._conn = None

    def connect_ex(self, address: tuple[str, int]) -> int:
        """connect(), returning 0 or an errno (EAGAIN on timeout, as CPython) instead of raising.

        Address errors (gaierror, TypeError, OverflowError) still raise.
        """
        try:
            self.connect(address)
        except _stdsocket.gaierror:
            raise
        except TimeoutError as exc:
            return exc.errno if exc.errno is not None else errno.EAGAIN
        except OSError as exc:
            if exc.errno is None:
                raise
            return exc.errno
        return 0

    def _connect_udp(self, address: tuple[str, int]) -> None:
        ip, port = _parse_address(address, "connect")
        if port == 0:
            raise _oserror(errno.EINVAL)
        if self._ctx.stack.iface.next_hop(ip) is None:
            raise _oserror(errno.ENETUNREACH)
        udp = self._udp_sock()
        if not udp.port:
            udp.bind(("", 0))
        self._peer = (ip, port)

    # -- data: TCP and UDP ------------------------------------------------------------

    def send(self, data: Buffer, flags: int = 0) -> int:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        nonblock = self._flags(flags)
        if not self._stream:
            if self._peer is None:
                raise _oserror(errno.EDESTADDRREQ)
            return self._sendto(data, self._peer)
        conn = self._send_conn()
        mv = _bytes_view(data)
        if not len(mv):
            return 0
        while True:
            n = conn.send(mv)
            if n:
                return n
            self._wait_send(conn, self._timeout, nonblock)
            self._check_send(conn)

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        nonblock = self._flags(flags)
        if not self._stream:
            self.send(data, flags)
            return
        conn = self._send_conn()
        mv = _bytes_view(data)
        total = len(mv)
        off = conn.send(mv)
        if off >= total:
            return
        ctx = self._ctx
        timeout = self._timeout
        deadline = None if timeout is None else ctx.clock() + int(timeout * 1_000_000)
        while off < total:
            left: float | None = None
            if deadline is not None and not nonblock and timeout != 0.0:
                left = (deadline - ctx.clock()) / 1_000_000
                if left <= 0:
                    raise TimeoutError("timed out")
            self._wait_send(conn, left, nonblock)
            self._check_send(conn)
            off += conn.send(mv[off:])

    def sendto(self, data: Buffer, flags_or_address: Any, address: Any = None) -> int:
        """sendto(data, address) or sendto(data, flags, address)."""
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        if address is None:
            flags, addr = 0, flags_or_address
        else:
            flags, addr = flags_or_address, address
        self._flags(flags)
        if self._stream:
            # Linux ignores the address on a connected stream socket.
            return self.send(data, flags)
        self._check_open()
        ip, port = _parse_address(addr, "sendto", broadcast=True)
        if port == 0:
            raise _oserror(errno.EINVAL)
        return self._sendto(data, (ip, port))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        nonblock = self._flags(flags)
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if not self._stream:
            return self._recv_datagram(bufsize, nonblock)[0]
        conn = self._recv_conn()
        while True:
            if conn.readable_bytes:
                return conn.recv(bufsize)
            if self._at_end(conn):
                return b""
            self._wait_recv(conn, nonblock)

    def recv_into(self, buffer: WritableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        """Copy received bytes straight into `buffer` (no intermediate bytes object)."""
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        nonblock = self._flags(flags)
        view = _into_view(buffer, nbytes, "recv_into")
        if not self._stream:
            data, _ = self._recv_datagram(len(view), nonblock)
            view[: len(data)] = data
            return len(data)
        conn = self._recv_conn()
        while True:
            if conn.readable_bytes:
                return conn.recv_into(view)
            if self._at_end(conn):
                return 0
            self._wait_recv(conn, nonblock)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int] | None]:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        if self._stream:
            return self.recv(bufsize, flags), None
        return self._recv_datagram(bufsize, self._flags(flags))

    def recvfrom_into(
        self, buffer: WritableBuffer, nbytes: int = 0, flags: int = 0
    ) -> tuple[int, tuple[str, int] | None]:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        if self._stream:
            return self.recv_into(buffer, nbytes, flags), None
        nonblock = self._flags(flags)
        view = _into_view(buffer, nbytes, "recvfrom_into")
        data, addr = self._recv_datagram(len(view), nonblock)
        view[: len(data)] = data
        return len(data), addr

    # -- ending ---------------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._check_open()
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise _oserror(errno.EINVAL)
        if self._stream:
            conn = self._conn
            if conn is None or conn.state is _SYN_SENT:
                raise _oserror(errno.ENOTCONN)
            if how != SHUT_WR:
                self._shut_rd = True
            if how != SHUT_RD:
                self._shut_wr = True
                conn.shutdown_write()
        else:
            if self._peer is None:
                raise _oserror(errno.ENOTCONN)
            self._shut_rd = self._shut_rd or how != SHUT_WR
            self._shut_wr = self._shut_wr or how != SHUT_RD
        self._wake()

    def close(self) -> None:
        """Close: FIN after queued data (RST if unread data remains, or SO_LINGER 0).

        With SO_LINGER on and a positive time, a blocking socket waits up to
        that long for its data and FIN to be acknowledged.  Queued output is
        flushed before returning.  Closing twice does nothing.
        """
        if self._closed:
            return
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        if self._real_closed:
            return
        self._real_closed = True
        for entry in list(self._watchers):
            entry.epoll._forget(entry)
        self._watchers.clear()
        self._release_port()
        _context.state(self._ctx).sockets.discard(self)
        ctx = self._ctx
        listener = self._listener
        if listener is not None:
            listener.on_event = None
            listener.user = None
            listener.close()
        conn = self._conn
        if conn is not None:
            conn.on_event = None
            conn.user = None
            linger = self._opts.linger
            if linger is not None and linger[0] and linger[1] == 0:
                conn.abort()
            else:
                conn.close()
                if linger is not None and linger[0] and self._timeout != 0.0:
                    ctx.wait_until(lambda: conn.state in _LINGER_DONE, float(linger[1]))
        udp = self._udp
        if udp is not None:
            udp.on_readable = None
            udp.close()
        if listener is not None or conn is not None:
            ctx.wait_until(_always, 0)  # what close() queued leaves now

    def detach(self) -> int:
        raise OSError(errno.EOPNOTSUPP, "ustack sockets have no file descriptor to detach")

    def dup(self) -> Socket:
        raise OSError(errno.EOPNOTSUPP, "ustack sockets cannot be duplicated")

    # -- options ------------------------------------------------------------------------

    def setsockopt(
        self, level: int, optname: int, value: int | Buffer | None, optlen: int | None = None
    ) -> None:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._check_open()
        o = self._opts
        if level == SOL_SOCKET:
            if optname == _SO_LINGER:
                if isinstance(value, int) or value is None:
                    raise _oserror(errno.EINVAL)
                raw = bytes(value)
                if len(raw) < _LINGER.size:
                    raise _oserror(errno.EINVAL)
                onoff, secs = _LINGER.unpack_from(raw)
                o.linger = (1 if onoff else 0, max(0, secs))
                return
            v = _int_value(value)
            if optname == _SO_REUSEADDR:
                o.reuseaddr = bool(v)
            elif optname == _SO_BROADCAST:
                o.broadcast = bool(v)
            elif optname == _SO_KEEPALIVE:
                o.keepalive = bool(v)  # stored on UDP, where it does nothing (as on Linux)
                if self._stream:
                    self._apply_live()
            elif optname == _SO_RCVBUF:
                o.rcvbuf = min(max(v, _MIN_RCVBUF), _MAX_BUF)
                if self._udp is not None:
                    self._udp.rcvbuf = o.rcvbuf
                self._apply_listener()
            elif optname == _SO_SNDBUF:
                o.sndbuf = min(max(v, _MIN_SNDBUF), _MAX_BUF)
                self._apply_listener()
            else:
                raise _oserror(errno.ENOPROTOOPT)
            return
        if level == IPPROTO_TCP and self._stream:
            v = _int_value(value)
            if optname == _TCP_NODELAY:
                o.nodelay = bool(v)
            elif optname in (_TCP_KEEPIDLE, _TCP_KEEPINTVL, _TCP_KEEPCNT):
                if not 1 <= v <= (127 if optname == _TCP_KEEPCNT else 32767):
                    raise _oserror(errno.EINVAL)
                if optname == _TCP_KEEPIDLE:
                    o.keepidle_s = v
                elif optname == _TCP_KEEPINTVL:
                    o.keepintvl_s = v
                else:
                    o.keepcnt = v
            elif optname == _TCP_USER_TIMEOUT:
                if v < 0:
                    raise _oserror(errno.EINVAL)
                o.user_timeout_ms = v
            else:
                raise _oserror(errno.ENOPROTOOPT)
            self._apply_live()
            return
        raise _oserror(errno.ENOPROTOOPT)

    def getsockopt(self, level: int, optname: int, buflen: int = 0) -> int | bytes:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._check_open()
        if level == SOL_SOCKET and optname == _SO_LINGER:
            onoff, secs = self._opts.linger or (0, 0)
            return _LINGER.pack(onoff, secs)[:buflen] if buflen else onoff
        if level == IPPROTO_TCP and optname == _TCP_INFO and self._stream:
            raw = self._tcp_info_bytes()
            return raw[:buflen] if buflen else _INT.unpack_from(raw)[0]
        v = self._int_option(level, optname)
        if buflen:
            return _INT.pack(v)[:buflen]
        return v

    def _int_option(self, level: int, optname: int) -> int:
        o = self._opts
        if level == SOL_SOCKET:
            if optname == _SO_REUSEADDR:
                return int(o.reuseaddr)
            if optname == _SO_BROADCAST:
                return int(o.broadcast)
            if optname == _SO_KEEPALIVE:
                return int(o.keepalive)
            if optname == _SO_TYPE:
                return int(self.type)
            if optname == _SO_ACCEPTCONN:
                return int(self._listener is not None)
            if optname == _SO_ERROR:
                conn = self._conn
                if conn is not None and conn.error is not None and not self._err_reported:
                    self._err_reported = True
                    return conn.error
                return 0
            if optname == _SO_RCVBUF:
                if o.rcvbuf is not None:
                    return o.rcvbuf
                if self._udp is not None:
                    return self._udp.rcvbuf
                return self._config().rcvbuf
            if optname == _SO_SNDBUF:
                return o.sndbuf if o.sndbuf is not None else self._config().sndbuf
        elif level == IPPROTO_TCP and self._stream:
            cfg = self._config()
            if optname == _TCP_NODELAY:
                return int(o.nodelay)
            if optname == _TCP_KEEPIDLE:
                return cfg.keepalive_idle_us // 1_000_000
            if optname == _TCP_KEEPINTVL:
                return cfg.keepalive_interval_us // 1_000_000
            if optname == _TCP_KEEPCNT:
                return cfg.keepalive_count
            if optname == _TCP_USER_TIMEOUT:
                return o.user_timeout_ms
            if optname == _TCP_MAXSEG:
                conn = self._conn
                return conn.tcb.smss if conn is not None else cfg.effective_mss - 12
        raise _oserror(errno.ENOPROTOOPT)

    def tcp_info(self) -> dict[str, object]:
        """The connection's `ss -ti`-like statistics (TcpConnection.stats()); {} if none."""
        self._check_open()
        conn = self._conn
        if conn is None:
            return {"state": "LISTEN"} if self._listener is not None else {}
        return conn.stats()

    def _tcp_info_bytes(self) -> bytes:
        conn = self._conn
        if conn is None:
            state = 10 if self._listener is not None else 7
            return TCP_INFO_STRUCT.pack(state, *([0] * (len(_TCP_INFO_FIELDS) - 1)))
        tcb = conn.tcb
        s = conn.stats()

        def num(key: str) -> int:
            v = s.get(key)
            return v if isinstance(v, int) else 0

        smss = max(tcb.smss, 1)
        options = (
            (1 if s.get("timestamps") else 0)
            | (2 if s.get("sack") else 0)
            | (4 if tcb.snd_wscale or tcb.rcv_wscale else 0)
        )
        cfg = tcb.config
        vals = {
            "state": _LINUX_STATE[tcb.state],
            "ca_state": 3 if tcb.in_recovery else 0,
            "retransmits": num("backoffs"),
            "backoff": num("backoffs"),
            "options": options,
            "wscale": (tcb.snd_wscale & 0xF) | (tcb.rcv_wscale & 0xF) << 4,
            "rto": num("rto_us"),
            "ato": cfg.delayed_ack_us,
            "snd_mss": tcb.smss,
            "rcv_mss": num("rcv_mss"),
            "unacked": -(-num("unacked") // smss),
            "sacked": num("sacked_bytes") // smss,
            "pmtu": cfg.mtu or 1500,
            "rcv_ssthresh": num("rcv_wnd"),
            "rtt": num("srtt_us"),
            "rttvar": num("rttvar_us"),
            "snd_ssthresh": min(tcb.ssthresh // smss, 0x7FFFFFFF),
            "snd_cwnd": tcb.cwnd // smss,
            "advmss": cfg.effective_mss,
            "reordering": 3,
            "rcv_space": cfg.rcvbuf,
            "total_retrans": num("retransmits"),
            "bytes_acked": num("bytes_acked"),
            "bytes_received": num("bytes_received"),
            "segs_out": num("segs_out"),
            "segs_in": num("segs_in"),
            "notsent_bytes": num("notsent_bytes"),
            "min_rtt": num("min_rtt_us"),
            "bytes_sent": num("bytes_sent"),
            "bytes_retrans": num("bytes_retrans"),
            "snd_wnd": num("snd_wnd"),
        }
        return TCP_INFO_STRUCT.pack(*(vals.get(f, 0) & _FIELD_MASK[i] for i, f in _FIELD_INDEX))

    def _config(self) -> TcpConfig:
        """The effective TCP settings: the connection's, the listener's, or what a new one gets."""
        if self._conn is not None:
            return self._conn.tcb.config
        if self._listener is not None:
            return self._listener.core.config
        return self._opts.tcp_config(self._ctx.stack.tcp.config)

    def _apply_live(self) -> None:
        """Carry changed TCP settings to the open connection or the listener."""
        self._apply_listener()
        conn = self._conn
        if conn is None or conn.state is _CLOSED:
            return
        tcb = conn.tcb
        changes = self._opts.live_changes(tcb.config)
        if not changes:
            return
        tcb.reconfigure(dataclasses.replace(tcb.config, **changes), self._ctx.clock())
        self._ctx.stack.tcp.touch(conn)

    def _apply_listener(self) -> None:
        listener = self._listener
        if listener is not None:
            listener.core.config = self._opts.tcp_config(self._ctx.stack.tcp.config)

    # -- makefile (as CPython's socket.makefile) ------------------------------------------

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        assert reading or writing
        binary = "b" in mode
        rawmode = ""
        if reading:
            rawmode += "r"
        if writing:
            rawmode += "w"
        raw = _stdsocket.SocketIO(self, rawmode)  # type: ignore[arg-type]  # duck-typed socket
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: io.BufferedIOBase
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if binary:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)  # type: ignore[type-var]
        text.mode = mode  # type: ignore[misc]  # as CPython does
        return text

    def _decref_socketios(self) -> None:
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            self._real_close()

    def sendfile(self, file: io.BufferedIOBase, offset: int = 0, count: int | None = None) -> int:
        """Send a file's bytes with send() (there is no kernel sendfile under ustack)."""
        if _get_ident() != self._owner:
            raise _wrong_thread(self)
        self._check_open()
        if not self._stream:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if offset:
            file.seek(offset)
        total = 0
        while count is None or total < count:
            chunk = file.read(65536 if count is None else min(65536, count - total))
            if not chunk:
                break
            self.sendall(chunk)
            total += len(chunk)
        if total and hasattr(file, "seek"):
            file.seek(offset + total)
        return total

    # -- epoll support ------------------------------------------------------------------

    def _add_watcher(self, entry: _Entry) -> None:
        self._watchers.append(entry)
        self._arm()

    def _remove_watcher(self, entry: _Entry) -> None:
        if entry in self._watchers:
            self._watchers.remove(entry)
        self._arm()

    def _arm(self) -> None:
        """Ask the Stack for events only while some Epoll watches this socket."""
        on = bool(self._watchers)
        if self._conn is not None:
            self._conn.on_event = self._on_conn_event if on else None
        if self._listener is not None:
            self._listener.on_event = self._on_listener_event if on else None
        if self._udp is not None:
            self._udp.on_readable = self._on_udp_event if on else None

    def _wake(self) -> None:
        for entry in self._watchers:
            entry.wake()

    def _on_conn_event(self, conn: TcpConnection) -> None:
        for entry in self._watchers:
            entry.wake()

    def _on_listener_event(self, listener: TcpListener) -> None:
        for entry in self._watchers:
            entry.wake()

    def _on_udp_event(self, udp: UdpSocket) -> None:
        for entry in self._watchers:
            entry.wake()

    def _edge_key(self) -> object:
        """For EPOLLET on a connection: what changes when an event happens (None: any wake)."""
        conn = self._conn
        if conn is None or self._listener is not None:
            return None
        tcb = conn.tcb
        return (
            tcb.bytes_received,
            tcb.bytes_acked,
            tcb.state,
            tcb.error,
            self._shut_rd,
            self._shut_wr,
        )

    def _poll_mask(self) -> int:
        """The epoll events this socket has now, by the rules of Linux's tcp_poll/udp_poll."""
        if self._closed:
            return 0
        if not self._stream:
            udp = self._udp
            m = EPOLLOUT | EPOLLWRNORM
            if udp is not None and udp.readable:
                m |= EPOLLIN | EPOLLRDNORM
            return m
        listener = self._listener
        if listener is not None:
            return EPOLLIN | EPOLLRDNORM if listener.ready else 0
        conn = self._conn
        if conn is None:
            return EPOLLOUT | EPOLLWRNORM | EPOLLHUP  # a socket never connected
        tcb = conn.tcb
        state = tcb.state
        if state is _ESTABLISHED and not (self._shut_rd or self._shut_wr):
            # The common case, without the set lookups below.
            m = EPOLLIN | EPOLLRDNORM if tcb.readable_bytes else 0
            space = tcb.send_space
            if space > 0 and 2 * space >= tcb.unacked_bytes:
                m |= EPOLLOUT | EPOLLWRNORM
            if tcb.error is not None and not self._err_reported:
                m |= EPOLLERR
            return m
        closed = state is _CLOSED
        rcv_shut = closed or self._shut_rd or state in _PEER_FIN
        snd_shut = closed or self._shut_wr or state in _SENT_FIN
        m = 0
        if rcv_shut:
            m = EPOLLIN | EPOLLRDNORM | EPOLLRDHUP
            if snd_shut:
                m |= EPOLLHUP
        if state not in _CONNECTING:
            if conn.readable_bytes:
                m |= EPOLLIN | EPOLLRDNORM
            if snd_shut:
                m |= EPOLLOUT | EPOLLWRNORM
            else:
                space = conn.send_space
                # Linux's sk_stream_is_writeable: free space >= half the queued bytes.
                if space > 0 and 2 * space >= tcb.unacked_bytes:
                    m |= EPOLLOUT | EPOLLWRNORM
        if conn.error is not None and not self._err_reported:
            m |= EPOLLERR
        return m

    # -- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        # After close() the socket stays usable while makefile() objects are
        # open, as in CPython (the descriptor closes with the last of them).
        if self._real_closed:
            raise _oserror(errno.EBADF)

    def _udp_sock(self) -> UdpSocket:
        udp = self._udp
        assert udp is not None
        return udp

    def _flags(self, flags: int) -> bool:
        """Check send/recv flags; True when MSG_DONTWAIT makes this call non-blocking."""
        if not flags:
            return False
        if flags & ~(MSG_DONTWAIT | MSG_NOSIGNAL):
            if flags & MSG_PEEK:
                raise OSError(errno.EOPNOTSUPP, "MSG_PEEK is not supported by ustack sockets")
            raise OSError(errno.EOPNOTSUPP, f"flags {flags:#x} are not supported by ustack sockets")
        return bool(flags & MSG_DONTWAIT)

    def _wait(
        self, ready: Callable[[], bool], timeout: float | None, nonblock: bool = False
    ) -> None:
        """Drive the network until ready(): EAGAIN after one burst if non-blocking, else
        TimeoutError after `timeout` seconds (None: for ever)."""
        ctx = self._ctx
        if nonblock or timeout == 0.0:
            if not ctx.wait_until(ready, 0):
                raise BlockingIOError(errno.EAGAIN, _EAGAIN_MSG)
            return
        if not ctx.wait_until(ready, timeout):
            raise TimeoutError("timed out")

    def _send_conn(self) -> TcpConnection:
        self._check_open()
        conn = self._conn
        if conn is None:
            raise _oserror(errno.EPIPE)
        self._check_send(conn)
        return conn

    def _check_send(self, conn: TcpConnection) -> None:
        if self._shut_wr:
            raise _oserror(errno.EPIPE)
        code = conn.error
        if code is not None:
            if not self._err_reported:
                self._err_reported = True
                raise _oserror(code)
            raise _oserror(errno.EPIPE)

    def _wait_send(self, conn: TcpConnection, timeout: float | None, nonblock: bool) -> None:
        self._wait(
            lambda: conn.send_space > 0 or conn.error is not None or conn.state not in _SEND_STATES,
            timeout,
            nonblock,
        )

    def _recv_conn(self) -> TcpConnection:
        self._check_open()
        conn = self._conn
        if conn is None:
            raise _oserror(errno.ENOTCONN)
        return conn

    def _at_end(self, conn: TcpConnection) -> bool:
        """Nothing readable: is this the end (b"") rather than a reason to wait?

        Raises the connection's error the first time it is seen.
        """
        if self._shut_rd or conn.eof:
            return True
        code = conn.error
        if code is not None:
            if not self._err_reported:
                self._err_reported = True
                raise _oserror(code)
            return True
        return conn.state is _CLOSED

    def _wait_recv(self, conn: TcpConnection, nonblock: bool) -> None:
        self._wait(
            lambda: (
                conn.readable_bytes > 0
                or conn.eof
                or conn.error is not None
                or conn.state is _CLOSED
            ),
            self._timeout,
            nonblock,
        )

    def _sendto(self, data: Buffer, dest: tuple[int, int]) -> int:
        self._check_open()
        if self._shut_wr:
            raise _oserror(errno.EPIPE)
        ip, port = dest
        stack = self._ctx.stack
        if stack.iface.next_hop(ip) is None:
            raise _oserror(errno.ENETUNREACH)
        if ip == 0xFFFFFFFF and not self._opts.broadcast:
            raise _oserror(errno.EACCES)
        udp = self._udp_sock()
        if not udp.port:
            udp.bind(("", 0))
        return stack.send_udp(udp.port, ip, port, _bytes_view(data))

    def _recv_datagram(self, bufsize: int, nonblock: bool) -> tuple[bytes, tuple[str, int]]:
        self._check_open()
        udp = self._udp_sock()
        peer = self._peer
        while True:
            while udp.readable and not self._shut_rd:
                data, addr = udp.recvfrom(bufsize)
                if peer is not None and (ip_from_str(addr[0]), addr[1]) != peer:
                    continue  # a connected UDP socket takes datagrams from its peer only
                return data, addr
            self._wait(lambda: udp.readable, self._timeout, nonblock)


# The TCP_INFO fields in struct order; masks keep each value within its C type.
_TCP_INFO_FIELDS: Final = (
    "state",
    "ca_state",
    "retransmits",
    "probes",
    "backoff",
    "options",
    "wscale",
    "app_limited",
    "rto",
    "ato",
    "snd_mss",
    "rcv_mss",
    "unacked",
    "sacked",
    "lost",
    "retrans",
    "fackets",
    "last_data_sent",
    "last_ack_sent",
    "last_data_recv",
    "last_ack_recv",
    "pmtu",
    "rcv_ssthresh",
    "rtt",
    "rttvar",
    "snd_ssthresh",
    "snd_cwnd",
    "advmss",
    "reordering",
    "rcv_rtt",
    "rcv_space",
    "total_retrans",
    "pacing_rate",
    "max_pacing_rate",
    "bytes_acked",
    "bytes_received",
    "segs_out",
    "segs_in",
    "notsent_bytes",
    "min_rtt",
    "data_segs_in",
    "data_segs_out",
    "delivery_rate",
    "busy_time",
    "rwnd_limited",
    "sndbuf_limited",
    "delivered",
    "delivered_ce",
    "bytes_sent",
    "bytes_retrans",
    "dsack_dups",
    "reord_seen",
    "rcv_ooopack",
    "snd_wnd",
)
_FIELD_INDEX: Final = tuple(enumerate(_TCP_INFO_FIELDS))


def _expand_codes(fmt: str) -> list[str]:
    out: list[str] = []
    count = ""
    for ch in fmt:
        if ch.isdigit():
            count += ch
        else:
            out.extend(ch * int(count or "1"))
            count = ""
    return out


_FIELD_MASK: Final = tuple(
    (1 << (8 * struct.calcsize("=" + c))) - 1 for c in _expand_codes(TCP_INFO_STRUCT.format[1:])
)
assert len(_FIELD_MASK) == len(_TCP_INFO_FIELDS) and TCP_INFO_STRUCT.size == 232


def _weakset() -> Any:
    import weakref

    return weakref.WeakSet()


def _int_value(value: int | Buffer | None) -> int:
    if value is None:
        raise _oserror(errno.EINVAL)
    if isinstance(value, int):
        return value
    raw = bytes(value)
    if len(raw) < _INT.size:
        raise _oserror(errno.EINVAL)
    v: int = _INT.unpack_from(raw)[0]
    return v


def _into_view(buffer: WritableBuffer, nbytes: int, what: str) -> memoryview:
    view = memoryview(buffer)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    if nbytes < 0:
        raise ValueError(f"negative buffersize in {what}")
    if nbytes:
        if nbytes > len(view):
            raise ValueError(f"buffer too small for requested bytes in {what}")
        view = view[:nbytes]
    return view


def parse_host(host: object) -> int:
    """A numeric IPv4 host as an int ("" and "0.0.0.0" are 0); gaierror otherwise."""
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if host in ("", "0.0.0.0"):
        return 0
    if host == "<broadcast>":
        return 0xFFFFFFFF
    try:
        return ip_from_str(host)
    except (OSError, ValueError):
        raise _stdsocket.gaierror(
            _stdsocket.EAI_NONAME,
            f"Name or service not known: ustack takes numeric IPv4 addresses only, got {host!r}",
        ) from None


def _parse_address(address: object, what: str, *, broadcast: bool = False) -> tuple[int, int]:
    if not isinstance(address, tuple):
        raise TypeError(f"{what}(): AF_INET address must be tuple, not {type(address).__name__}")
    if len(address) != 2:
        raise TypeError(f"AF_INET address must be a pair (host, port), got {address!r}")
    host, port = address
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("ascii")
    if not isinstance(port, int):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 65535:
        raise OverflowError(f"{what}(): port must be 0-65535.")
    ip = parse_host(host)
    if ip == 0xFFFFFFFF and not broadcast:
        raise _stdsocket.gaierror(_stdsocket.EAI_NONAME, "Name or service not known")
    return ip, port
