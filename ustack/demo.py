"""`make demo` / `ustack demo`: the ring receiving what the kernel sends.

Brings a topology up, attaches a ring to its TAP, has the kernel in the
client namespace ping 198.18.0.2, prints the frames the ring receives
(ARP requests first; then ICMP echo requests once a static neighbour entry
lets the kernel skip ARP), prints the ring's counters and tears down.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

from pyroute2 import IPRoute

from ustack import netns
from ustack.dev.ring import Ring
from ustack.topology import Topology

_ETH = struct.Struct("!6s6sH")
_ARP_TAIL = struct.Struct("!H6s4s6s4s")
_IP = struct.Struct("!BBHHHBBH4s4s")
_ICMP = struct.Struct("!BBHHH")


def describe(frame: memoryview) -> str:
    """One line about a frame, like tcpdump's summary."""
    if len(frame) < 14:
        return f"runt frame of {len(frame)} bytes"
    _, src, etype = _ETH.unpack_from(frame, 0)
    mac = src.hex(":")
    if etype == 0x0806 and len(frame) >= 42:
        op, _, spa, _, tpa = _ARP_TAIL.unpack_from(frame, 20)
        verb = "who-has" if op == 1 else "is-at"
        return f"{mac} ARP {verb} {socket.inet_ntoa(tpa)} tell {socket.inet_ntoa(spa)}"
    if etype == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        _, _, total, _, _, ttl, proto, _, s, d = _IP.unpack_from(frame, 14)
        what = f"proto {proto}"
        if proto == 1 and len(frame) >= 14 + ihl + 8:
            typ, _, _, ident, seq = _ICMP.unpack_from(frame, 14 + ihl)
            what = f"ICMP type {typ} id {ident} seq {seq}"
        return (
            f"{mac} IPv4 {socket.inet_ntoa(s)} > {socket.inet_ntoa(d)} ttl {ttl} len {total} {what}"
        )
    return f"{mac} ethertype {etype:#06x} len {len(frame)}"


def _ping(topo: Topology, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ping", "-c", str(count), "-i", "0.3", "-W", "0.3", topo.ustack_addr],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: netns.enter(topo.client_ns),
    )


def _watch(ring: Ring, seconds: float) -> int:
    seen = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n = ring.rx_burst(32)
        if not n:
            ring.wait(50)
            continue
        for i in range(n):
            print(f"  rx burst frame {i}: {describe(ring.frame(i))}")
        seen += n
    return seen


def run_demo(name: str) -> int:
    topo = Topology(name)
    print(f"== bringing up topology {name}")
    topo.up()
    try:
        with Ring(topo.tap, namespace=topo.client_ns) as ring:
            topo.wait_tap_up()
            print(
                f"== ring attached to {topo.tap} in netns {topo.client_ns} "
                f"(pool {ring.rx_slots}+{ring.tx_slots} slots of {ring.slot_size} B, "
                f"hugepages {'yes' if ring.hugepages else 'no'})"
            )
            print(f"== kernel pings {topo.ustack_addr}: nobody answers ARP yet")
            proc = _ping(topo, 3)
            arp = _watch(ring, 1.5)
            proc.wait()
            with IPRoute(netns=topo.client_ns) as ipr:
                idx = ipr.link_lookup(ifname=topo.tap)[0]
                ipr.neigh(
                    "replace",
                    dst=topo.ustack_addr,
                    lladdr="02:00:00:00:00:02",
                    ifindex=idx,
                    state="permanent",
                )
            print("== with a static neighbour entry the kernel sends the echo requests")
            proc = _ping(topo, 3)
            icmp = _watch(ring, 1.5)
            proc.wait()
            stats = ring.stats()
        print(f"== received {arp} + {icmp} frames; ring counters:")
        for key in (
            "rx_frames",
            "rx_bytes",
            "rx_bursts",
            "rx_empty_polls",
            "rx_reads",
            "waits",
            "wakeups",
        ):
            print(f"  {key:16} {stats[key]}")
    finally:
        topo.down()
        print(f"== topology {name} removed")
    return 0
