"""pytest-asyncio tests that run on ustack's event loop, against the Linux kernel as the peer.

How the loop is chosen: pytest-asyncio (1.x) makes each test's loop with
an `asyncio.Runner` while the policy returned by the ``event_loop_policy``
fixture is installed, so overriding that fixture with
`ustack.aio.EventLoopPolicy` (bound to the test's own topology) makes
every ``@pytest.mark.asyncio`` test here run on a `UstackEventLoop`.

pytest-asyncio 1.x deprecates overriding ``event_loop_policy`` in favour
of the ``pytest_asyncio_loop_factories`` hook, which only a conftest.py
or plugin can implement (and which then applies to every asyncio test of
the directory).  Until the suite has such a hook, this module overrides
the fixture and silences that one warning.  Each test asserts that its
running loop is ustack's, in the mode asked for, so a pytest-asyncio that
stopped honouring the fixture (and silently used a default loop) fails
here instead of passing on kernel sockets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

import ustack.aio
from tests.kernel import ns_socket
from ustack.aio import TcpTransport, UstackEventLoop
from ustack.topology import Topology

pytestmark = [
    pytest.mark.netns,
    pytest.mark.filterwarnings(
        r"ignore:Overriding the \"event_loop_policy\" fixture is deprecated"
        ":pytest.PytestDeprecationWarning"
    ),
]

USTACK = "198.18.0.2"
KERNEL = "198.18.0.1"
BUDGET = 32
IDLE_US = 200
MESSAGES = [b"x", b"hello ustack", bytes(range(256)) * 8, b"y" * 70_000]


@pytest.fixture(params=["busy", "interrupt", "hybrid"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def event_loop_policy(topology: Topology, mode: str) -> Iterator[ustack.aio.EventLoopPolicy]:
    """pytest-asyncio's loop source for this module: ustack loops on the test's topology."""
    yield ustack.aio.EventLoopPolicy(name=topology.name, poll=mode, budget=BUDGET, idle_us=IDLE_US)


def running_ustack_loop(mode: str) -> UstackEventLoop:
    """The running loop, checked to be ustack's with this module's settings."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, UstackEventLoop), f"pytest-asyncio ran the test on {loop!r}"
    ctx = loop.context
    assert (ctx.mode, ctx.budget, ctx.idle_us) == (mode, BUDGET, IDLE_US)
    assert loop.stack.iface.cidr == f"{USTACK}/24"
    return loop


def kernel_echo_server(topo: Topology) -> tuple[socket.socket, threading.Thread, list[bytes]]:
    """A blocking kernel echo server on 198.18.0.1 in the client netns, in a thread.

    It echoes until EOF, then sends b"bye" and closes; what it received is
    appended to the returned list.
    """
    ls = ns_socket(topo.client_ns, socket.SOCK_STREAM)
    ls.bind((KERNEL, 0))
    ls.listen(1)
    ls.settimeout(20)
    got: list[bytes] = []

    def serve() -> None:
        with ls:
            conn, _ = ls.accept()
        with conn:
            conn.settimeout(20)
            while data := conn.recv(65536):
                got.append(data)
                conn.sendall(data)
            conn.sendall(b"bye")

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return ls, th, got


@pytest.mark.asyncio
async def test_open_connection_to_kernel_server_exchanges_data(topology: Topology, mode: str):
    loop = running_ustack_loop(mode)
    ls, th, got = kernel_echo_server(topology)
    port = ls.getsockname()[1]
    frames0 = loop.stats()["loop_frames"]
    r, w = await asyncio.wait_for(asyncio.open_connection(KERNEL, port), 10)
    assert isinstance(w.transport, TcpTransport)  # the connection lives on ustack
    assert w.get_extra_info("sockname")[0] == USTACK
    assert w.get_extra_info("peername") == (KERNEL, port)
    for body in MESSAGES:
        w.write(body)
        assert await asyncio.wait_for(r.readexactly(len(body)), 10) == body
    w.write_eof()
    assert await asyncio.wait_for(r.read(), 10) == b"bye"
    w.close()
    await w.wait_closed()
    await loop.run_in_executor(None, th.join, 10)
    assert b"".join(got) == b"".join(MESSAGES)
    assert loop.stats()["loop_frames"] > frames0


@pytest.mark.asyncio
async def test_start_server_serves_a_kernel_client(topology: Topology, mode: str):
    loop = running_ustack_loop(mode)
    peers: list[tuple[str, int]] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peers.append(w.get_extra_info("peername"))
        while data := await r.read(65536):
            w.write(data.upper())
            await w.drain()
        w.write(b"BYE")
        w.close()
        await w.wait_closed()

    frames0 = loop.stats()["loop_frames"]
    server = await asyncio.start_server(handle, None, 0)
    (sock,) = server.sockets
    host, port = sock.getsockname()
    assert host == USTACK

    def kernel_client() -> tuple[bytes, tuple[str, int]]:
        with ns_socket(topology.client_ns, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect((USTACK, port))
            local = s.getsockname()
            echoed = b""
            for body in MESSAGES:
                s.sendall(body.lower())
                want = len(echoed) + len(body)
                while len(echoed) < want:
                    chunk = s.recv(65536)
                    assert chunk, "ustack closed early"
                    echoed += chunk
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                echoed += chunk
            return echoed, local

    echoed, local = await asyncio.wait_for(loop.run_in_executor(None, kernel_client), 30)
    assert echoed == b"".join(m.lower().upper() for m in MESSAGES) + b"BYE"
    assert peers == [local]
    server.close()
    await asyncio.wait_for(server.wait_closed(), 5)
    assert loop.stats()["loop_frames"] > frames0
