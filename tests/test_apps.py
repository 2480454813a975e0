"""echo, discard and kv as `ustack serve APP`, on both stacks.

Each test runs the server as a child process of its own topology, once
per stack: `--stack ustack` (ustack's asyncio loop on the TAP, 198.18.0.2)
and `--stack kernel` (uvloop on kernel sockets in netns N-k, 198.19.0.2).
The clients are kernel sockets in netns N: pymemcache for kv, plain
sockets for echo and discard.  The same assertions hold on both stacks;
the bulk tests (100 connections of 10 MB) run ustack with offloads, for
the reason given at `BULK_ARGS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pymemcache.client.base import Client  # type: ignore[import-untyped]
from pymemcache.exceptions import MemcacheServerError  # type: ignore[import-untyped]

from tests.server import ServerProcess
from ustack import netns
from ustack.apps.runner import read_live_stats
from ustack.topology import Topology

pytestmark = pytest.mark.netns

MB = 1_000_000


class _NetnsSocketModule:
    """The socket module, except that sockets are born in netns `ns`.

    pymemcache reconnects by itself after an error; its sockets must never
    be made in the test runner's own namespace.
    """

    def __init__(self, ns: str) -> None:
        self._ns = ns

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, *args: Any, **kwargs: Any) -> socket.socket:
        with netns.inside(self._ns):
            return socket.socket(*args, **kwargs)

    def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        return socket.getaddrinfo(*args, **kwargs)


@contextlib.contextmanager
def memcache(topo: Topology, host: str | None = None, port: int = 11211) -> Iterator[Client]:
    """A pymemcache client whose sockets live in the client netns."""
    client = Client(
        (host or topo.kernel_addr, port),
        connect_timeout=5,
        timeout=20,
        default_noreply=False,
        socket_module=_NetnsSocketModule(topo.client_ns),
    )
    try:
        yield client
    finally:
        client.close()


def client_socket(topo: Topology, host: str, port: int, kind: int = socket.SOCK_STREAM):
    with netns.inside(topo.client_ns):
        if kind == socket.SOCK_STREAM:
            return socket.create_connection((host, port), timeout=30)
        s = socket.socket(socket.AF_INET, kind)
        s.settimeout(2)
        return s


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_until_closed(sock: socket.socket, limit_s: float = 10) -> bytes:
    sock.settimeout(limit_s)
    out = bytearray()
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return bytes(out)


# -- kv -------------------------------------------------------------------------


def _host(topology: Topology, stack: str) -> str:
    return topology.kernel_addr if stack == "kernel" else topology.ustack_addr


@pytest.mark.parametrize("stack", ["kernel", "ustack"])
def test_kv_every_command_through_pymemcache(topology: Topology, stack: str):
    host = _host(topology, stack)
    with (
        ServerProcess(topology, "kv", "--stack", stack) as srv,
        memcache(topology, host) as mc,
    ):
        assert f"{host} port 11211" in srv.ready_line and f"stack {stack}" in srv.ready_line
        assert mc.set("a", b"1") is True
        assert mc.get("a") == b"1"
        assert mc.add("a", b"2") is False
        assert mc.add("b", b"2") is True
        assert mc.replace("c", b"3") is False
        assert mc.replace("b", b"22") is True
        assert mc.append("b", b"x") is True
        assert mc.prepend("b", b"y") is True
        assert mc.get("b") == b"y22x"
        value, cas = mc.gets("b")
        assert value == b"y22x"
        assert mc.cas("b", b"new", cas) is True
        assert mc.cas("b", b"newer", cas) is False
        assert mc.cas("nothing", b"v", b"1") is None
        assert mc.get("b") == b"new"
        assert mc.set("n", b"10") is True
        assert mc.incr("n", 5) == 15
        assert mc.decr("n", 20) == 0
        assert mc.incr("missing", 1) is None
        assert mc.incr("n", 2**64 - 1) == 2**64 - 1
        assert mc.incr("n", 2) == 1
        assert mc.touch("a", 100) is True
        assert mc.touch("missing", 100) is False
        assert mc.raw_command(b"gat 100 a b missing", b"END\r\n") == (
            b"VALUE a 0 1\r\n1\r\nVALUE b 0 3\r\nnew\r\n"  # raw_command strips END
        )
        assert mc.raw_command(b"gats 100 a", b"END\r\n").startswith(b"VALUE a 0 1 ")
        assert mc.delete("a") is True
        assert mc.delete("a") is False
        assert mc.get("a") is None
        assert mc.version() == b"1.5.0-ustack"
        assert mc.raw_command(b"verbosity 1", b"\r\n") == b"OK"
        stats = mc.stats()
        assert stats[b"cmd_get"] >= 4 and stats[b"curr_items"] == 2
        settings = mc.stats("settings")
        assert settings[b"item_size_max"] == 1 << 20 and settings[b"maxbytes"] == 64 << 20
        assert mc.flush_all() is True
        assert mc.get_many(["b", "n"]) == {}
        # noreply: no answer to wait for, and the effect is there.
        assert mc.set("q", b"1", noreply=True) is True
        assert mc.add("q", b"2", noreply=True) is True
        assert mc.replace("q", b"3", noreply=True) is True
        assert mc.append("q", b"4", noreply=True) is True
        assert mc.prepend("q", b"5", noreply=True) is True
        assert mc.incr("q", 1, noreply=True) is None
        assert mc.touch("q", 100, noreply=True) is True
        assert mc.get("q") == b"535"
        assert mc.delete("q", noreply=True) is True
        assert mc.flush_all(delay=0, noreply=True) is True
        assert mc.get("q") is None
        mc.quit()
    assert srv.returncode == 0
    assert srv.counter("app_conns_accepted") == 1
    assert srv.counter("app_conns_active") == 0
    assert srv.counter("kv_cas_hits") == 1 and srv.counter("kv_cas_badval") == 1


@pytest.mark.parametrize("stack", ["kernel", "ustack"])
def test_kv_multiget_100_keys_and_value_sizes(topology: Topology, stack: str):
    rng = random.Random(6)
    binary = bytes(range(256)) * 3 + b"\r\nEND\r\nVALUE x 0 1\r\n\x00"
    values = {
        "empty": b"",
        "one": b"\n",
        "binary": binary,
        "100k": rng.randbytes(100_000),
        "1m": rng.randbytes(MB),
    }
    with (
        ServerProcess(topology, "kv", "--stack", stack) as srv,
        memcache(topology, _host(topology, stack)) as mc,
    ):
        many = {f"key{i:03d}": rng.randbytes(rng.randrange(0, 2000)) for i in range(100)}
        assert mc.set_many(many) == []
        got = mc.get_many([*many, "absent"])
        assert got == many
        for key, value in values.items():
            assert mc.set(key, value) is True
        assert mc.get_many(list(values)) == values
        for key, value in values.items():
            assert mc.gets(key)[0] == value
        # 1 MiB of value plus memcached's item overhead is past the 1 MiB limit.
        with pytest.raises(MemcacheServerError, match="object too large for cache"):
            mc.set("huge", b"h" * (1 << 20))
        assert mc.get("huge") is None
        assert mc.get("1m") == values["1m"]
    assert srv.counter("kv_store_too_large") == 1


@pytest.mark.parametrize("stack", ["kernel", "ustack"])
def test_kv_item_size_and_memory_limits_from_the_command_line(topology: Topology, stack: str):
    args = ("--stack", stack, "--memory-limit", "2", "--item-size-max", "2m")
    with (
        ServerProcess(topology, "kv", *args) as srv,
        memcache(topology, _host(topology, stack)) as mc,
    ):
        assert mc.set("big", b"b" * (1 << 20)) is True
        for i in range(40):
            assert mc.set(f"k{i}", b"v" * 100_000) is True
        assert mc.get("big") is None  # evicted: the oldest
        assert mc.get("k39") == b"v" * 100_000
        stats = mc.stats()
        assert stats[b"limit_maxbytes"] == 2 << 20
        assert stats[b"bytes"] <= 2 << 20
        assert stats[b"evictions"] >= 20
    assert srv.counter("kv_evictions") >= 20


# How much the server's RSS may grow while the bad clients below are
# connected, the 10 MB line without newline included: 8 MB, less than the
# line, so a server that kept the line (or the junk) would fail.  What may
# legitimately grow: on ustack, each of the 4 extra connections' control
# block buffers (256 KiB receive + 256 KiB send, `TcpConfig`), 2 MiB in
# all, plus the chunks in flight between receive buffer and app (256 KiB
# reads, `ustack.aio.transports.MAX_READ`) and what the allocator keeps of
# them; on the kernel the socket buffers are the kernel's, not the
# process's, and uvloop reads 256 KiB at a time.  Measured: 1-3 MB.
RSS_GROWTH_KB = 8_000


def _app_bytes_in(topo: Topology) -> int:
    """The running server's app_bytes_in (its live counters)."""
    (snap,) = read_live_stats(topo.name)
    return int(snap["counters"]["app_bytes_in"])


@pytest.mark.parametrize("stack", ["kernel", "ustack"])
def test_kv_bad_clients_do_not_hurt_others(topology: Topology, stack: str):
    host = _host(topology, stack)
    with ServerProcess(topology, "kv", "--stack", stack) as srv:
        assert srv.proc is not None
        pid = srv.proc.pid
        idle = client_socket(topology, host, 11211)  # connects and says nothing
        with memcache(topology, host) as mc:
            assert mc.set("k", b"v") is True
            rss_before = rss_kb(pid)

            # 10 MB of junk with no newline: closed after memcached's 2048 bytes.
            junk = client_socket(topology, host, 11211)
            # The server may close it while we are still sending.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                junk.sendall(b"x" * (10 * MB))
            assert read_until_closed(junk) == b""
            junk.close()
            grown = rss_kb(pid) - rss_before
            assert grown < RSS_GROWTH_KB, f"server grew by {grown} kB after the junk line"

            # A 10 MB get line with no newline, then its newline: keys are read as
            # they come, memory stays flat, the connection stays usable.
            getter = client_socket(topology, host, 11211)
            line = b"get " + b"nokey " * (10 * MB // 6)
            consumed = _app_bytes_in(topology) + len(line)
            getter.sendall(line)
            deadline = time.monotonic() + 30
            while _app_bytes_in(topology) < consumed:
                assert time.monotonic() < deadline, "the server did not read the long line"
                time.sleep(0.05)
            # All of the line is in the server, which has not seen its end yet.
            grown = rss_kb(pid) - rss_before
            assert grown < RSS_GROWTH_KB, f"server grew by {grown} kB holding a 10 MB line"
            getter.sendall(b"k\r\nversion\r\n")
            want = b"VALUE k 0 1\r\nv\r\nEND\r\nVERSION 1.5.0-ustack\r\n"
            got = b""
            while len(got) < len(want):
                got += getter.recv(65536)
            assert got == want
            getter.close()

            # Gone in the middle of a value.
            half = client_socket(topology, host, 11211)
            half.sendall(b"set partial 0 0 1000000\r\n" + b"p" * 1000)
            half.close()

            assert mc.get("k") == b"v"
            assert mc.get("partial") is None
            assert mc.set("after", b"ok") is True
            assert mc.get("after") == b"ok"
            grown = rss_kb(pid) - rss_before
            assert grown < RSS_GROWTH_KB, f"server grew by {grown} kB"
        idle.close()
    assert srv.returncode == 0
    assert srv.counter("app_protocol_errors") == 1
    assert srv.counter("app_conns_accepted") == 5
    assert srv.counter("app_conns_active") == 0


# -- echo and discard -------------------------------------------------------------


# 100 connections of bulk data on ustack run with offloads (`--offload`:
# GRO'd segments of up to 64 KB in, TSO out).  Without them every 1448-byte
# segment costs the Python stack its full per-frame price; the 100 kernel
# senders then keep the TAP's queue full, about a quarter of their frames
# are dropped there, and connections wait out exponential retransmission
# backoff (10 s and more) several times per run: 62 s on a quiet machine,
# 96-136 s on a busy one, against 13-31 s with offloads.
BULK_ARGS = {"kernel": (), "ustack": ("--offload",)}
BULK_CONNS = 100
BULK_BLOCK = 1 << 20
BULK_ROUNDS = 10  # 10 MB per connection


def _echo_one(sock: socket.socket, block: bytes, rounds: int) -> tuple[int, str, str]:
    """Send block x rounds while reading the echo; (bytes back, sha256 sent, sha256 back)."""
    sent = hashlib.sha256()
    for _ in range(rounds):
        sent.update(block)

    def send() -> None:
        for _ in range(rounds):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)

    sock.settimeout(120)
    sender = threading.Thread(target=send)
    sender.start()
    back = hashlib.sha256()
    n = 0
    while chunk := sock.recv(1 << 18):
        back.update(chunk)
        n += len(chunk)
    sender.join()
    sock.close()
    return n, sent.hexdigest(), back.hexdigest()


def _discard_one(sock: socket.socket, block: bytes, rounds: int) -> bytes:
    """Send block x rounds, then EOF; what came back before the server closed."""
    sock.settimeout(120)
    for _ in range(rounds):
        sock.sendall(block)
    sock.shutdown(socket.SHUT_WR)
    back = read_until_closed(sock, 120)
    sock.close()
    return back


@pytest.mark.parametrize("stack", ["kernel", "ustack"])
def test_echo_tcp_100_connections_of_10mb_sha256(topology: Topology, stack: str):
    host = _host(topology, stack)
    base = random.Random(7).randbytes(BULK_BLOCK)
    conns = BULK_CONNS
    with ServerProcess(topology, "echo", "--stack", stack, *BULK_ARGS[stack]) as srv:
        assert f"{host} port 7 tcp+udp" in srv.ready_line and f"stack {stack}" in srv.ready_line
        socks = [client_socket(topology, host, 7) for _ in range(conns)]
        # Each connection sends its own rotation of the block, so a mix-up shows.
        blocks = [base[i * 9973 :] + base[: i * 9973] for i in range(conns)]
        with ThreadPoolExecutor(conns) as pool:
            results = list(pool.map(_echo_one, socks, blocks, [BULK_ROUNDS] * conns))
    per_conn = BULK_ROUNDS * BULK_BLOCK
    for n, sent, back in results:
        assert n == per_conn
        assert sent == back
    assert srv.counter("app_conns_accepted") == conns
    assert srv.counter("app_conns_active") == 0
    assert srv.counter("app_bytes_in") == conns * per_conn
    assert srv.counter("app_bytes_out") == conns * per_conn
    if stack == "ustack":
        assert srv.counter("tcp_passive_opens") == conns


@pytest.mark.parametrize("stack", ["kernel", "ustack"])
def test_discard_tcp_100_connections_of_10mb(topology: Topology, stack: str):
    host = _host(topology, stack)
    block = random.Random(9).randbytes(BULK_BLOCK)
    conns = BULK_CONNS
    with ServerProcess(topology, "discard", "--stack", stack, *BULK_ARGS[stack]) as srv:
        assert f"{host} port 9 tcp+udp" in srv.ready_line and f"stack {stack}" in srv.ready_line
        socks = [client_socket(topology, host, 9) for _ in range(conns)]
        with ThreadPoolExecutor(conns) as pool:
            backs = list(pool.map(_discard_one, socks, [block] * conns, [BULK_ROUNDS] * conns))
    # Nothing comes back, and the server closes each connection after its EOF.
    assert backs == [b""] * conns
    assert srv.counter("app_conns_accepted") == conns
    assert srv.counter("app_conns_active") == 0
    assert srv.counter("app_bytes_in") == conns * BULK_ROUNDS * BULK_BLOCK
    assert srv.counter("app_bytes_out") == 0


@pytest.mark.parametrize("stack", ["kernel", "ustack"])
def test_echo_and_discard_udp(topology: Topology, stack: str):
    host = _host(topology, stack)
    with ServerProcess(topology, "echo", "--stack", stack, "--port", "7007") as srv:
        s = client_socket(topology, host, 7007, socket.SOCK_DGRAM)
        sizes = [0, 1, 100, 1472, 8000, 65507]
        for size in sizes:
            payload = random.Random(size).randbytes(size)
            s.sendto(payload, (host, 7007))
            data, addr = s.recvfrom(65535)
            assert data == payload
            assert addr == (host, 7007)
        s.close()
    assert srv.counter("app_datagrams_in") == srv.counter("app_datagrams_out") == len(sizes)

    with ServerProcess(topology, "discard", "--stack", stack) as srv:
        s = client_socket(topology, host, 9, socket.SOCK_DGRAM)
        for i in range(5):
            s.sendto(b"drop me %d" % i, (host, 9))
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recvfrom(100)
        s.close()
        time.sleep(0.1)
    assert srv.counter("app_datagrams_in") == 5
    assert srv.counter("app_datagrams_out") == 0


def test_serve_errors_are_one_line():
    for args, message in [
        (["kv", "--stack", "kernel", "--workers", "2"], "--workers > 1 is for --stack ustack"),
        (["udp-echo", "--stack", "kernel"], "udp-echo runs on ustack's native API only"),
        (["kv", "--stack", "kernel", "--fault", "loss=0.1"], "--pcap, --fault and --offload apply"),
        (["echo", "--stack", "kernel", "--port", "0"], "--port must be 1..65535"),
        (["kv", "--stack", "kernel", "--memory-limit", "0"], "--memory-limit must be"),
    ]:
        res = subprocess.run(
            [sys.executable, "-m", "ustack", "serve", *args, "--name", "no-such-topology"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 1
        assert res.stderr.strip().count("\n") == 0 and message in res.stderr, res.stderr


# -- stopping and live counters -----------------------------------------------------


_FINAL_COUNTER = re.compile(r"^\s{4}(\S+)\s+(-?[\d.]+)$", re.M)


@pytest.mark.parametrize("stack", ["kernel", "ustack"])
def test_serve_sigint_stops_cleanly_and_prints_final_counters(topology: Topology, stack: str):
    # Ctrl-C (SIGINT) ends a server as SIGTERM does: open connections closed, the
    # final counters printed, exit status 0, no traceback.
    host = _host(topology, stack)
    with ServerProcess(topology, "kv", "--stack", stack) as srv:
        assert srv.proc is not None
        with memcache(topology, host) as mc:
            assert mc.set("a", b"1") is True
            assert mc.get("a") == b"1"
            assert mc.get("b") is None
            idle = client_socket(topology, host, 11211)  # still open at the signal
            srv.proc.send_signal(signal.SIGINT)
            out, err = srv.proc.communicate(timeout=20)
            srv.returncode = srv.proc.returncode  # so that leaving the block stops nothing
            assert read_until_closed(idle) == b""  # the server closed it on its way out
            idle.close()
    assert srv.returncode == 0, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "ustack kv stopped; counters:" in out
    final = {k: float(v) for k, v in _FINAL_COUNTER.findall(out)}
    assert final["app_conns_accepted"] == 2 and final["app_conns_active"] == 0
    assert final["app_requests"] == 3
    assert final["kv_cmd_set"] == 1 and final["kv_get_hits"] == 1 and final["kv_get_misses"] == 1
    if stack == "ustack":
        assert final["tcp_passive_opens"] == 2


def _ustack_mac(topo: Topology) -> str:
    """ustack's MAC as the client netns learnt it (ARP) when it last talked to it."""
    res = subprocess.run(
        ["ip", "-n", topo.client_ns, "neigh", "show", topo.ustack_addr, "dev", topo.tap],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"lladdr ([0-9a-f:]{17})", res.stdout)
    assert m is not None, res.stdout
    return m.group(1)


def _send_frame(topo: Topology, frame: bytes) -> None:
    """One raw Ethernet frame into the TAP from the client netns."""
    with netns.inside(topo.client_ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with s:
        s.bind((topo.tap, 0))
        s.send(frame)


def _ustack_stats(topo: Topology, *extra: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "ustack", "stats", "--name", topo.name, *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_stats_shows_drop_reason_counters(topology: Topology):
    # Two drops provoked from the client netns, each then named in `ustack stats`
    # with its count: a SYN to a port nobody listens on (answered with RST) and an
    # IPv4 packet whose header checksum is wrong (a malformed frame, built by scapy).
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether

    host = topology.ustack_addr
    with ServerProcess(topology, "echo", "--stack", "ustack") as srv:
        with pytest.raises(ConnectionRefusedError):
            client_socket(topology, host, 4444)
        pkt = IP(src=topology.client_addr, dst=host, chksum=0xBAD) / ICMP(id=7, seq=1)
        frame = Ether(dst=_ustack_mac(topology), src="02:00:00:00:00:01") / pkt
        assert IP(bytes(pkt)).chksum == 0xBAD  # scapy kept the wrong checksum
        _send_frame(topology, bytes(frame))
        deadline = time.monotonic() + 10
        while True:
            text = _ustack_stats(topology)
            if "drop_ipv4_bad_checksum" in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        lines = text.splitlines()
        assert re.match(r"echo pid \d+ on 198\.18\.0\.2 port 7 \(stack ustack, mode poll", lines[0])
        listed = dict(_FINAL_COUNTER.findall(text))
        assert listed["drop_ipv4_bad_checksum"] == "1", text
        assert listed["tcp_no_port"] == "1" and listed["tcp_out_rsts"] == "1", text
        # Grouped by layer: the IPv4 drop under "ipv4:", the closed port under "tcp:".
        ipv4, tcp = lines.index("ipv4:"), lines.index("tcp:")
        assert ipv4 < next(i for i, ln in enumerate(lines) if "drop_ipv4_bad_checksum" in ln)
        assert tcp < next(i for i, ln in enumerate(lines) if "tcp_no_port" in ln)
        (snap,) = json.loads(_ustack_stats(topology, "--json"))
        assert snap["counters"]["drop_ipv4_bad_checksum"] == 1
        assert snap["counters"]["tcp_no_port"] == 1
        assert snap["counters"].get("icmp_in_echos", 0) == 0  # never got that far
    assert srv.returncode == 0
    assert srv.counter("drop_ipv4_bad_checksum") == 1  # and in the final counters


def test_serve_fault_option_impairs_the_link_and_the_echo_survives(topology: Topology):
    """`ustack serve --fault`: seeded loss, duplication, reordering and corruption both ways."""
    spec = "loss=0.03,dup=0.02,reorder=0.03,corrupt=0.002,seed=11"
    block = random.Random(11).randbytes(BULK_BLOCK)
    with ServerProcess(topology, "echo", "--fault", spec) as srv:
        sock = client_socket(topology, topology.ustack_addr, 7)
        with sock:
            n, sent, back = _echo_one(sock, block, 3)
    assert n == 3 * BULK_BLOCK and sent == back
    # The faults really happened, in both directions, and TCP repaired them.
    for d in ("rx", "tx"):
        for what in ("dropped", "duplicated", "reordered", "corrupted"):
            assert srv.counter(f"dev_fault_{d}_{what}") > 0, (d, what)
    assert srv.counter("dev_fault_seed") == 11
    # Frames corrupted on the way in were caught by a check and dropped, counted.
    wire_drops = sum(
        v for k, v in srv.counters.items() if k.startswith(("drop_eth_", "drop_ipv4_", "drop_tcp_"))
    )
    assert wire_drops > 0
