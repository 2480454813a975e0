"""Worker processes on the queues of one TAP, and `ustack stats` on running servers.

With `--workers 2` each worker has its own Context on its own queue of the
multi-queue TAP; the kernel steers flows to queues.  200 connections from
the kernel, all open at once, must all be served, both workers must get a
share, and ping (ARP and ICMP on whichever queue they land) must keep
working throughout, also after the kernel forgets our MAC halfway and has
to resolve it again.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

from pyroute2 import IPRoute

from tests.conftest import ns_run
from tests.server import ServerProcess
from ustack import netns
from ustack.topology import Topology

USTACK = "198.18.0.2"


def _forget_ustack_mac(topo: Topology) -> None:
    """Delete the kernel's neighbour entry for ustack: its next packet needs ARP again."""
    with IPRoute(netns=topo.client_ns) as ipr:
        idx = ipr.link_lookup(ifname=topo.tap)[0]
        ipr.neigh("del", dst=USTACK, ifindex=idx)


def _concurrent_echo_clients(topo: Topology, count: int, port: int = 7) -> int:
    """Open `count` connections (ARP forgotten halfway), then echo on each, then close all."""
    socks: list[socket.socket] = []
    ok = 0
    try:
        with netns.inside(topo.name):
            for i in range(count):
                if i == count // 2:
                    _forget_ustack_mac(topo)
                socks.append(socket.create_connection((USTACK, port), timeout=10))
        for i, s in enumerate(socks):
            s.sendall(b"message %d " % i * 20)
        for i, s in enumerate(socks):
            msg = b"message %d " % i * 20
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := s.recv(4096):
                got += chunk
            ok += bytes(got) == msg
    finally:
        for s in socks:
            s.close()
    return ok


def _ustack_stats(topo: Topology) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "ustack", "stats", "--name", topo.name, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    snaps: list[dict[str, object]] = json.loads(out.stdout)
    return snaps


def test_two_workers_share_200_connections_while_ping_works(topology: Topology) -> None:
    with ServerProcess(topology, "echo", "--workers", "2") as srv:
        assert "2 workers" in srv.ready_line
        ping: list[subprocess.CompletedProcess[str]] = []
        pinger = threading.Thread(
            target=lambda: ping.append(
                ns_run(topology.name, "ping", "-c", "20", "-i", "0.1", "-W", "1", USTACK)
            )
        )
        pinger.start()
        served = _concurrent_echo_clients(topology, 200)
        pinger.join()
        snaps = _ustack_stats(topology)
    assert served == 200
    assert ping and ping[0].returncode == 0 and " 0% packet loss" in ping[0].stdout
    # Each worker answers `ustack stats` on its own.
    assert len(snaps) == 2
    assert len({s["pid"] for s in snaps}) == 2
    shares = [
        int(line.split(": ")[1].split()[0]) for line in srv.output.splitlines() if "worker " in line
    ]
    assert len(shares) == 2 and sum(shares) == 200
    assert min(shares) > 0, f"one worker got no connection: {shares}"
    # The kernel resolved us at the start and again after forgetting us halfway
    # (its requests land on whichever queue; whoever gets one answers).
    replies = 0
    for snap in snaps:
        counters = snap["counters"]
        assert isinstance(counters, dict)
        replies += int(counters.get("arp_out_replies", 0))
    assert replies >= 2, replies
    assert srv.returncode == 0


def test_stats_shows_live_connections_like_ss(topology: Topology) -> None:
    with (
        ServerProcess(topology, "echo") as srv,
        netns.inside(topology.name),
        socket.create_connection((USTACK, 7), timeout=10) as s,
    ):
        s.sendall(b"x" * 1000)
        got = 0
        while got < 1000:
            got += len(s.recv(4096))
        snaps = _ustack_stats(topology)
        table = subprocess.run(
            [sys.executable, "-m", "ustack", "stats", "--name", topology.name],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        local_port = s.getsockname()[1]
    assert srv.returncode == 0
    (snap,) = snaps
    conns = snap["connections"]
    assert isinstance(conns, list) and len(conns) == 1
    (conn,) = conns
    assert conn["state"] == "ESTABLISHED"
    assert conn["remote"] == f"198.18.0.1:{local_port}"
    assert conn["bytes_received"] == 1000 and conn["bytes_acked"] == 1000
    counters = snap["counters"]
    assert isinstance(counters, dict) and counters["app_bytes_in"] == 1000
    assert "ESTABLISHED" in table and f"198.18.0.1:{local_port}" in table


def test_stats_without_a_server_is_a_one_line_error(topology: Topology) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ustack", "stats", "--name", topology.name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "no running server" in out.stderr


def test_kv_refuses_workers_with_one_line(topology: Topology) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ustack", "serve", "kv", "--name", topology.name, "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "own kv store" in out.stderr
