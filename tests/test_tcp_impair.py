"""Integrity of ustack TCP under impairment, with the Linux kernel as the peer.

Each test moves 20 MB one way (kernel to ustack, or ustack to kernel) over
one connection and compares SHA-256 digests at both ends; ustack runs in
its own process (tests/tcp_peer.py).  The kernel end is a socket in the
baseline namespace N-k (198.19.0.2), routed to ustack through N, so that
the link can be impaired between them in two ways:

- in the kernel: nftables in N drops TCP at random (``numgen random mod
  1000 < N drop``) in the prerouting hook, each way (tcpharness.impair).
  The hook sees both senders' packets after they left, so a drop is a
  loss on the wire.  Dropping in the sending kernel's own output hook would
  not be: its TCP gets the local error and sends the segment again as if
  it had never left, and the receiver never sees a hole (seen here: 176
  drops, 0 holes).  Without offloads the kernel's veth is set to one
  segment per GSO packet, so the rate is per segment; with offloads a drop
  is a whole superframe of up to 44 segments;
- in ustack: the seeded FaultDevice (ustack/dev/fault.py) for delay,
  reordering, duplication and corruption, both directions.

Time bounds
-----------

The transfer time is measured from the kernel's connect to its seeing both
FINs.  Link parameters: MSS 1448 bytes, so 20 MB is N = 13,812 segments;
the clean TAP link's smoothed RTT is 0.3-1.5 ms (the Python stack's
processing, not the wire), so RTT = 1 ms below; ustack's min RTO is 200 ms
(Linux's too); ustack's buffers are 256 KB.  Models, with p the loss rate
each way and b = 2 segments per ACK:

- Mathis et al.: rate = MSS / RTT * 1.22 / sqrt(p) (congestion avoidance
  only, no timeouts).
- Padhye et al. (PFTK), which adds timeouts:
  rate = 1 / (RTT sqrt(2bp/3) + RTO min(1, 3 sqrt(3bp/8)) p (1 + 32p^2))
  segments per second.  A sender without tail-loss probes or RACK (ustack:
  see tcb.py "Not implemented") is in this regime: at 5% loss a flight of
  a few segments whose ACKs are all lost, or whose retransmission is lost,
  waits for the RTO; 55-90 RTOs per 20 MB were counted, 85-90% of the time.

| scenario (each way)       | model estimate                          | measured s   | bound s |
|---------------------------|-----------------------------------------|--------------|---------|
| clean                     | CPU-bound (~100 MB/s measured)          | 0.2-0.4      | 15      |
| clean, offloads           | CPU-bound                               | 0.1          | 15      |
| (a) 1% loss               | Mathis 17.7 MB/s: 1.1; PFTK 2.3 MB/s: 9 | 0.7-2.4      | 15      |
| (a) 1% loss, offloads     | as above, fewer but larger losses       | 0.1-1.0      | 15      |
| (b) 5% loss, to ustack    | PFTK 222 KB/s: 90 (Linux sender: RACK,  | 1.0-4.1      | 15      |
|                           | TLP keep it far below)                  |              |         |
| (b) 5% loss, to kernel    | PFTK 222 KB/s: 90                       | 12-27        | 90      |
| (c) 20 ms delay each way, | to ustack (Linux sender tolerates       | 3.6          | 15      |
|     5% reordering         | reordering): window 256 KB / 42 ms =    |              |         |
|                           | 6.2 MB/s: 3.2                           |              |         |
| (c) same, to kernel       | ustack's sender takes a frame displaced | 48-49        | 150     |
|                           | by 3 (1/3 of reorders) for a loss and   |              |         |
|                           | has no undo: p = 0.05/3, RTT 42 ms,     |              |         |
|                           | Mathis 325 KB/s: 61                     |              |         |
| (d) 1% duplication        | no loss: CPU-bound                      | 0.2-0.4      | 15      |
| (e) 0.1% corruption       | p = 0.001: Mathis 56 MB/s, CPU-bound    | 0.2-0.5      | 15      |

Bounds are about 3x the slowest run measured, and at least 15 s: slack
for a 2-core VM where the kernel, the ustack process, the test process and
whatever else runs share two CPUs (connect retries after a lost SYN alone
cost 1 s each).  The soak runs (``make soak``: SOAK_BYTES, 200 MB by
default) scale each bound with the size.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.kernel import snmp_counter
from tests.tcpharness import (
    TO_KERNEL,
    TO_USTACK,
    PeerProcess,
    impair,
    kernel_client,
    kernel_exchange,
    payload_chunks,
    payload_sha256,
    route_kernel_ns,
)
from ustack.topology import Topology
from ustack.wire.drop import Drop

pytestmark = pytest.mark.netns

PORT = 5001
SEED = 20
NBYTES = 20_000_000
SOAK_DEFAULT = 200_000_000
FLOOR_S = 15.0
BOUND_5 = 90.0
"""(b) to the kernel: 12-27 s measured in 14 runs; 90 s is the PFTK estimate
and over 3x the slowest run."""

# Wire-level drops that a corrupted IPv4/TCP frame can end in: a header
# field checked before the checksum, or the checksum itself.
WIRE_DROPS = frozenset(d.value for d in Drop if d.value.startswith(("drop_ipv4_", "drop_tcp_")))


@dataclass(frozen=True)
class Scenario:
    name: str
    bound_to_ustack_s: float = FLOOR_S
    bound_to_kernel_s: float = FLOOR_S
    drop_permille: int = 0
    fault: str | None = None
    offload: bool = False


SCENARIOS = [
    Scenario("clean"),
    Scenario("clean-offload", offload=True),
    Scenario("loss1", drop_permille=10),
    Scenario("loss1-offload", drop_permille=10, offload=True),
    Scenario("loss5", drop_permille=50, bound_to_kernel_s=BOUND_5),
    Scenario(
        "delay20ms-reorder5",
        fault="delay=20ms,reorder=0.05,seed=1",
        bound_to_kernel_s=150.0,
    ),
    Scenario("dup1", fault="dup=0.01,seed=1"),
    Scenario("corrupt0.1", fault="corrupt=0.001,seed=1"),
]


def _params(soak: bool) -> list[Any]:
    out: list[Any] = []
    scale = _soak_bytes() / NBYTES if soak else 1.0
    for sc in SCENARIOS:
        for direction in (TO_USTACK, TO_KERNEL):
            bound = sc.bound_to_ustack_s if direction == TO_USTACK else sc.bound_to_kernel_s
            marks = [pytest.mark.timeout(int(bound * scale) + 120)]
            if soak:
                marks.append(pytest.mark.soak)
                marks.append(
                    pytest.mark.skipif(
                        not os.environ.get("SOAK_BYTES"),
                        reason="soak run: SOAK_BYTES sets the size (make soak)",
                    )
                )
            name = f"{sc.name}-{direction}" + ("-soak" if soak else "")
            out.append(pytest.param(sc, direction, bound * scale, id=name, marks=marks))
    return out


def _soak_bytes() -> int:
    return int(os.environ.get("SOAK_BYTES") or SOAK_DEFAULT)


def _kernel_errors(topo: Topology) -> int:
    """IPv4 header and TCP checksum errors the kernel counted on the path (N and N-k)."""
    return (
        snmp_counter(topo.client_ns, "Ip", "InHdrErrors")
        + snmp_counter(topo.kernel_ns, "Ip", "InHdrErrors")
        + snmp_counter(topo.kernel_ns, "Tcp", "InCsumErrors")
    )


def run_transfer(
    topo: Topology, sc: Scenario, direction: str, nbytes: int, bound: float
) -> dict[str, Any]:
    """One transfer under `sc`; checks integrity and the bound, returns what was seen."""
    route_kernel_ns(topo)
    mode = "server-sink" if direction == TO_USTACK else "server-source"
    k_errors = _kernel_errors(topo)
    k_retrans = snmp_counter(topo.kernel_ns, "Tcp", "RetransSegs")
    expected = payload_sha256(SEED, nbytes)
    link: contextlib.AbstractContextManager[dict[str, int]] = (
        impair(topo, sc.drop_permille, per_segment=not sc.offload)
        if sc.drop_permille
        else contextlib.nullcontext({})
    )
    with (
        link as nft,
        PeerProcess(
            topo,
            mode,
            port=PORT,
            bytes=nbytes,
            seed=SEED,
            fault=sc.fault,
            offload=sc.offload,
            gateway=topo.client_addr,
            timeout=bound + 60,
        ) as peer,
    ):
        t0 = time.monotonic()
        sock = kernel_client(topo, PORT, timeout=30, ns=topo.kernel_ns)
        send = payload_chunks(SEED, nbytes) if direction == TO_USTACK else None
        kr = kernel_exchange(sock, send, timeout=bound)
        elapsed = time.monotonic() - t0
        report = peer.finish(timeout=60)
    conn = report["conn"]
    stats = report["stats"]
    print(
        f"\n{sc.name} {direction}: {nbytes} bytes in {elapsed:.2f} s (bound {bound:.0f} s); "
        f"nft drops {nft}; ustack retransmits {conn['retransmits']}, srtt {conn['srtt_us']} us"
    )
    if direction == TO_USTACK:
        assert kr.bytes_out == nbytes and kr.sha256_out == expected
        assert report["bytes_in"] == nbytes and report["sha256_in"] == expected
        assert kr.bytes_in == 0
        assert report["state"] == "CLOSED"  # the kernel's FIN came first
    else:
        assert report["bytes_out"] == nbytes and report["sha256_out"] == expected
        assert kr.bytes_in == nbytes and kr.sha256_in == expected
        assert report["bytes_in"] == 0
        assert report["state"] == "TIME-WAIT"  # ustack's FIN came first
    assert report["error"] is None
    assert stats.get("tcp_out_rsts", 0) == 0
    assert stats.get("drop_internal_error", 0) == 0
    assert report["offload"] is sc.offload
    assert elapsed <= bound, f"{elapsed:.1f} s > bound {bound:.0f} s"
    return {
        "report": report,
        "stats": stats,
        "conn": conn,
        "nft": nft,
        "kernel_errors": _kernel_errors(topo) - k_errors,
        "kernel_retrans": snmp_counter(topo.kernel_ns, "Tcp", "RetransSegs") - k_retrans,
    }


def other_way(direction: str) -> str:
    return TO_KERNEL if direction == TO_USTACK else TO_USTACK


def check_impairment(sc: Scenario, direction: str, seen: dict[str, Any]) -> None:
    """The impairment really happened, and what it did was handled where it should be."""
    stats = seen["stats"]
    conn = seen["conn"]
    # The direction data flows in, and its sender's retransmission count.
    data_way = direction
    sender_retransmits = seen["kernel_retrans"] if direction == TO_USTACK else conn["retransmits"]
    if sc.drop_permille:
        nft = seen["nft"]
        packets = nft[f"seen-{data_way}"]
        assert packets > 0 and nft[f"seen-{other_way(data_way)}"] > 0, nft
        # Where at least 50 drops are expected (not with offloads' few
        # superframes), none at all would mean the rule did not work.
        if packets * sc.drop_permille >= 50_000:
            assert nft[data_way] > 0, nft
            assert sender_retransmits > 0
    if sc.fault is None:
        return
    rx_tx = "rx" if direction == TO_USTACK else "tx"
    if "delay" in sc.fault:
        assert conn["min_rtt_us"] >= 40_000  # 20 ms each way
        assert stats[f"dev_fault_{rx_tx}_reordered"] > 0
    if "dup" in sc.fault:
        assert stats[f"dev_fault_{rx_tx}_duplicated"] > 0
        if direction == TO_USTACK:
            # A duplicate segment is old data: ACKed again and dropped.
            assert stats.get("drop_tcp_out_of_window", 0) > 0
    if "corrupt" in sc.fault:
        caught = sum(v for k, v in stats.items() if k in WIRE_DROPS)
        # Every frame corrupted on the way in is dropped by a checksum (or
        # a header check before it), none reaches TCP: exact counts.
        assert caught == stats["dev_fault_rx_corrupted"]
        if direction == TO_USTACK:
            assert stats["dev_fault_rx_corrupted"] > 0
            checksums = stats.get("drop_tcp_bad_checksum", 0)
            checksums += stats.get("drop_ipv4_bad_checksum", 0)
            assert checksums > 0
        else:
            # Every frame corrupted on the way out is caught by the kernel.
            assert stats["dev_fault_tx_corrupted"] > 0
            assert seen["kernel_errors"] == stats["dev_fault_tx_corrupted"]


@pytest.mark.parametrize(("sc", "direction", "bound"), _params(soak=False))
def test_transfer_intact_within_bound(
    topology: Topology, sc: Scenario, direction: str, bound: float
):
    seen = run_transfer(topology, sc, direction, NBYTES, bound)
    check_impairment(sc, direction, seen)


@pytest.mark.parametrize(("sc", "direction", "bound"), _params(soak=True))
def test_soak_transfer_intact_within_bound(
    topology: Topology, sc: Scenario, direction: str, bound: float
):
    seen = run_transfer(topology, sc, direction, _soak_bytes(), bound)
    check_impairment(sc, direction, seen)
