"""Building a running stack from configuration, and reporting its counters.

`open_context()` attaches a ring to the topology's TAP, configures the
interface and returns a Context ready to poll; `format_counters()` prints
counters grouped by layer, like `netstat -s`.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from ustack.dev.pcap import PcapWriter
from ustack.dev.ring import Ring
from ustack.errors import TopologyError
from ustack.loop import Context
from ustack.stack.interface import Interface
from ustack.stack.stack import Stack
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
) -> Context:
    """A Context on the TAP of topology `name` (from `ustack up`)."""
    iface = Interface.from_config(addr, mac=mac, gateway=gateway)
    ring = Ring(TAP_IFNAME, namespace=name)
    if not Topology(name).wait_tap_up():
        ring.close()
        raise TopologyError(errno.ETIMEDOUT, f"the TAP of topology {name} did not come up")
    if pcap:
        ring.pcap = PcapWriter(pcap)
    return Context(ring, Stack(ring, iface), poll=poll)


def close_context(ctx: Context) -> None:
    dev = ctx.device
    if dev.pcap is not None:
        dev.pcap.close()
    dev.close()


_LAYERS = (
    ("device", ("dev_",)),
    ("loop", ("loop_",)),
    ("ethernet", ("eth_", "drop_eth_")),
    ("arp", ("arp_", "drop_arp_")),
    ("ipv4", ("ipv4_", "drop_ipv4_")),
    ("icmp", ("icmp_", "drop_icmp_")),
    ("udp", ("udp_", "drop_udp_")),
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
