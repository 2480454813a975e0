"""The stack as a host on the TAP link, with the Linux kernel as its peer."""

from __future__ import annotations

import os
import random
import socket
import time
from collections import Counter

import pytest
from pyroute2 import IPRoute

from tests.conftest import ns_run
from tests.kernel import ns_socket
from tests.server import ServerProcess
from ustack.topology import Topology

pytestmark = pytest.mark.netns


def test_ping_200_no_loss_payload_intact(topology: Topology):
    with ServerProcess(topology, "udp-echo") as srv:
        res = ns_run(
            topology.client_ns,
            "ping",
            "-c",
            "200",
            "-i",
            "0.01",
            "-p",
            "c0ffee",
            "-W",
            "1",
            topology.ustack_addr,
            check=False,
            timeout=60,
        )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "200 packets transmitted, 200 received, 0% packet loss" in res.stdout
    assert "wrong data" not in res.stdout and "DUP" not in res.stdout
    assert srv.counter("icmp_out_echo_reps") == 200
    assert srv.counter("drop_internal_error") == 0


def test_ping_20000_bytes_fragmented_both_ways(topology: Topology):
    with ServerProcess(topology, "udp-echo") as srv:
        res = ns_run(
            topology.client_ns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-s",
            "20000",
            "-W",
            "2",
            topology.ustack_addr,
            check=False,
        )
    assert "3 received, 0% packet loss" in res.stdout, res.stdout
    assert "20008 bytes from 198.18.0.2" in res.stdout
    assert srv.counter("ipv4_reasm_ok") == 3  # 14 fragments each way per echo
    assert srv.counter("ipv4_frag_creates") == 3 * 14


def test_kernel_resolves_ustack_mac_reachable(topology: Topology):
    with ServerProcess(topology, "udp-echo") as srv:
        mac = srv.ready_line.split("mac ")[1].split(",")[0]
        ns_run(topology.client_ns, "ping", "-c", "2", "-i", "0.1", topology.ustack_addr)
        with IPRoute(netns=topology.client_ns) as ipr:
            neigh = [
                n for n in ipr.get_neighbours(family=2) if n.get("NDA_DST") == topology.ustack_addr
            ]
    assert len(neigh) == 1
    assert neigh[0].get("NDA_LLADDR") == mac
    assert neigh[0]["state"] == 2  # NUD_REACHABLE
    assert srv.counter("arp_out_replies") >= 1


def test_udp_echo_10000_mixed_sizes_intact(topology: Topology):
    rng = random.Random(7)
    sizes = [
        rng.choice([1, 2, 64, 512, 1472, 1473, 3000, 8192]) if i % 3 else rng.randint(1, 8192)
        for i in range(10_000)
    ]
    sock = ns_socket(topology.client_ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect((topology.ustack_addr, 7))
    sock.settimeout(2)
    with ServerProcess(topology, "udp-echo") as srv:
        window = 32
        sent = 0
        got = 0
        pending: Counter[bytes] = Counter()
        while got < len(sizes):
            while sent < len(sizes) and sent - got < window:
                body = (sent.to_bytes(4, "big") + os.urandom(sizes[sent]))[: sizes[sent]]
                pending[body] += 1
                sock.send(body)
                sent += 1
            data = sock.recv(65535)
            assert pending[data] > 0, f"unexpected echo of {len(data)} bytes"
            pending[data] -= 1
            got += 1
    sock.close()
    assert not +pending
    assert srv.counter("udp_in_datagrams") == 10_000
    assert srv.counter("udp_out_datagrams") == 10_000
    assert srv.counter("drop_internal_error") == 0


def test_udp_closed_port_gets_port_unreachable(topology: Topology):
    sock = ns_socket(topology.client_ns)
    sock.connect((topology.ustack_addr, 9999))
    sock.settimeout(2)
    with ServerProcess(topology, "udp-echo") as srv:
        sock.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            sock.recv(100)
    sock.close()
    assert srv.counter("udp_no_ports") == 1
    assert srv.counter("icmp_out_dest_unreachs") == 1


def test_serve_stops_cleanly_on_sigterm_and_prints_counters(topology: Topology):
    with ServerProcess(topology, "udp-echo", "--port", "7007") as srv:
        assert "198.18.0.2/24 port 7007" in srv.ready_line
        time.sleep(0.2)
    assert srv.returncode == 0, srv.output
    assert "counters:" in srv.output
    assert srv.counter("arp_out_gratuitous") == 1


def test_serve_without_topology_fails_with_one_line():
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "ustack", "serve", "udp-echo", "--name", "ust-missing-x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "no network namespace 'ust-missing-x'" in res.stderr


def test_ustack_resolves_kernel_mac_on_first_send(topology: Topology):
    from ustack.runtime import close_context, open_context

    sock = ns_socket(topology.client_ns)
    sock.bind((topology.client_addr, 5353))
    sock.settimeout(0.05)
    ctx = open_context(name=topology.name)
    try:
        ctx.start()
        usock = ctx.stack.udp_socket()
        usock.sendto(b"first contact", (topology.client_addr, 5353))
        data = b""
        deadline = time.monotonic() + 5
        while not data and time.monotonic() < deadline:
            ctx.poll(0.05)
            try:
                data, addr = sock.recvfrom(100)
            except TimeoutError:
                continue
        entries = ctx.stack.neighbours.entries()
        stats = ctx.stack.stats()
    finally:
        close_context(ctx)
        sock.close()
    assert data == b"first contact"
    assert addr == (topology.ustack_addr, usock.port)
    kernel = next(e for e in entries if e[0] == 0xC6120001)
    assert kernel[2] == "REACHABLE"
    # one gratuitous announcement at start, one request to resolve the kernel
    assert (stats["arp_out_gratuitous"], stats["arp_requests_sent"]) == (1, 1)
    assert stats["arp_out_requests"] == 2
    assert stats["arp_resolved"] == 1


def test_ping_64k_echo_reassembled_and_fragmented(topology: Topology):
    with ServerProcess(topology, "udp-echo") as srv:
        res = ns_run(
            topology.client_ns,
            "ping",
            "-c",
            "2",
            "-i",
            "0.3",
            "-s",
            "65000",
            "-W",
            "2",
            topology.ustack_addr,
            check=False,
        )
    assert "2 received, 0% packet loss" in res.stdout, res.stdout
    assert srv.counter("ipv4_reasm_ok") == 2


def test_serve_pcap_records_echo_both_ways(topology: Topology, tmp_path):
    from scapy.layers.inet import ICMP
    from scapy.utils import rdpcap

    path = tmp_path / "serve.pcap"
    with ServerProcess(topology, "udp-echo", "--pcap", str(path)):
        ns_run(topology.client_ns, "ping", "-c", "3", "-i", "0.1", topology.ustack_addr)
    packets = rdpcap(str(path))
    types = [p[ICMP].type for p in packets if p.haslayer(ICMP)]
    assert types.count(8) == 3 and types.count(0) == 3
