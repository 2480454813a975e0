"""Building a running stack from configuration, and reporting its counters.

`open_context()` attaches a ring to the topology's TAP (behind a
FaultDevice when faults are asked for), configures the interface and
returns a Context ready to poll; `format_counters()` prints
counters grouped by layer, like `netstat -s`.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from ustack.dev.base import FrameDevice
from ustack.dev.fault import FaultDevice, FaultSpec
from ustack.dev.pcap import PcapWriter
from ustack.dev.ring import OFFLOAD_CSUM, OFFLOAD_TSO4, Ring
from ustack.errors import TopologyError
from ustack.loop import Context
from ustack.stack.interface import Interface
from ustack.stack.stack import Stack
from ustack.tcp.tcb import TcpConfig
from ustack.topology import DEFAULT_NAME, TAP_IFNAME, TAP_PREFIX, USTACK_ADDR, Topology

DEFAULT_ADDR = f"{USTACK_ADDR}/{TAP_PREFIX}"


def open_context(
    *,
    name: str = DEFAULT_NAME,
    addr: str = DEFAULT_ADDR,
    gateway: str | None = None,
    mac: str | None = None,
    poll: str = "hybrid",
    pcap: str | None = None,
    fault: FaultSpec | str | None = None,
    offload: bool = False,
    tcp_config: TcpConfig | None = None,
    shared_queue: bool = False,
) -> Context:
    """A Context on (one queue of) the TAP of topology `name` (from `ustack up`).

    `fault` (a FaultSpec or its text, e.g. ``loss=0.05,delay=20ms``) puts a
    FaultDevice between the ring and the stack.  The pcap file records what
    crosses the TAP: received frames before the faults, sent ones after.
    `offload` opens the queue with virtio-net headers and asks the kernel
    for checksum offload and TSO: large segments both ways (ARCHITECTURE.md
    rule 5).  `shared_queue` is for workers: other Contexts with the same
    address run on the other queues of the TAP, so neighbours are also
    learnt from IPv4 traffic (see NeighbourCache.confirm).
    """
    iface = Interface.from_config(addr, mac=mac, gateway=gateway)
    spec = FaultSpec.parse(fault) if isinstance(fault, str) else fault
    if offload:
        ring = Ring(TAP_IFNAME, namespace=name, vnet_hdr=True, offloads=OFFLOAD_CSUM | OFFLOAD_TSO4)
    else:
        ring = Ring(TAP_IFNAME, namespace=name)
    try:
        if not Topology(name).wait_tap_up():
            raise TopologyError(errno.ETIMEDOUT, f"the TAP of topology {name} did not come up")
        if pcap:
            ring.pcap = PcapWriter(pcap)
        dev: FrameDevice = ring if spec is None else FaultDevice(ring, spec)
        stack = Stack(dev, iface, tcp_config=tcp_config, learn_from_ip=shared_queue)
    except BaseException:
        if ring.pcap is not None:
            ring.pcap.close()
        ring.close()
        raise
    return Context(dev, stack, poll=poll)


def close_context(ctx: Context) -> None:
    """Close the context's device (and the ring under a FaultDevice) and its pcap files."""
    dev = ctx.device
    devices = [dev, dev.inner] if isinstance(dev, FaultDevice) else [dev]
    for d in devices:
        if d.pcap is not None:
            d.pcap.close()
    dev.close()


_LAYERS = (
    ("device", ("dev_",)),
    ("loop", ("loop_",)),
    ("ethernet", ("eth_", "drop_eth_")),
    ("arp", ("arp_", "drop_arp_")),
    ("ipv4", ("ipv4_", "drop_ipv4_")),
    ("icmp", ("icmp_", "drop_icmp_")),
    ("udp", ("udp_", "drop_udp_")),
    ("tcp", ("tcp_", "drop_tcp_")),
)


def format_counters(stats: Mapping[str, int | float]) -> str:
    """Non-zero counters grouped by layer, one per line."""
    lines: list[str] = []
    placed: set[str] = set()
    for layer, prefixes in _LAYERS:
        keys = sorted(k for k in stats if k.startswith(prefixes) and k not in placed)
        placed.update(keys)
        shown = [k for k in keys if stats[k]]
        if shown:
            lines.append(f"{layer}:")
            lines.extend(f"    {k:34} {stats[k]}" for k in shown)
    rest = sorted(k for k in stats if k not in placed and stats[k])
    if rest:
        lines.append("other:")
        lines.extend(f"    {k:34} {stats[k]}" for k in rest)
    return "\n".join(lines)
