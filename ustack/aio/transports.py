"""asyncio transports over ustack connections and datagram sockets.

`TcpTransport` is asyncio's `Transport` on a `TcpConnection`;
`DatagramTransport` is its `DatagramTransport` on a `UdpSocket`.  They
follow the semantics of asyncio's selector transports (selector_events.py)
call for call, so protocols written for kernel sockets run unchanged.

How they meet the stack.  The stack calls `conn.on_event` (or a UDP
socket's `on_readable`) from inside the loop's selector, once per burst in
which the connection had input or timers.  The transport then:

- moves what it holds in its write buffer into the connection's send
  buffer (the data rides on the ACK that the same burst emits);
- schedules, with `loop.call_soon`, the delivery of readable data, end of
  stream or the error, and `resume_writing` once its write buffer drained
  to the low-water mark.

Protocol code therefore never runs inside `select`.  `write()` puts data
straight into the connection's send buffer and keeps only what did not fit
(bounded by flow control: `pause_writing` above the high-water mark);
`data_received` gets one `bytes` per delivery, copied once out of the
receive buffer.  Reading paused means the receive buffer fills and the
advertised window closes, so a fast peer is held back by TCP itself.

Errors map to the exceptions a kernel socket gives: a reset is
ConnectionResetError, a timeout TimeoutError, and so on (`conn_error`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import socket
from asyncio import constants as asyncio_constants
from asyncio import transports as asyncio_transports
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from ustack.stack.tcp import TcpConnection, TcpListener
from ustack.stack.udp import UdpSocket
from ustack.wire.ipv4 import ip_to_str

if TYPE_CHECKING:
    from ustack.aio.server import Server

logger = logging.getLogger("ustack.aio")

Address = tuple[str, int]

MAX_READ: Final = 256 * 1024
"""Largest chunk handed to one data_received call."""
MAX_DATAGRAMS_PER_CALL: Final = 256
"""Datagrams delivered per callback before other callbacks get a turn."""
DEFAULT_HIGH_WATER: Final = 64 * 1024  # asyncio's defaults
LOG_THRESHOLD_FOR_CONNLOST_WRITES: Final = 5


def conn_error(conn: TcpConnection, what: str = "connection failed") -> OSError:
    """The exception a kernel socket would raise for the connection's error."""
    err = conn.error if conn.error is not None else errno.ECONNABORTED
    return OSError(err, f"{os.strerror(err)} ({what})")  # OSError picks the subclass


def _endpoint(addr: tuple[int, int]) -> Address:
    return (ip_to_str(addr[0]), addr[1])


def _check_limits(high: int | None, low: int | None) -> tuple[int, int]:
    if high is None:
        high = DEFAULT_HIGH_WATER if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


def _as_bytes_view(data: Any) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class UstackSocket:
    """What `get_extra_info('socket')` and `Server.sockets` give for ustack endpoints.

    It answers the questions frameworks ask a transport's socket (family,
    type, addresses, TCP_NODELAY, SO_KEEPALIVE, SO_ERROR); it has no file
    descriptor (`fileno()` is -1) and no I/O methods: the data of a ustack
    connection goes through its transport.
    """

    family: Final = socket.AF_INET

    def __init__(
        self,
        kind: socket.SocketKind,
        sockname: Callable[[], Address],
        peername: Callable[[], Address | None] | None = None,
        conn: TcpConnection | None = None,
    ) -> None:
        self.type = kind
        self.proto = socket.IPPROTO_TCP if kind == socket.SOCK_STREAM else socket.IPPROTO_UDP
        self._sockname = sockname
        self._peername = peername
        self._conn = conn

    def fileno(self) -> int:
        return -1

    def getsockname(self) -> Address:
        return self._sockname()

    def getpeername(self) -> Address:
        peer = self._peername() if self._peername is not None else None
        if peer is None:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        return peer

    def gettimeout(self) -> float:
        return 0.0

    def _option(self, level: int, option: int) -> str | None:
        if self._conn is not None:
            if (level, option) == (socket.IPPROTO_TCP, socket.TCP_NODELAY):
                return "nodelay"
            if (level, option) == (socket.SOL_SOCKET, socket.SO_KEEPALIVE):
                return "keepalive"
        return None

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        field = self._option(level, option)
        if field is None or self._conn is None:
            raise OSError(
                errno.ENOPROTOOPT, f"option ({level}, {option}) is not supported on ustack"
            )
        on = bool(int.from_bytes(value, "little") if isinstance(value, bytes) else value)
        tcb = self._conn.tcb
        if field == "nodelay":
            tcb.config = dataclasses.replace(tcb.config, nodelay=on)
        else:
            tcb.config = dataclasses.replace(tcb.config, keepalive=on)

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> int:
        if (level, option) == (socket.SOL_SOCKET, socket.SO_ERROR):
            return 0 if self._conn is None else (self._conn.error or 0)
        if (level, option) == (socket.SOL_SOCKET, socket.SO_TYPE):
            return int(self.type)
        field = self._option(level, option)
        if field is None or self._conn is None:
            raise OSError(
                errno.ENOPROTOOPT, f"option ({level}, {option}) is not supported on ustack"
            )
        return int(bool(getattr(self._conn.tcb.config, field)))

    def __repr__(self) -> str:
        kind = "tcp" if self.type == socket.SOCK_STREAM else "udp"
        try:
            local = self.getsockname()
        except OSError:
            local = None
        peer = self._peername() if self._peername is not None else None
        return f"<UstackSocket {kind} laddr={local} raddr={peer}>"


def listener_socket(listener: TcpListener, addr: int) -> UstackSocket:
    return UstackSocket(socket.SOCK_STREAM, lambda: (ip_to_str(addr), listener.port))


class _Scheduler:
    """call_soon that also tells the selector the application has work."""

    __slots__ = ("call_soon", "loop", "wake")

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self.loop = loop
        self.wake = wake
        self.call_soon = loop.call_soon

    def __call__(self, cb: Callable[..., object], *args: Any) -> None:
        self.call_soon(cb, *args)
        self.wake()


class TcpTransport(asyncio_transports._FlowControlMixin):
    """asyncio.Transport on a ustack TcpConnection (see the module docstring).

    It derives from asyncio's flow-control mixin, as asyncio's own
    transports do, so that `loop.sendfile` (its write-based fallback) and
    `loop.start_tls` accept it.
    """

    _start_tls_compatible = True
    _sendfile_compatible = asyncio_constants._SendfileMode.FALLBACK

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        conn: TcpConnection,
        protocol: asyncio.BaseProtocol,
        *,
        waiter: asyncio.Future[None] | None = None,
        server: Server | None = None,
    ) -> None:
        sock = UstackSocket(
            socket.SOCK_STREAM,
            lambda: _endpoint(conn.local),
            lambda: _endpoint(conn.remote),
            conn,
        )
        super().__init__(
            {"socket": sock, "sockname": _endpoint(conn.local), "peername": _endpoint(conn.remote)},
            loop,
        )
        self._loop: asyncio.AbstractEventLoop = loop
        self._soon = _Scheduler(loop, wake)
        self._conn = conn
        self._protocol: asyncio.BaseProtocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol_connected = False
        self._server = server
        self._buffer = bytearray()
        self._high, self._low = _check_limits(None, None)
        self._protocol_paused = False
        self._resume_scheduled = False
        self._paused = False
        self._read_scheduled = False
        self._closing = False
        self._eof = False  # write_eof() was called
        self._eof_seen = False  # the peer's end of stream was delivered
        self._conn_lost = 0
        self._conn_closed = False
        self._aborted = False  # closed by an error or abort(): no resume_writing
        if server is not None:
            server._attach(self)
        conn.user = self
        conn.on_event = self._on_event
        loop.call_soon(self._connection_made)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__, f"{self._conn.state}"]
        if self._closing:
            info.append("closing")
        info.append(f"laddr={self.get_extra_info('sockname')}")
        info.append(f"raddr={self.get_extra_info('peername')}")
        info.append(f"write_buffer={len(self._buffer)}")
        return "<{}>".format(" ".join(info))

    # -- callbacks from the stack (inside select: never call the protocol) ---------

    def _on_event(self, conn: TcpConnection) -> None:
        try:
            if self._buffer:
                self._drain()
            self._check_read()
        except Exception as exc:  # must not raise into the stack
            self._soon(self._fatal_error, exc, "Fatal error in ustack transport event")
            conn.on_event = None

    def _drain(self) -> None:
        """Move the write buffer into the connection's send buffer as far as it fits."""
        conn = self._conn
        buf = self._buffer
        try:
            n = conn.send(buf)
        except OSError as exc:
            conn.on_event = None
            self._soon(self._fatal_error, exc, "Fatal write error on ustack transport")
            return
        if n:
            del buf[:n]
        # As asyncio's _write_ready: resume_writing first, also when closing.
        if self._protocol_paused and not self._resume_scheduled and len(buf) <= self._low:
            self._resume_scheduled = True
            self._soon(self._resume_protocol)
        if not buf:
            if self._closing:
                self._conn_lost += 1
                self._close_conn()
                self._soon(self._call_connection_lost, None)
            elif self._eof:
                conn.shutdown_write()

    def _check_read(self) -> None:
        """Schedule a delivery if there is something to deliver."""
        if self._read_scheduled or self._conn_lost:
            return
        conn = self._conn
        readable = conn.readable_bytes
        if self._paused or self._closing:
            if conn.error is not None and not readable:
                self._read_scheduled = True
                self._soon(self._read_ready)
            return
        if readable or (conn.eof and not self._eof_seen) or conn.error is not None:
            self._read_scheduled = True
            self._soon(self._read_ready)

    # -- loop callbacks ----------------------------------------------------------

    def _connection_made(self) -> None:
        if self._conn_lost:
            return
        self._protocol_connected = True
        self._protocol.connection_made(self)
        self._check_read()

    def _read_ready(self) -> None:
        self._read_scheduled = False
        if self._conn_lost:
            return
        conn = self._conn
        if not (self._paused or self._closing):
            n = conn.readable_bytes
            if n:
                try:
                    if self._buffered:
                        proto = self._protocol
                        assert isinstance(proto, asyncio.BufferedProtocol)
                        buf = memoryview(proto.get_buffer(n))
                        if not len(buf):
                            raise RuntimeError("get_buffer() returned an empty buffer")
                        proto.buffer_updated(conn.recv_into(buf))
                    else:
                        data = conn.recv(n if n < MAX_READ else MAX_READ)
                        self._protocol.data_received(data)  # type: ignore[attr-defined]
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                    return
                if conn.readable_bytes or conn.eof or conn.error is not None:
                    self._check_read()
                return
            if conn.eof and not self._eof_seen:
                self._eof_seen = True
                try:
                    keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
                    return
                if not keep_open:
                    self.close()
                return
        if conn.error is not None and not conn.readable_bytes:
            self._force_close(conn_error(conn))

    def _resume_protocol(self) -> None:
        self._resume_scheduled = False
        if self._protocol_paused and len(self._buffer) <= self._low and not self._aborted:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler(
                    {
                        "message": "protocol.resume_writing() failed",
                        "exception": exc,
                        "transport": self,
                        "protocol": self._protocol,
                    }
                )

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._buffer.clear()
        self._aborted = True
        self._closing = True
        self._conn_lost += 1
        self._conn.on_event = None
        self._loop.call_soon(self._call_connection_lost, exc)

    def _close_conn(self, abort: bool = False) -> None:
        if self._conn_closed:
            return
        self._conn_closed = True
        conn = self._conn
        conn.on_event = None
        if abort:
            conn.abort()
        else:
            conn.close()

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(cast("Exception | None", exc))
        finally:
            self._close_conn()
            self._conn.user = None
            server = self._server
            if server is not None:
                self._server = None
                server._detach(self)

    # -- asyncio.Transport ---------------------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol_connected = True

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._check_read()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = _as_bytes_view(data)
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not view:
            return
        if self._conn_lost:
            if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("write() on a ustack transport whose connection is lost")
            self._conn_lost += 1
            return
        if not self._buffer:
            try:
                n = self._conn.send(view)
            except OSError as exc:
                self._fatal_error(exc, "Fatal write error on ustack transport")
                return
            if n == len(view):
                return
            view = view[n:]
        self._buffer += view
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._buffer:
            self._conn.shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._buffer:
            self._conn_lost += 1
            self._close_conn()
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Reset the connection (RST) at once; buffered data is dropped."""
        if not self._conn_lost:
            self._close_conn(abort=True)
        self._force_close(None)

    # -- flow control --------------------------------------------------------------

    def _maybe_pause_protocol(self) -> None:
        if len(self._buffer) <= self._high or self._protocol_paused:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {
                    "message": "protocol.pause_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high, self._low = _check_limits(high, low)
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    # -- ustack specifics ------------------------------------------------------------

    @property
    def connection(self) -> TcpConnection:
        """The ustack connection under this transport (for statistics)."""
        return self._conn


class DatagramTransport(asyncio.DatagramTransport):
    """asyncio.DatagramTransport on a ustack UdpSocket.

    Sending never buffers: a datagram goes into a transmit slot at once and
    leaves at the next flush, so `get_write_buffer_size()` is always 0.
    With a remote address ("connected"), datagrams from other senders are
    dropped, as a connected kernel socket does.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        sock: UdpSocket,
        protocol: asyncio.DatagramProtocol,
        *,
        address: Address | None = None,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        extra: dict[str, Any] = {
            "socket": UstackSocket(
                socket.SOCK_DGRAM, sock.getsockname, (lambda: address) if address else None
            ),
            "sockname": sock.getsockname(),
        }
        if address is not None:
            extra["peername"] = address
        super().__init__(extra)
        self._loop = loop
        self._soon = _Scheduler(loop, wake)
        self._sock = sock
        self._protocol = protocol
        self._address = address
        self._protocol_connected = False
        self._paused = False
        self._read_scheduled = False
        self._closing = False
        self._conn_lost = 0
        sock.on_readable = self._on_readable
        loop.call_soon(self._connection_made)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__} laddr={self.get_extra_info('sockname')}"
            f" raddr={self._address}{' closing' if self._closing else ''}>"
        )

    def _on_readable(self, sock: UdpSocket) -> None:
        if not (self._read_scheduled or self._paused or self._closing):
            self._read_scheduled = True
            self._soon(self._read_ready)

    def _connection_made(self) -> None:
        if self._conn_lost:
            return
        self._protocol_connected = True
        self._protocol.connection_made(self)
        if self._sock.readable:
            self._on_readable(self._sock)

    def _read_ready(self) -> None:
        self._read_scheduled = False
        sock = self._sock
        want = self._address
        protocol = self._protocol
        try:
            for _ in range(MAX_DATAGRAMS_PER_CALL):
                if self._paused or self._closing or not sock.readable:
                    return
                data, addr = sock.recvfrom(65535)
                if want is not None and addr != want:
                    continue
                protocol.datagram_received(data, addr)
        finally:
            if sock.readable and not sock.closed:
                self._on_readable(sock)

    def sendto(self, data: Any, addr: Any = None) -> None:
        view = _as_bytes_view(data)
        if self._address is not None:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address
        if self._conn_lost:
            if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("sendto() on a closed ustack datagram transport")
            self._conn_lost += 1
            return
        try:
            if addr is None:
                raise OSError(errno.EDESTADDRREQ, os.strerror(errno.EDESTADDRREQ))
            self._sock.sendto(view, (addr[0], addr[1]))
        except OSError as exc:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on datagram transport")

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._closing = True
        self._conn_lost += 1
        self._sock.on_readable = None
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(cast("Exception | None", exc))
        finally:
            self._sock.close()

    def close(self) -> None:
        if self._closing:
            return
        self._force_close(None)

    def abort(self) -> None:
        self._force_close(None)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.DatagramProtocol)
        self._protocol = protocol
        self._protocol_connected = True

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused and not self._closing:
            self._paused = False
            if self._sock.readable:
                self._on_readable(self._sock)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        _check_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        high, low = _check_limits(None, None)
        return (low, high)


def _set_result_unless_cancelled(fut: asyncio.Future[None], result: None) -> None:
    if not fut.cancelled():
        fut.set_result(result)
