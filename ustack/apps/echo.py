"""Echo (RFC 862) and discard (RFC 863) servers as asyncio protocols, TCP and UDP.

Written once against asyncio's Protocol API, so the same classes run on
ustack's loop and on uvloop over kernel sockets (`ustack.apps.runner`).
Counters go to a shared `AppCounters`.

Echo over TCP follows asyncio's flow control: when the transport's send
buffer passes its high-water mark (the client is not reading its echo),
reading stops until the buffer drains, so a client that only sends cannot
make the server buffer without bound.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, cast

from ustack.apps.runner import AppCounters


class _Stream(asyncio.Protocol):
    def __init__(self, counters: AppCounters) -> None:
        self.counters = counters
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.counters.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.counters.connection_lost(self.transport)

    def eof_received(self) -> bool | None:
        return None  # close once what was echoed has been written


class EchoProtocol(_Stream):
    """Every byte received goes back on the same connection."""

    def data_received(self, data: bytes) -> None:
        c = self.counters
        c.requests += 1
        c.bytes_in += len(data)
        assert self.transport is not None
        self.transport.write(data)
        c.bytes_out += len(data)

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.resume_reading()


class DiscardProtocol(_Stream):
    """Every byte received is counted and dropped."""

    def data_received(self, data: bytes) -> None:
        c = self.counters
        c.requests += 1
        c.bytes_in += len(data)


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, counters: AppCounters) -> None:
        self.counters = counters
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport does not inherit from asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: nothing to do for it


class EchoDatagramProtocol(_Datagram):
    """Every datagram goes back to its sender, the empty one included."""

    _empty_sender: socket.socket | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        c = self.counters
        c.requests += 1
        c.datagrams_in += 1
        c.bytes_in += len(data)
        if addr[1] == 0:
            return  # RFC 768: source port 0 means no reply is wanted
        assert self.transport is not None
        if data:
            self.transport.sendto(data, addr)
        elif not self._send_empty(addr):
            return
        c.datagrams_out += 1
        c.bytes_out += len(data)

    def _send_empty(self, addr: tuple[str | Any, int]) -> bool:
        """Send an empty datagram, which asyncio's (3.11) and uvloop's sendto drop.

        ustack's transport sends it; its socket is the one without a file
        descriptor.  On kernel sockets it goes through the socket itself.
        """
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        if sock.fileno() < 0:
            if self.transport.is_closing():
                return False
            self.transport.sendto(b"", addr)
            return True
        try:
            sock.sendto(b"", addr)
            return True
        except (OSError, AttributeError, TypeError):
            pass  # uvloop's PseudoSocket refuses sendto
        try:
            if self._empty_sender is None:
                # A second handle on the same kernel socket, for this one case.
                self._empty_sender = socket.socket(fileno=os.dup(sock.fileno()))
            self._empty_sender.sendto(b"", socket.MSG_DONTWAIT, addr)
            return True
        except (OSError, AttributeError, TypeError, ValueError):
            return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._empty_sender is not None:
            self._empty_sender.close()
            self._empty_sender = None


class DiscardDatagramProtocol(_Datagram):
    """Every datagram is counted and dropped."""

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        c = self.counters
        c.requests += 1
        c.datagrams_in += 1
        c.bytes_in += len(data)
