"""The test topology: two network namespaces, a TAP for ustack and a veth pair.

    netns N    : TAP `ustap0`, kernel side 198.18.0.1/24; ustack answers as
                 198.18.0.2.  Clients and load generators run here.
    netns N-k  : joined to N by veth (198.19.0.1/24 in N, 198.19.0.2/24 in
                 N-k); the same app on kernel sockets listens on 198.19.0.2.

Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking range) and no
namespace gets a default route, so nothing can leave the machine.  The TAP
is persistent and multi-queue so that ustack processes attach and detach
at will, with one queue per worker.  IPv6 is off in both namespaces to
keep the link quiet and IPv4-only, like the stack.

`up()` and `down()` are idempotent; everything goes through pyroute2.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2 import netns as _pyr_netns
from pyroute2.netlink.exceptions import NetlinkError

from ustack import netns
from ustack.errors import BadDeviceNameError, DevicePermissionError, TopologyError

TAP_IFNAME = "ustap0"
VETH_CLIENT = "veth-c"
VETH_KERNEL = "veth-k"
CLIENT_ADDR = "198.18.0.1"
USTACK_ADDR = "198.18.0.2"
TAP_PREFIX = 24
VETH_CLIENT_ADDR = "198.19.0.1"
KERNEL_ADDR = "198.19.0.2"
VETH_PREFIX = 24
DEFAULT_NAME = "ustack"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")


def check_privileges() -> None:
    """Raise a clear error when this process cannot build a topology."""
    if os.geteuid() != 0:
        raise DevicePermissionError(
            errno.EPERM, "ustack needs root (or CAP_NET_ADMIN) to create namespaces and TAP devices"
        )
    if not os.path.exists("/dev/net/tun"):
        raise TopologyError(errno.ENOENT, "/dev/net/tun is missing: load the tun module")


@dataclass(frozen=True)
class Topology:
    """Names and addresses of one topology; `up()` builds it, `down()` removes it."""

    name: str = DEFAULT_NAME

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise BadDeviceNameError(
                f"bad topology name {self.name!r}: use up to 41 letters, digits, '_', '.', '-'"
            )

    @property
    def client_ns(self) -> str:
        return self.name

    @property
    def kernel_ns(self) -> str:
        return f"{self.name}-k"

    tap = TAP_IFNAME
    client_addr = CLIENT_ADDR
    ustack_addr = USTACK_ADDR
    kernel_addr = KERNEL_ADDR
    veth_client_addr = VETH_CLIENT_ADDR

    def exists(self) -> bool:
        return netns.exists(self.client_ns)

    # -- building --------------------------------------------------------

    def up(self) -> Topology:
        check_privileges()
        try:
            for ns in (self.client_ns, self.kernel_ns):
                if not netns.exists(ns):
                    _pyr_netns.create(ns)
                _quiet_ipv6(ns)
            self._up_tap()
            self._up_veth()
        except NetlinkError as exc:
            raise TopologyError(exc.code, f"building topology {self.name}: {exc}") from exc
        return self

    def _up_tap(self) -> None:
        with IPRoute(netns=self.client_ns) as ipr:
            _link_up(ipr, "lo")
            if not ipr.link_lookup(ifname=self.tap):
                # The tuntap ioctl runs in the calling thread's namespace.
                with netns.inside(self.client_ns), IPRoute() as local:
                    local.link(
                        "add",
                        ifname=self.tap,
                        kind="tuntap",
                        mode="tap",
                        ifr={"no_pi": True, "multi_queue": True},
                    )
            idx = ipr.link_lookup(ifname=self.tap)[0]
            _ensure_addr(ipr, idx, CLIENT_ADDR, TAP_PREFIX)
            ipr.link("set", index=idx, state="up")

    def _up_veth(self) -> None:
        with IPRoute(netns=self.client_ns) as ipr:
            if not ipr.link_lookup(ifname=VETH_CLIENT):
                ipr.link(
                    "add",
                    ifname=VETH_CLIENT,
                    kind="veth",
                    peer={"ifname": VETH_KERNEL, "net_ns_fd": self.kernel_ns},
                )
            idx = ipr.link_lookup(ifname=VETH_CLIENT)[0]
            _ensure_addr(ipr, idx, VETH_CLIENT_ADDR, VETH_PREFIX)
            ipr.link("set", index=idx, state="up")
        with IPRoute(netns=self.kernel_ns) as ipr:
            _link_up(ipr, "lo")
            found = ipr.link_lookup(ifname=VETH_KERNEL)
            if not found:
                raise TopologyError(
                    errno.ENODEV, f"veth peer {VETH_KERNEL} missing in {self.kernel_ns}"
                )
            _ensure_addr(ipr, found[0], KERNEL_ADDR, VETH_PREFIX)
            ipr.link("set", index=found[0], state="up")

    def wait_tap_up(self, timeout_s: float = 3.0) -> bool:
        """Wait until the kernel sees the TAP's carrier (a queue is attached).

        The kernel applies carrier changes asynchronously (linkwatch, up to a
        second later); until then it drops what it sends to the TAP.
        """
        deadline = time.monotonic() + timeout_s
        with IPRoute(netns=self.client_ns) as ipr:
            while True:
                links = ipr.get_links(ifname=self.tap)
                if links and links[0].get("IFLA_OPERSTATE") == "UP":
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)

    # -- removing --------------------------------------------------------

    def down(self) -> None:
        check_privileges()
        for ns in (self.client_ns, self.kernel_ns):
            if not netns.exists(ns):
                continue
            # Delete the devices first: a process still inside the namespace
            # would otherwise keep them (and the TAP queue) alive.
            try:
                with IPRoute(netns=ns) as ipr:
                    for ifname in (self.tap, VETH_CLIENT, VETH_KERNEL):
                        for idx in ipr.link_lookup(ifname=ifname):
                            ipr.link("del", index=idx)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise TopologyError(exc.code, f"removing devices of {ns}: {exc}") from exc
            _pyr_netns.remove(ns)


def _link_up(ipr: IPRoute, ifname: str) -> None:
    for idx in ipr.link_lookup(ifname=ifname):
        ipr.link("set", index=idx, state="up")


def _ensure_addr(ipr: IPRoute, idx: int, addr: str, prefix: int) -> None:
    have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)}
    if (addr, prefix) not in have:
        ipr.addr("add", index=idx, address=addr, prefixlen=prefix)


def _quiet_ipv6(ns: str) -> None:
    """IPv6 off: no router solicitations or MLD reports on the links."""
    with netns.inside(ns):
        for key in ("all", "default"):
            path = f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6"
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write("1")
