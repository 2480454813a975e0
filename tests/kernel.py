"""Helpers for tests that use the Linux kernel in a topology as the peer."""

from __future__ import annotations

import socket
from typing import Any

from pyroute2 import IPRoute

from ustack import netns
from ustack.dev.ring import Ring
from ustack.topology import Topology

# A MAC for the ustack side when a test plays that side by hand.
USTACK_MAC = "02:00:00:00:00:02"


def tap_mac(topo: Topology) -> str:
    """The kernel-side MAC address of the topology's TAP."""
    with IPRoute(netns=topo.client_ns) as ipr:
        link = ipr.get_links(ifname=topo.tap)[0]
        return str(link.get("IFLA_ADDRESS"))


def add_static_neigh(topo: Topology, ip: str = "198.18.0.2", mac: str = USTACK_MAC) -> None:
    """Let the kernel send to `ip` without ARP (the ring tests have no ARP)."""
    with IPRoute(netns=topo.client_ns) as ipr:
        idx = ipr.link_lookup(ifname=topo.tap)[0]
        ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, state="permanent")


def ns_socket(ns: str, kind: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
    """A kernel socket created inside namespace `ns`."""
    with netns.inside(ns):
        return socket.socket(socket.AF_INET, kind, proto)


def delete_link(ns: str, ifname: str) -> None:
    with IPRoute(netns=ns) as ipr:
        for idx in ipr.link_lookup(ifname=ifname):
            ipr.link("del", index=idx)


def snmp_counter(ns: str, proto: str, field: str) -> int:
    """A counter of /proc/net/snmp as seen inside namespace `ns`."""
    with netns.inside(ns), open("/proc/thread-self/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith(proto + ":")]
    names, values = lines[0], lines[1]
    return int(values[names.index(field)])


def attach(topo: Topology, **kwargs: Any) -> Ring:
    """A ring on the topology's TAP, returned once the kernel sees its carrier.

    The kernel brings the TAP's carrier up asynchronously after the first
    queue attaches; what it sends before that is dropped.
    """
    ring = Ring(topo.tap, namespace=topo.client_ns, **kwargs)
    if not topo.wait_tap_up():
        ring.close()
        raise AssertionError(f"TAP of {topo.name} did not come up")
    return ring
