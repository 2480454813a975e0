"""Building a running stack from configuration, and reporting its counters.

`open_context()` attaches a ring to the topology's TAP (behind a
FaultDevice when faults are asked for), configures the interface and
returns a Context ready to poll; `format_counters()` prints
counters grouped by layer, like `netstat -s`.

One host, several queues.  The TAP is multi-queue; several Contexts may
attach to it with the same address (`shared_queue=True`): worker
processes, or the per-thread Contexts of `ustack.api.context`.  The kernel
sees one host, so they must look like one: one MAC (`host_mac`, chosen
once per process and topology, or given by the caller as the worker
runner does), neighbours learnt from IPv4 traffic too (an ARP reply
reaches only one queue), and, for the Contexts of one process, one
ephemeral port table (`host_ports`) so two threads do not pick the same
local port towards one peer.  The kernel steers each flow to one queue:
a flow's packets go to the queue that last transmitted on it (tun's
automatic flow steering; entries age out after about 3 s without
transmission), otherwise to a queue picked by a hash of the flow.  The
kernel records the queue only after it has handled the frame, so its
immediate answer (a SYN-ACK) still follows the hash: the native API's
connect() claims the flow with a frame first (`ustack.api.socket`).
Each Context still belongs to one thread (`ustack.loop`); nothing here
is touched per packet.
"""

from __future__ import annotations

import errno
import threading
import weakref
from collections.abc import Callable, Mapping

from ustack.dev.base import FrameDevice
from ustack.dev.fault import FaultDevice, FaultSpec
from ustack.dev.pcap import PcapWriter
from ustack.dev.ring import OFFLOAD_CSUM, OFFLOAD_TSO4, Ring
from ustack.errors import TopologyError
from ustack.loop import DEFAULT_BUDGET, DEFAULT_IDLE_US, Context
from ustack.stack.interface import Interface, random_mac
from ustack.stack.stack import Stack
from ustack.tcp.ports import EphemeralPorts
from ustack.tcp.tcb import TcpConfig
from ustack.topology import DEFAULT_NAME, TAP_IFNAME, TAP_PREFIX, USTACK_ADDR, Topology
from ustack.wire.ethernet import mac_to_str

DEFAULT_ADDR = f"{USTACK_ADDR}/{TAP_PREFIX}"

_hosts_lock = threading.Lock()
_host_macs: dict[str, str] = {}
_host_ports: weakref.WeakValueDictionary[str, HostPorts] = weakref.WeakValueDictionary()


class HostPorts(EphemeralPorts):
    """One RFC 6056 port table shared by the Contexts (threads) of one process.

    Each Context checks only its own connections for a port in use; the
    shared perturbation counters make the threads walk one sequence per
    destination, so a port one thread took is not offered to another
    until the sequence wraps (thousands of connections to that peer).  The
    lock is taken once per active open, never per packet.
    """

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def choose(
        self, local_ip: int, remote_ip: int, remote_port: int, in_use: Callable[[int], bool]
    ) -> int:
        with self._lock:
            return super().choose(local_ip, remote_ip, remote_port, in_use)


def host_mac(name: str) -> str:
    """The MAC this process answers with on topology `name`, the same for all its Contexts.

    Chosen at random (locally administered) on first use; a process forked
    afterwards inherits it.
    """
    with _hosts_lock:
        mac = _host_macs.get(name)
        if mac is None:
            mac = _host_macs[name] = mac_to_str(random_mac())
        return mac


def host_ports(name: str) -> HostPorts:
    """The ephemeral port table shared by this process's Contexts on topology `name`.

    Kept while some Stack uses it; the next Context after the last one closed gets a new one.
    """
    with _hosts_lock:
        ports = _host_ports.get(name)
        if ports is None:
            ports = _host_ports[name] = HostPorts()
        return ports


def open_context(
    *,
    name: str = DEFAULT_NAME,
    addr: str = DEFAULT_ADDR,
    gateway: str | None = None,
    mac: str | None = None,
    poll: str = "hybrid",
    budget: int = DEFAULT_BUDGET,
    idle_us: int = DEFAULT_IDLE_US,
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
    rule 5).  `shared_queue` is for workers and per-thread Contexts: other
    Contexts with the same address run on the other queues of the TAP, so
    neighbours are also learnt from IPv4 traffic (see
    NeighbourCache.confirm), `mac` defaults to `host_mac(name)` and active
    opens take ports from `host_ports(name)` (module docstring).  `poll`,
    `budget` and `idle_us` are the Context's polling settings (ustack.loop).
    """
    if shared_queue and mac is None:
        mac = host_mac(name)
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
        if shared_queue:
            stack.tcp.ports = host_ports(name)
    except BaseException:
        if ring.pcap is not None:
            ring.pcap.close()
        ring.close()
        raise
    return Context(dev, stack, poll=poll, budget=budget, idle_us=idle_us)


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
