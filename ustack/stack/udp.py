"""UDP endpoints (RFC 768): the port table and the datagram socket object.

A `UdpSocket` keeps received datagrams in a bounded queue (by count and by
bytes, like SO_RCVBUF); a datagram that does not fit is dropped and
counted, never blocks the stack.  Sending goes straight to the Stack, which
writes the datagram into a transmit slot (or fragments it).  These objects
do not block: an empty queue raises BlockingIOError, as a non-blocking
kernel socket does; the blocking API is layered on top by the event loop.
"""

from __future__ import annotations

import errno
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ustack.wire.ipv4 import ip_from_str, ip_to_str

if TYPE_CHECKING:
    from ustack.stack.stack import Stack

# Linux's default net.ipv4.ip_local_port_range; RFC 6056 3.2 suggests the
# whole 1024-65535 range, Linux keeps clear of well-known services.
EPHEMERAL_LOW = 32768
EPHEMERAL_HIGH = 60999
DEFAULT_RCVBUF = 212992  # Linux net.core.rmem_default
MAX_QUEUED = 4096

Address = tuple[str, int]


def _check_port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    return port


class UdpSocket:
    """A datagram endpoint on the stack's address."""

    def __init__(self, stack: Stack, *, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        self._stack = stack
        self.rcvbuf = rcvbuf
        self.port = 0
        self.closed = False
        self._queue: deque[tuple[bytes, int, int]] = deque()
        self._queued_bytes = 0
        self.drops = 0
        self.on_readable: Callable[[UdpSocket], None] | None = None

    # -- configuration -----------------------------------------------------

    def bind(self, address: Address) -> None:
        self._check_open()
        if self.port:
            raise OSError(errno.EINVAL, "socket is already bound")
        host, port = address
        _check_port(port)
        if host not in ("", "0.0.0.0") and ip_from_str(host) != self._stack.iface.addr:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot bind to {host}: not this stack's address")
        self.port = self._stack.udp_bind(self, port)

    def getsockname(self) -> Address:
        return (ip_to_str(self._stack.iface.addr), self.port)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.port:
            self._stack.udp_unbind(self.port)
        self._queue.clear()
        self._queued_bytes = 0

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- data --------------------------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, address: Address) -> int:
        self._check_open()
        host, port = address
        _check_port(port)
        if port == 0:
            raise OSError(errno.EINVAL, "cannot send to port 0")
        dst = ip_from_str(host)
        if not self.port:
            self.port = self._stack.udp_bind(self, 0)
        return self._stack.send_udp(self.port, dst, port, data)

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        """The oldest datagram (truncated to bufsize, like the kernel) and its sender."""
        self._check_open()
        if not self._queue:
            raise BlockingIOError(errno.EAGAIN, "no datagram queued")
        data, src, sport = self._queue.popleft()
        self._queued_bytes -= len(data)
        return data[:bufsize] if len(data) > bufsize else data, (ip_to_str(src), sport)

    @property
    def readable(self) -> bool:
        return bool(self._queue)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _deliver(self, data: bytes, src: int, sport: int) -> bool:
        """Called by the stack; False when the receive queue is full."""
        if self._queued_bytes + len(data) > self.rcvbuf or len(self._queue) >= MAX_QUEUED:
            self.drops += 1
            return False
        self._queue.append((data, src, sport))
        self._queued_bytes += len(data)
        return True

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "socket is closed")


class UdpTable:
    """Bound UDP ports of one stack."""

    def __init__(self) -> None:
        self.ports: dict[int, UdpSocket] = {}

    def bind(self, sock: UdpSocket, port: int) -> int:
        if port == 0:
            return self._ephemeral(sock)
        if port in self.ports:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} is in use")
        self.ports[port] = sock
        return port

    def _ephemeral(self, sock: UdpSocket) -> int:
        # RFC 6056 algorithm 1: a random start, then the next free port.
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        start = random.randrange(span)
        for i in range(span):
            port = EPHEMERAL_LOW + (start + i) % span
            if port not in self.ports:
                self.ports[port] = sock
                return port
        raise OSError(errno.EADDRINUSE, "no ephemeral UDP port is free")

    def unbind(self, port: int) -> None:
        self.ports.pop(port, None)
