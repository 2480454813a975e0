"""The pcap writer records every frame in and out, readable by scapy/tshark."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from tests.kernel import USTACK_MAC, add_static_neigh, attach, ns_socket, tap_mac
from ustack.dev import PcapWriter
from ustack.topology import Topology

pytestmark = pytest.mark.netns


def test_pcap_records_rx_and_tx_frames_exactly(topology: Topology, tmp_path):
    add_static_neigh(topology)
    kmac = tap_mac(topology)
    path = str(tmp_path / "ring.pcap")
    out = bytes(
        Ether(dst=kmac, src=USTACK_MAC)
        / IP(src="198.18.0.2", dst="198.18.0.1")
        / UDP(sport=1, dport=2)
        / b"out"
    )
    with attach(topology) as ring:
        ring.pcap = PcapWriter(path)
        sock = ns_socket(topology.client_ns)
        for i in range(5):
            sock.sendto(b"in%d" % i, (topology.ustack_addr, 9))
        sock.close()
        received: list[bytes] = []
        deadline = time.monotonic() + 3
        while len(received) < 5 and time.monotonic() < deadline:
            n = ring.rx_burst(32)
            received += [bytes(ring.frame(i)) for i in range(n)]
            if not n:
                ring.wait(20)
        slot = ring.tx_alloc()
        off = ring.tx_offset(slot)
        ring.pool[off : off + len(out)] = out
        ring.tx_submit(slot, len(out))
        assert ring.tx_burst() == 1
        ring.pcap.close()
    packets = rdpcap(path)
    assert [bytes(p) for p in packets] == [*received, out]
    assert all(p.haslayer(Ether) for p in packets)


def test_pcap_snaplen_truncates_but_keeps_original_length(tmp_path):
    path = str(tmp_path / "snap.pcap")
    w = PcapWriter(path, snaplen=16)
    w.write_frame(bytes(range(40)), ts_ns=1_500_000_000_123_456_789)
    w.close()
    with open(path, "rb") as f:
        raw = f.read()
    assert len(raw) == 24 + 16 + 16
    header = b"".join(v.to_bytes(4, "little") for v in (1_500_000_000, 123_456, 16, 40))
    assert raw[24:40] == header
    assert raw[40:] == bytes(range(16))
