"""asyncio's Server for ustack listeners.

Behaves as `asyncio.Server` (base_events.py): `close`, `wait_closed`,
`serve_forever`, `start_serving`, `is_serving`, `get_loop`, `sockets`,
`async with`, and Python 3.13's `close_clients` / `abort_clients`.
`wait_closed` follows Python 3.12+: it returns once the server is closed
and every connection it accepted is gone (3.11's returned at once).

The port is listened on from creation, like a bound socket that owns its
port; handshakes that complete before `start_serving` wait in the accept
queue (up to `backlog`) and are accepted when serving starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ustack.aio.transports import TcpTransport, UstackSocket, listener_socket
from ustack.stack.tcp import TcpListener

if TYPE_CHECKING:
    from ustack.aio.loop import UstackEventLoop

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class Server(asyncio.AbstractServer):
    """Listening TCP ports of a ustack loop; see the module docstring."""

    def __init__(
        self,
        loop: UstackEventLoop,
        protocol_factory: ProtocolFactory,
        listeners: list[TcpListener],
    ) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._listeners: list[TcpListener] | None = listeners
        self._sockets = tuple(listener_socket(lst, loop.stack.iface.addr) for lst in listeners)
        self._clients: set[TcpTransport] = set()
        self._waiters: list[asyncio.Future[None]] | None = []
        self._serving = False
        self._serving_forever_fut: asyncio.Future[None] | None = None
        self._accept_scheduled = False
        for lst in listeners:
            lst.user = self
            lst.on_event = self._on_listener

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} sockets={self.sockets!r}>"

    # -- connections ----------------------------------------------------------

    def _attach(self, transport: TcpTransport) -> None:
        self._clients.add(transport)

    def _detach(self, transport: TcpTransport) -> None:
        self._clients.discard(transport)
        if not self._clients and self._listeners is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters = self._waiters
        self._waiters = None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _on_listener(self, listener: TcpListener) -> None:
        # Inside select: only schedule.
        if self._serving and not self._accept_scheduled:
            self._accept_scheduled = True
            self._loop._schedule(self._accept)

    def _accept(self) -> None:
        self._accept_scheduled = False
        listeners = self._listeners
        if not self._serving or listeners is None:
            return
        loop = self._loop
        for listener in listeners:
            while (conn := listener.accept()) is not None:
                try:
                    protocol = self._protocol_factory()
                except (SystemExit, KeyboardInterrupt):
                    conn.abort()
                    raise
                except BaseException as exc:
                    conn.abort()
                    loop.call_exception_handler(
                        {
                            "message": "Error in protocol_factory of a ustack server",
                            "exception": exc,
                            "socket": self._sockets[listeners.index(listener)],
                        }
                    )
                    continue
                TcpTransport(loop, loop._selector_wake, conn, protocol, server=self)

    def _start_serving(self) -> None:
        if self._serving or self._listeners is None:
            return
        self._serving = True
        if any(lst.ready for lst in self._listeners):
            self._accept_scheduled = True
            self._loop._schedule(self._accept)

    # -- asyncio.AbstractServer ------------------------------------------------

    @property
    def sockets(self) -> tuple[UstackSocket, ...]:
        return () if self._listeners is None else self._sockets

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        listeners = self._listeners
        if listeners is None:
            return
        self._listeners = None
        for lst in listeners:
            lst.on_event = None
            lst.user = None
            lst.close()
        self._serving = False
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
            self._serving_forever_fut = None
        if not self._clients:
            self._wakeup()

    def close_clients(self) -> None:
        for transport in list(self._clients):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._clients):
            transport.abort()

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._listeners is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self) -> None:
        if self._waiters is None:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter
