"""Many TCP connections at once between the kernel and ustack, and the table emptying after.

- 1,000 kernel sockets in the client namespace connect to one ustack
  listener at the same time, each sends 1 KB of its own and reads it back
  from ustack's echo server; all 1,000 are ESTABLISHED together in ustack's
  table; then the kernel closes them (FIN first from the kernel, so ustack
  goes CLOSE-WAIT -> LAST-ACK -> CLOSED) and the table must come back to
  empty.
- The reverse: ustack opens 200 connections to a kernel echo server, sends
  1 KB on each, reads the echo and closes first, so each passes through
  TIME-WAIT (shortened to 3 s); the table must come back to empty when the
  last TIME-WAIT ends.

ustack runs in a thread of its own (`StackThread` from test_tcp_hostile);
the kernel side is nonblocking sockets under one selector.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import threading
import time
from typing import Any

import pytest

from tests.conftest import ns_run
from tests.kernel import ns_socket
from tests.test_tcp_hostile import EchoApp, StackThread
from ustack.loop import Context
from ustack.stack.tcp import TcpConnection
from ustack.tcp.tcb import State, TcpConfig
from ustack.topology import Topology
from ustack.wire.ipv4 import ip_from_str

pytestmark = pytest.mark.netns

PORT = 7
KERNEL_PORT = 7007
MESSAGE = 1024


def message(i: int) -> bytes:
    """1 KB that differs from connection to connection."""
    head = b"conn %06d " % i
    return (head * (MESSAGE // len(head) + 1))[:MESSAGE]


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def states(ctx: Context) -> dict[str, int]:
    out: dict[str, int] = {}
    for conn in ctx.stack.tcp.conns.values():
        name = str(conn.state)
        out[name] = out.get(name, 0) + 1
    return out


# ---- 1,000 kernel clients to one ustack listener ----------------------------------------------


class KernelClients:
    """N nonblocking kernel sockets: connect, send a message, read its echo, under one selector."""

    def __init__(self, topo: Topology, n: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.out: dict[int, memoryview] = {}
        self.back: dict[int, bytearray] = {}
        self.done: set[int] = set()
        for i in range(n):
            s = ns_socket(topo.client_ns, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((topo.ustack_addr, PORT))
            assert err in (0, errno.EINPROGRESS), os_error(err)
            self.socks.append(s)
            self.out[i] = memoryview(message(i))
            self.back[i] = bytearray()
            self.sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, i)

    def run(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.done) < len(self.socks):
            assert time.monotonic() < deadline, (
                f"{len(self.done)} of {len(self.socks)} echoes complete"
            )
            for key, events in self.sel.select(0.5):
                i = key.data
                s = self.socks[i]
                if events & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert err == 0, os_error(err)
                    try:
                        n = s.send(self.out[i])
                    except BlockingIOError:
                        n = 0
                    self.out[i] = self.out[i][n:]
                    if not self.out[i]:
                        self.sel.modify(s, selectors.EVENT_READ, i)
                if events & selectors.EVENT_READ:
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    assert data, f"connection {i} closed by ustack before its echo"
                    self.back[i] += data
                    if len(self.back[i]) >= MESSAGE:
                        assert self.back[i] == message(i), f"connection {i} echo differs"
                        self.sel.unregister(s)
                        self.done.add(i)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.sel.close()


def os_error(err: int) -> str:
    return f"{errno.errorcode.get(err, err)} ({os.strerror(err)})"


def test_thousand_kernel_clients_echo_then_ustack_table_empties(topology: Topology):
    n = 1000
    echo = EchoApp()

    def setup(ctx: Context) -> None:
        echo.attach(ctx.stack.tcp.listen(PORT, backlog=n, syn_backlog=n))

    with StackThread(topology, setup) as st:
        clients = KernelClients(topology, n)
        try:
            clients.run(timeout=120)
            # All 1,000 are open at once on both sides.
            assert st.call(states) == {"ESTABLISHED": n}
            assert len(echo.accepted) == n
        finally:
            clients.close()
        # The kernel closed first: ustack echoes the FIN, closes, and after the
        # kernel's last ACK nothing is left (no TIME-WAIT on this side).
        wait_for(lambda: st.call(lambda ctx: len(ctx.stack.tcp.conns)) == 0, 60, "an empty table")
        stats = st.stats()
    assert echo.errors == []
    assert stats["tcp_passive_opens"] == n
    assert stats.get("tcp_syncookies_sent", 0) == 0
    assert stats["tcp_conns"] == 0
    assert stats.get("drop_internal_error", 0) == 0
    assert all(c.state is State.CLOSED and c.error is None for c in echo.accepted)


# ---- ustack opens 200 connections to a kernel server ----------------------------------------


class KernelEchoServer:
    """A selector echo server on kernel sockets in the client namespace, in a thread."""

    def __init__(self, topo: Topology) -> None:
        self.lsock = ns_socket(topo.client_ns, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((topo.client_addr, KERNEL_PORT))
        self.lsock.listen(1024)
        self.lsock.setblocking(False)
        self.accepted = 0
        self.closed_by_peer = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel-echo", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.lsock, selectors.EVENT_READ, None)
        conns: dict[int, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    if key.data is None:
                        while True:
                            try:
                                s, _addr = self.lsock.accept()
                            except BlockingIOError:
                                break
                            s.setblocking(False)
                            conns[s.fileno()] = s
                            sel.register(s, selectors.EVENT_READ, "conn")
                            self.accepted += 1
                        continue
                    s = conns[key.fd]
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(s)
                        del conns[s.fileno()]
                        s.close()
                        self.closed_by_peer += 1
                        continue
                    s.sendall(data)  # 1 KB: fits the socket buffer
        except Exception as exc:
            self.errors.append(repr(exc))
        finally:
            for s in conns.values():
                s.close()
            sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.lsock.close()


class UstackClients:
    """In the stack thread: connect n times, send a message on each, read the echo, close."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.conns: list[TcpConnection] = []
        self.back: dict[int, bytearray] = {}
        self.done = 0
        self.errors: list[str] = []

    def start(self, ctx: Context) -> None:
        tcp = ctx.stack.tcp
        kernel = ip_from_str("198.18.0.1")
        for i in range(self.n):
            conn = tcp.connect(kernel, KERNEL_PORT)
            assert conn.send(message(i)) == MESSAGE  # leaves once established
            conn.user = i
            conn.on_event = self._on_event
            self.back[i] = bytearray()
            self.conns.append(conn)

    def _on_event(self, conn: TcpConnection) -> None:
        try:
            i = conn.user
            assert isinstance(i, int)
            buf = self.back[i]
            if len(buf) >= MESSAGE:
                return
            while data := conn.recv(65536):
                buf += data
            if len(buf) >= MESSAGE:
                if buf != message(i):
                    self.errors.append(f"connection {i}: echo differs")
                self.done += 1
                conn.close()  # ustack closes first: TIME-WAIT here
        except Exception as exc:
            self.errors.append(repr(exc))


def test_ustack_opens_200_connections_to_kernel_then_time_wait_empties(topology: Topology):
    n = 200
    time_wait_us = 3_000_000
    clients = UstackClients(n)
    server = KernelEchoServer(topology)
    try:
        with StackThread(
            topology, lambda ctx: None, tcp_config=TcpConfig(time_wait_us=time_wait_us)
        ) as st:
            # The kernel speaks first, so ustack knows its MAC: the SYNs then
            # leave at once rather than 8 in the ARP queue and the rest after
            # their retransmission timeout.
            ns_run(topology.client_ns, "ping", "-c", "1", "-W", "2", topology.ustack_addr)
            st.call(clients.start)
            wait_for(lambda: st.call(lambda ctx: clients.done) == n, 60, "every echo")
            # The kernel answers each FIN with its own; ustack waits in TIME-WAIT.
            wait_for(lambda: st.call(states).get("TIME-WAIT", 0) == n, 30, "all in TIME-WAIT")
            t_wait = time.monotonic()
            time.sleep(1.0)
            assert st.call(states) == {"TIME-WAIT": n}  # not cut short
            wait_for(
                lambda: st.call(lambda ctx: len(ctx.stack.tcp.conns)) == 0, 30, "an empty table"
            )
            waited = time.monotonic() - t_wait
            stats = st.stats()
            ports = {c.local[1] for c in clients.conns}
    finally:
        server.close()
    assert clients.errors == [] and server.errors == []
    assert server.accepted == n and server.closed_by_peer == n
    assert len(ports) == n
    assert all(c.state is State.CLOSED and c.error is None for c in clients.conns)
    assert stats["tcp_active_opens"] == n and stats["tcp_conns"] == 0
    assert stats.get("drop_internal_error", 0) == 0
    # TIME-WAIT lasted what it was configured to (the last one entered it
    # before we started the clock).
    assert waited <= time_wait_us / 1e6 + 2
