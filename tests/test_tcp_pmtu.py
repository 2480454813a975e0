"""Path MTU discovery (RFC 1191) with the Linux kernel as the router and the peer.

ustack runs tests/tcp_peer.py as a client (``client-source``) with
198.18.0.1 as its gateway and connects to a kernel server in the baseline
namespace N-k (198.19.0.2), routed through N (`route_kernel_ns`).  The veth
between N and N-k gets an MTU of 1280 on both ends (`narrow_kernel_link`),
while the server still announces MSS 1460 (its route carries advmss 1460,
as a server on a LAN wider than a hop further along would), so ustack's
full-sized segments are 1500-byte datagrams with DF set.  N's kernel cannot
forward them and answers each with ICMP fragmentation needed, next-hop MTU
1280.  ustack must lower its MSS to 1280 - 40 = 1240 (1228 bytes of data
with timestamps) and send the flight again; without that every full-sized
segment, and every retransmission of it, is dropped, and the transfer
stalls until the peer gives up (checked by hand: with
`TcpLayer.on_frag_needed` made a no-op through TCP_PEER_SCRIPT, both cases
time out after 30 s with not one byte delivered).

Each case sends 4 MB from ustack to the kernel and compares SHA-256 at the
kernel end.  A clean transfer of that size takes well under a second here;
the bound leaves room for a loaded 2-core machine.
"""

from __future__ import annotations

import time

import pytest

from tests.kernel import snmp_counter
from tests.tcpharness import (
    PeerProcess,
    kernel_accept,
    kernel_exchange,
    kernel_server,
    narrow_kernel_link,
    payload_sha256,
    route_kernel_ns,
)
from ustack.topology import Topology

pytestmark = pytest.mark.netns

PORT = 5301
SEED = 33
NBYTES = 4_000_000
NARROW_MTU = 1280
BOUND_S = 30.0
"""The transfer's bound; a stalled one (no PMTU handling) never ends."""


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "tso"])
def test_tcp_client_learns_path_mtu_from_router_icmp(topology: Topology, offload: bool) -> None:
    topo = topology
    route_kernel_ns(topo)
    narrow_kernel_link(topo, NARROW_MTU, advmss=1460)
    icmp_before = snmp_counter(topo.client_ns, "Icmp", "OutDestUnreachs")
    listener = kernel_server(topo, PORT)
    try:
        with PeerProcess(
            topo,
            "client-source",
            port=PORT,
            host=topo.kernel_addr,
            gateway=topo.client_addr,
            bytes=NBYTES,
            seed=SEED,
            offload=offload,
            timeout=BOUND_S + 15,
        ) as peer:
            t0 = time.monotonic()
            sock = kernel_accept(listener, timeout=30)
            kr = kernel_exchange(sock, None, timeout=BOUND_S)
            elapsed = time.monotonic() - t0
            report = peer.finish(timeout=30)
    finally:
        listener.close()
    conn = report["conn"]
    stats = report["stats"]
    icmp_sent = snmp_counter(topo.client_ns, "Icmp", "OutDestUnreachs") - icmp_before
    print(
        f"\npmtu offload={offload}: {NBYTES} bytes in {elapsed:.2f} s; router ICMPs {icmp_sent}; "
        f"tcp_pmtu_updates {stats.get('tcp_pmtu_updates')}, not lower "
        f"{stats.get('drop_tcp_pmtu_not_lower', 0)}, out of window "
        f"{stats.get('drop_icmp_frag_needed_out_of_window', 0)}; smss {conn['smss']}, "
        f"pmtu {conn['pmtu']}, retransmits {conn['retransmits']}, rtos {conn['rtos']}, "
        f"cwnd {conn['cwnd']}"
    )
    assert kr.bytes_in == NBYTES and kr.sha256_in == payload_sha256(SEED, NBYTES)
    assert report["bytes_out"] == NBYTES and report["error"] is None
    assert report["offload"] is offload
    # The router said so, and ustack listened: MSS 1280 - 40 = 1240, less
    # the 12 bytes of the timestamp option on every segment.
    assert icmp_sent >= 1
    assert stats["icmp_in_frag_needed"] >= 1
    assert stats["tcp_pmtu_updates"] >= 1
    assert conn["pmtu"] == NARROW_MTU
    assert conn["smss"] == NARROW_MTU - 40 - 12
    assert stats.get("drop_icmp_frag_needed_no_conn", 0) == 0
    assert stats.get("drop_internal_error", 0) == 0
    assert elapsed <= BOUND_S
