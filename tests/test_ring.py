"""The C ring against a real TAP, with the Linux kernel on the other side."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.kernel import (
    USTACK_MAC,
    add_static_neigh,
    attach,
    delete_link,
    ns_socket,
    snmp_counter,
    tap_mac,
)
from ustack.dev.ring import (
    OFFLOAD_CSUM,
    OFFLOAD_TSO4,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    Ring,
    VnetHeader,
)
from ustack.errors import (
    BadDeviceNameError,
    DeviceGoneError,
    DeviceNotFoundError,
    PoolExhaustedError,
)
from ustack.topology import Topology
from ustack.wire.checksum import checksum

pytestmark = pytest.mark.netns


def drain(ring: Ring, want: int, timeout: float = 5.0) -> list[bytes]:
    """Frames (as bytes) until `want` IPv4 frames arrived or the timeout."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        n = ring.rx_burst(64)
        if not n:
            ring.wait(50)
        out.extend(bytes(ring.frame(i)) for i in range(n))
    return out


def send_frames(ring: Ring, frames: list[bytes]) -> int:
    for f in frames:
        slot = ring.tx_alloc()
        off = ring.tx_offset(slot)
        ring.pool[off : off + len(f)] = f
        ring.tx_submit(slot, len(f))
    return ring.tx_burst()


def test_ring_udp_from_kernel_arrives_byte_exact(topology: Topology):
    add_static_neigh(topology)
    kmac = tap_mac(topology)
    with attach(topology) as ring:
        sock = ns_socket(topology.client_ns)
        sock.bind((topology.client_addr, 40000))
        payloads = [bytes([i]) * (1 + 97 * i) for i in range(10)]
        for p in payloads:
            sock.sendto(p, (topology.ustack_addr, 7))
        frames = drain(ring, 10)
        sock.close()
    udp = [Ether(f) for f in frames if Ether(f).haslayer(UDP)]
    assert len(udp) == 10
    for pkt, payload in zip(udp, payloads, strict=True):
        expected = (
            Ether(dst=USTACK_MAC, src=kmac)
            / IP(
                src=topology.client_addr,
                dst=topology.ustack_addr,
                id=pkt[IP].id,
                flags="DF",
                ttl=64,
            )
            / UDP(sport=40000, dport=7)
            / payload
        )
        assert bytes(pkt) == bytes(expected)


def test_ring_icmp_from_kernel_has_valid_checksums(topology: Topology):
    add_static_neigh(topology)
    with attach(topology) as ring:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                topology.client_ns,
                "ping",
                "-c",
                "3",
                "-i",
                "0.05",
                "-W",
                "0.2",
                "-p",
                "a5",
                topology.ustack_addr,
            ],
            capture_output=True,
            check=False,
        )
        frames = [Ether(f) for f in drain(ring, 3, timeout=2)]
    echoes = [p for p in frames if p.haslayer(ICMP) and p[ICMP].type == 8]
    assert len(echoes) == 3
    for p in echoes:
        rebuilt = p.copy()
        del rebuilt[IP].chksum
        del rebuilt[ICMP].chksum
        assert bytes(Ether(bytes(rebuilt))) == bytes(p)
        assert bytes(p[ICMP].payload).endswith(b"\xa5" * 8)


def test_ring_tx_burst_reaches_kernel_udp_socket(topology: Topology):
    kmac = tap_mac(topology)
    sock = ns_socket(topology.client_ns)
    sock.bind((topology.client_addr, 5555))
    sock.settimeout(2)
    frames = [
        bytes(
            Ether(dst=kmac, src=USTACK_MAC)
            / IP(src=topology.ustack_addr, dst=topology.client_addr, id=i)
            / UDP(sport=7000 + i, dport=5555)
            / (b"%04d" % i * (i + 1))
        )
        for i in range(100)
    ]
    with attach(topology) as ring:
        assert send_frames(ring, frames) == 100
        got = {}
        for _ in range(100):
            data, addr = sock.recvfrom(4096)
            got[addr[1] - 7000] = data
        stats = ring.stats()
    sock.close()
    assert sorted(got) == list(range(100))
    assert all(got[i] == b"%04d" % i * (i + 1) for i in range(100))
    assert stats["tx_frames"] == 100
    assert stats["tx_bytes"] == sum(len(f) for f in frames)
    assert stats["tx_bursts"] == 1


def test_ring_one_burst_returns_many_frames(topology: Topology):
    add_static_neigh(topology)
    with attach(topology) as ring:
        sock = ns_socket(topology.client_ns)
        for _ in range(200):
            sock.sendto(b"x" * 10, (topology.ustack_addr, 9))
        sock.close()
        time.sleep(0.05)
        first = ring.rx_burst(128)
        second = ring.rx_burst(128)
        stats = ring.stats()
    assert (first, second) == (128, 72)
    assert stats["rx_bursts"] == 2
    assert stats["rx_frames"] == 200
    assert stats["rx_bytes"] == 200 * (14 + 20 + 8 + 10)


def test_ring_wait_times_out_then_wakes(topology: Topology):
    add_static_neigh(topology)
    with attach(topology) as ring:
        t0 = time.monotonic()
        assert ring.wait(100) is False
        assert time.monotonic() - t0 >= 0.09
        sock = ns_socket(topology.client_ns)
        sock.sendto(b"wake", (topology.ustack_addr, 9))
        sock.close()
        assert ring.wait(1000) is True
        assert ring.rx_burst(8) == 1
        stats = ring.stats()
    assert (stats["waits"], stats["wakeups"]) == (2, 1)


def test_ring_pool_exhausted_raises_and_counts(topology: Topology):
    with attach(topology, tx_slots=4) as ring:
        slots = [ring.tx_alloc() for _ in range(4)]
        assert len(set(slots)) == 4
        with pytest.raises(PoolExhaustedError, match="all 4 transmit slots"):
            ring.tx_alloc()
        assert ring.stats()["tx_pool_exhausted"] == 1
        ring.tx_free(slots[0])
        assert ring.tx_alloc() == slots[0]


def test_ring_tx_burst_returns_slots_to_pool(topology: Topology):
    kmac = tap_mac(topology)
    frame = bytes(
        Ether(dst=kmac, src=USTACK_MAC) / IP(src="198.18.0.2", dst="198.18.0.1") / UDP() / b"z"
    )
    with attach(topology, tx_slots=8) as ring:
        for _ in range(50):
            assert send_frames(ring, [frame] * 8) == 8
        assert ring.tx_free_count() == 8
        assert ring.stats()["tx_frames"] == 400


def test_ring_device_vanishes_raises_and_counts(topology: Topology):
    with attach(topology) as ring:
        delete_link(topology.client_ns, topology.tap)
        with pytest.raises(DeviceGoneError, match="is gone"):
            ring.rx_burst(8)
        assert ring.stats()["drop_rx_error"] == 1
        slot = ring.tx_alloc()
        ring.tx_submit(slot, 60)
        with pytest.raises(DeviceGoneError):
            ring.tx_burst()
        assert ring.stats()["drop_tx_error"] == 1
        assert ring.tx_free_count() == ring.tx_slots


def test_ring_open_errors_are_clear(topology: Topology):
    with pytest.raises(BadDeviceNameError, match="bad interface name"):
        Ring("bad/name", namespace=topology.client_ns)
    with pytest.raises(BadDeviceNameError):
        Ring("x" * 20, namespace=topology.client_ns)
    with pytest.raises(DeviceNotFoundError, match="no TAP device 'nosuchtap'"):
        Ring("nosuchtap", namespace=topology.client_ns)
    with pytest.raises(DeviceNotFoundError, match="no network namespace"):
        Ring(topology.tap, namespace=topology.client_ns + "-missing")
    with pytest.raises(ValueError, match="offloads need vnet_hdr"):
        Ring(topology.tap, namespace=topology.client_ns, offloads=OFFLOAD_CSUM)


def test_ring_open_without_privilege_raises_permission_error(topology: Topology):
    code = (
        "import os, sys\n"
        "from ustack.dev.ring import Ring\n"
        "from ustack.errors import DevicePermissionError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    Ring({topology.tap!r})\n"
        "except DevicePermissionError as e:\n"
        "    print('permission:', e); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    import sys

    res = subprocess.run(
        ["ip", "netns", "exec", topology.client_ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "needs root or CAP_NET_ADMIN" in res.stdout


# -- virtio-net headers ---------------------------------------------------


def test_vnet_rx_udp_checksum_partial_described(topology: Topology):
    add_static_neigh(topology)
    with Ring(
        topology.tap, namespace=topology.client_ns, vnet_hdr=True, offloads=OFFLOAD_CSUM
    ) as ring:
        sock = ns_socket(topology.client_ns)
        sock.sendto(b"partial" * 10, (topology.ustack_addr, 9))
        sock.close()
        assert drain(ring, 1)
        hdr = ring.rx_vnet(0)
        frame = bytes(ring.frame(0))
    assert hdr.flags & VNET_F_NEEDS_CSUM
    assert hdr.gso_type == VNET_GSO_NONE
    assert (hdr.csum_start, hdr.csum_offset) == (14 + 20, 6)
    # The field holds the pseudo-header sum; summing from csum_start with it
    # in place completes the checksum, which must equal scapy's.
    pkt = Ether(frame)
    del pkt[UDP].chksum
    assert (
        checksum(frame, hdr.csum_start, len(frame) - hdr.csum_start)
        == Ether(bytes(pkt))[UDP].chksum
    )


def _udp_frame_with_bad_checksum(kmac: str, dport: int) -> bytes:
    pkt = (
        Ether(dst=kmac, src=USTACK_MAC)
        / IP(src="198.18.0.2", dst="198.18.0.1")
        / UDP(sport=9, dport=dport)
        / b"needs-csum"
    )
    raw = bytearray(bytes(pkt))
    raw[14 + 20 + 6 : 14 + 20 + 8] = b"\x12\x34"
    return bytes(raw)


def test_vnet_tx_needs_csum_frame_accepted_only_with_flag(topology: Topology):
    kmac = tap_mac(topology)
    sock = ns_socket(topology.client_ns)
    sock.bind((topology.client_addr, 6000))
    sock.settimeout(0.5)
    frame = _udp_frame_with_bad_checksum(kmac, 6000)
    with Ring(
        topology.tap, namespace=topology.client_ns, vnet_hdr=True, offloads=OFFLOAD_CSUM
    ) as ring:
        before = snmp_counter(topology.client_ns, "Udp", "InCsumErrors")
        send_frames(ring, [frame])  # vnet header zeroed by tx_alloc: no offload asked
        with pytest.raises(TimeoutError):
            sock.recvfrom(100)
        assert snmp_counter(topology.client_ns, "Udp", "InCsumErrors") == before + 1

        slot = ring.tx_alloc()
        off = ring.tx_offset(slot)
        ring.pool[off : off + len(frame)] = frame
        ring.tx_set_vnet(slot, VnetHeader(flags=VNET_F_NEEDS_CSUM, csum_start=34, csum_offset=6))
        ring.tx_submit(slot, len(frame))
        assert ring.tx_burst() == 1
        data, _ = sock.recvfrom(100)
    sock.close()
    assert data == b"needs-csum"


def _kernel_tcp_data_frame(
    topology: Topology, ring: Ring, port: int
) -> tuple[bytes, VnetHeader | None]:
    """Play a TCP server by hand: answer the kernel's SYN, return its first data frame."""
    kmac = tap_mac(topology)
    done = threading.Event()

    def client() -> None:
        s = ns_socket(topology.client_ns, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect((topology.ustack_addr, port))
            s.setblocking(False)
            s.send(b"a" * 200_000)
            done.wait(10)
        except OSError:
            pass
        finally:
            s.close()

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 5
        syn = None
        while time.monotonic() < deadline:
            n = ring.rx_burst(32)
            if not n:
                ring.wait(20)
            for i in range(n):
                pkt = Ether(bytes(ring.frame(i)))
                if not pkt.haslayer(TCP) or pkt[TCP].dport != port:
                    continue
                if syn is None and pkt[TCP].flags == "S":
                    syn = pkt
                    synack = (
                        Ether(dst=kmac, src=USTACK_MAC)
                        / IP(src=topology.ustack_addr, dst=topology.client_addr)
                        / TCP(
                            sport=port,
                            dport=syn[TCP].sport,
                            flags="SA",
                            seq=1000,
                            ack=syn[TCP].seq + 1,
                            window=65535,
                            options=[("MSS", 1460)],
                        )
                    )
                    send_frames(ring, [bytes(synack)])
                elif syn is not None and len(pkt[TCP].payload) > 0:
                    vnet = ring.rx_vnet(i) if ring.vnet_hdr_len else None
                    return bytes(ring.frame(i)), vnet
        raise AssertionError("no TCP data frame from the kernel")
    finally:
        done.set()
        t.join(10)


def test_vnet_rx_tso_superframe_described(topology: Topology):
    add_static_neigh(topology)
    offloads = OFFLOAD_CSUM | OFFLOAD_TSO4
    with attach(topology, vnet_hdr=True, offloads=offloads) as ring:
        frame, hdr = _kernel_tcp_data_frame(topology, ring, 8080)
    assert hdr is not None
    assert hdr.gso_type == VNET_GSO_TCPV4
    assert hdr.gso_size == 1460
    assert hdr.flags & VNET_F_NEEDS_CSUM
    assert (hdr.csum_start, hdr.csum_offset) == (34, 16)
    assert len(frame) > 1514  # several MSS-sized segments in one frame


def test_ring_without_vnet_clears_offloads_left_on_persistent_tap(topology: Topology):
    add_static_neigh(topology)
    offloads = OFFLOAD_CSUM | OFFLOAD_TSO4
    with attach(topology, vnet_hdr=True, offloads=offloads):
        pass
    with attach(topology) as ring:
        frame, hdr = _kernel_tcp_data_frame(topology, ring, 8081)
    assert hdr is None
    assert len(frame) <= 1514


def test_ring_two_queues_share_flows_of_one_tap(topology: Topology):
    add_static_neigh(topology)
    with (
        attach(topology) as q0,
        attach(topology) as q1,
    ):
        sock = ns_socket(topology.client_ns)
        for port in range(20000, 20064):  # 64 flows, hashed across the queues
            sock.sendto(b"f", (topology.ustack_addr, port))
        sock.close()
        time.sleep(0.05)
        counts = [q.rx_burst(128) for q in (q0, q1)]
    assert sum(counts) == 64
    assert min(counts) > 0, f"one queue got nothing: {counts}"
