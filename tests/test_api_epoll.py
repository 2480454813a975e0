"""The epoll-like API against the Linux kernel across the topology.

An epoll-driven ustack echo server serves kernel clients, and an
epoll-driven ustack client talks to a kernel echo server, in every polling
mode (and level- and edge-triggered for the server).  Then the masks
ustack reports are compared with the masks the kernel's own epoll reports
for a kernel socket in the same situation.
"""

from __future__ import annotations

import errno
import functools
import random
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

import ustack
import ustack.socket as usock
from tests.kernel import ns_socket
from ustack.api import context as api_context
from ustack.api.epoll import (
    EPOLLERR,
    EPOLLET,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EPOLLRDHUP,
    EPOLLRDNORM,
    EPOLLWRNORM,
    Epoll,
)
from ustack.topology import Topology

pytestmark = pytest.mark.netns

MODES = ["busy", "interrupt", "hybrid"]
KERNEL = "198.18.0.1"
US = "198.18.0.2"
CLIENTS = 8
MESSAGES = 40


def message(client: int, i: int) -> bytes:
    """The i-th message of a client: the same bytes every time it is asked for."""
    size = (1, 64, 700, 1448, 1449, 5000, 20000)[(client + i) % 7]
    return (b"%d:%d:" % (client, i) + random.Random(client * 1000 + i).randbytes(size))[:size]


class Threads:
    """Kernel peers in threads; join() drives the ustack Context while they run."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, fn: Callable[[], None]) -> None:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                self.errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self, timeout: float = 60) -> None:
        api_context.current().wait_until(lambda: not self.alive(), timeout)
        assert not self.alive(), "kernel peers did not finish"
        if self.errors:
            raise self.errors[0]


@pytest.fixture(params=MODES)
def api(request: pytest.FixtureRequest, topology: Topology) -> Iterator[Topology]:
    ustack.configure(name=topology.name, poll=request.param)
    try:
        yield topology
    finally:
        api_context.close_current()
        ustack.configure()


def kernel_echo_client(topo: Topology, client: int, port: int) -> None:
    s = ns_socket(topo.client_ns, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect((US, port))
    for i in range(MESSAGES):
        msg = message(client, i)
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(len(msg) - len(got))
            assert chunk, "server closed early"
            got += chunk
        assert got == msg, f"client {client} message {i} came back altered"
    s.shutdown(socket.SHUT_WR)
    assert s.recv(10) == b""
    s.close()


@pytest.mark.parametrize("trigger", ["level", "edge"])
def test_epoll_echo_server_serves_kernel_clients(api: Topology, trigger: str):
    et = EPOLLET if trigger == "edge" else 0
    srv = usock.create_server(("", 5100), backlog=64)
    srv.setblocking(False)
    ep = Epoll()
    ep.register(srv, EPOLLIN | et)
    pending: dict[usock.socket, bytearray] = {}
    peers = Threads()
    for c in range(CLIENTS):
        peers.start(functools.partial(kernel_echo_client, api, c, 5100))
    finished = 0
    echoed = 0
    while finished < CLIENTS:
        events = ep.poll(10)
        assert events, "no event within 10 s"
        for sock, mask in events:
            if sock is srv:
                while True:
                    try:
                        conn, _ = srv.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    pending[conn] = bytearray()
                    ep.register(conn, EPOLLIN | EPOLLRDHUP | et)
                continue
            out = pending[sock]
            eof = False
            if mask & (EPOLLIN | EPOLLHUP | EPOLLERR):
                while True:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    if not data:
                        eof = True
                        break
                    out += data
            while out:
                try:
                    n = sock.send(out)
                except BlockingIOError:
                    break
                echoed += n
                del out[:n]
            if eof and not out:
                ep.unregister(sock)
                sock.close()
                del pending[sock]
                finished += 1
            else:
                ep.modify(sock, EPOLLIN | EPOLLRDHUP | et | (EPOLLOUT if out else 0))
    peers.join()
    assert echoed == sum(len(message(c, i)) for c in range(CLIENTS) for i in range(MESSAGES))


def test_epoll_client_talks_to_kernel_echo_server(api: Topology):
    ls = ns_socket(api.client_ns, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((KERNEL, 6100))
    ls.listen(64)
    ls.settimeout(20)
    peers = Threads()

    def serve_one() -> None:
        c, _ = ls.accept()
        c.settimeout(20)
        while data := c.recv(65536):
            c.sendall(data)
        c.close()

    for _ in range(CLIENTS):
        peers.start(serve_one)

    ep = Epoll()
    conns: dict[usock.socket, Talk] = {}
    for c in range(CLIENTS):
        s = usock.socket()
        s.setblocking(False)
        assert s.connect_ex((KERNEL, 6100)) == errno.EINPROGRESS
        ep.register(s, EPOLLOUT)
        conns[s] = Talk(c)
    done = 0
    while done < CLIENTS:
        events = ep.poll(10)
        assert events, "no event within 10 s"
        for s, mask in events:
            t = conns[s]
            if t.phase == "connecting":
                assert mask == EPOLLOUT
                assert s.getsockopt(usock.SOL_SOCKET, usock.SO_ERROR) == 0
                t.phase = "talking"
                t.out += message(t.cid, 0)
            if mask & (EPOLLIN | EPOLLHUP | EPOLLERR):
                t.read(s)
                if t.phase == "done":
                    ep.unregister(s)
                    s.close()
                    done += 1
                    continue
            t.write(s)
            ep.modify(s, EPOLLIN | (EPOLLOUT if t.out else 0))
    peers.join()
    ls.close()
    assert all(t.i == MESSAGES for t in conns.values())


class Talk:
    """One client connection of the epoll client: a message at a time, then half-close."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.i = 0
        self.phase = "connecting"
        self.got = bytearray()
        self.out = bytearray()
        self.shut = False

    def read(self, s: usock.socket) -> None:
        while True:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                break
            if not data:
                assert self.phase == "closing" and not self.got
                self.phase = "done"
                return
            self.got += data
        while self.phase == "talking":
            expect = message(self.cid, self.i)
            if len(self.got) < len(expect):
                break
            assert bytes(self.got) == expect
            self.got.clear()
            self.i += 1
            if self.i < MESSAGES:
                self.out += message(self.cid, self.i)
            else:
                self.phase = "closing"

    def write(self, s: usock.socket) -> None:
        while self.out:
            try:
                n = s.send(self.out)
            except BlockingIOError:
                return
            del self.out[:n]
        if self.phase == "closing" and not self.shut:
            s.shutdown(usock.SHUT_WR)
            self.shut = True


# ---------------------------------------------------------------------------
# Masks: ustack's against the kernel's own epoll, situation by situation
# ---------------------------------------------------------------------------

ALL = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLRDNORM | EPOLLWRNORM


def kernel_mask(sock: socket.socket) -> int:
    with select.epoll() as kep:
        kep.register(sock.fileno(), ALL)
        events = kep.poll(0)
    return events[0][1] if events else 0


def ustack_mask(sock: usock.socket) -> int:
    ep = Epoll()
    try:
        ep.register(sock, ALL)
        events = ep.poll(0)
    finally:
        ep.close()
    return events[0][1] if events else 0


@pytest.fixture
def pair_maker(topology: Topology) -> Iterator[Callable[[], tuple[usock.socket, socket.socket]]]:
    """Connected (ustack socket, kernel socket) pairs, made by the main thread alone."""
    ustack.configure(name=topology.name, poll="hybrid")
    srv = usock.create_server(("", 5200))
    srv.settimeout(5)
    made: list[socket.socket] = []

    def make() -> tuple[usock.socket, socket.socket]:
        k = ns_socket(topology.client_ns, socket.SOCK_STREAM)
        k.setblocking(False)
        assert k.connect_ex((US, 5200)) == errno.EINPROGRESS
        u, _ = srv.accept()
        api_context.current().wait_until(lambda: kernel_mask(k) & EPOLLOUT != 0, 5)
        k.setblocking(True)
        made.append(k)
        return u, k

    try:
        yield make
    finally:
        for k in made:
            k.close()
        api_context.close_current()
        ustack.configure()


def settle(cond: Callable[[], bool]) -> None:
    assert api_context.current().wait_until(cond, 5), "situation not reached"


def test_masks_match_the_kernel_for_the_same_situations(
    pair_maker: Callable[[], tuple[usock.socket, socket.socket]], topology: Topology
):
    situations: dict[str, tuple[int, int]] = {}

    # Never connected.
    k0 = ns_socket(topology.client_ns, socket.SOCK_STREAM)
    situations["unconnected"] = (ustack_mask(usock.socket()), kernel_mask(k0))
    k0.close()

    # Established and idle, on each side.
    u, k = pair_maker()
    situations["idle"] = (ustack_mask(u), kernel_mask(k))

    # Data waiting to be read: each side sends 100 bytes to the other.
    u.sendall(b"u" * 100)
    k.sendall(b"k" * 100)
    c = u.connection
    assert c is not None
    settle(lambda: c.readable_bytes == 100 and kernel_mask(k) & EPOLLIN != 0)
    situations["readable"] = (ustack_mask(u), kernel_mask(k))

    # The peer shut its write side (after the data was read).
    u.recv(100)
    k.recv(100)
    u.shutdown(usock.SHUT_WR)
    k.shutdown(socket.SHUT_WR)
    settle(lambda: c.eof and kernel_mask(k) & EPOLLRDHUP != 0)
    situations["both shut"] = (ustack_mask(u), kernel_mask(k))

    # Peer FIN only: ustack sees the kernel's FIN on one pair, the kernel ours on another.
    u1, k1 = pair_maker()
    u2, k2 = pair_maker()
    k1.shutdown(socket.SHUT_WR)
    u2.shutdown(usock.SHUT_WR)
    c1 = u1.connection
    assert c1 is not None
    settle(lambda: c1.eof and kernel_mask(k2) & EPOLLRDHUP != 0)
    situations["peer fin"] = (ustack_mask(u1), kernel_mask(k2))

    # Reset by the peer: each side aborts the other pair's socket.
    u3, k3 = pair_maker()
    u4, k4 = pair_maker()
    k3.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    k3.close()
    u4.setsockopt(usock.SOL_SOCKET, usock.SO_LINGER, struct.pack("ii", 1, 0))
    u4.close()
    c3 = u3.connection
    assert c3 is not None
    settle(lambda: c3.error is not None and kernel_mask(k4) & EPOLLERR != 0)
    situations["reset"] = (ustack_mask(u3), kernel_mask(k4))

    # Connection refused.
    ur = usock.socket()
    ur.setblocking(False)
    assert ur.connect_ex((KERNEL, 6999)) == errno.EINPROGRESS
    kr = ns_socket(topology.client_ns, socket.SOCK_STREAM)
    kr.setblocking(False)
    assert kr.connect_ex((US, 6999)) == errno.EINPROGRESS
    cr = ur.connection
    assert cr is not None
    settle(lambda: cr.error is not None and kernel_mask(kr) & EPOLLERR != 0)
    situations["refused"] = (ustack_mask(ur), kernel_mask(kr))
    kr.close()

    mismatched = {name: (hex(a), hex(b)) for name, (a, b) in situations.items() if a != b}
    assert not mismatched, f"ustack vs kernel masks differ: {mismatched}"
    assert situations["idle"][0] == EPOLLOUT | EPOLLWRNORM
    assert situations["refused"][0] == (
        EPOLLIN | EPOLLRDNORM | EPOLLOUT | EPOLLWRNORM | EPOLLERR | EPOLLHUP | EPOLLRDHUP
    )
