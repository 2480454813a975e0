"""The one interface a Stack owns: addresses, MTU and the routing decision.

A host with a single link (RFC 1122 3.3.1): a destination inside our
prefix is on-link and is its own next hop; anything else goes to the
default gateway when one is configured, and is unreachable otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ustack.wire.ethernet import mac_from_str, mac_to_str
from ustack.wire.ipv4 import ip_from_str, ip_to_str

DEFAULT_MTU = 1500
MIN_MTU = 68  # RFC 791: every host must accept 68-byte datagrams


def random_mac() -> bytes:
    """A random unicast, locally administered MAC (IEEE 802, U/L bit set)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


def parse_cidr(text: str) -> tuple[int, int]:
    """'198.18.0.2/24' -> (address, prefix length); a bare address means /32."""
    addr, slash, plen = text.partition("/")
    prefix = 32
    if slash:
        if not (plen.isascii() and plen.isdigit()) or not 0 <= int(plen) <= 32:
            raise ValueError(f"bad prefix length in {text!r}: expected /0 to /32")
        prefix = int(plen)
    return ip_from_str(addr), prefix


@dataclass
class Interface:
    """Address configuration of the stack's link."""

    addr: int
    prefix_len: int = 24
    mac: bytes = field(default_factory=random_mac)
    gateway: int | None = None
    mtu: int = DEFAULT_MTU

    def __post_init__(self) -> None:
        if len(self.mac) != 6 or self.mac[0] & 1:
            raise ValueError(f"interface MAC must be 6 bytes of unicast, got {self.mac.hex(':')}")
        if not 0 <= self.prefix_len <= 32:
            raise ValueError(f"prefix length must be 0..32, got {self.prefix_len}")
        if not MIN_MTU <= self.mtu <= 65535:
            raise ValueError(f"MTU must be {MIN_MTU}..65535, got {self.mtu}")
        self.netmask = (0xFFFFFFFF << (32 - self.prefix_len)) & 0xFFFFFFFF
        self.network = self.addr & self.netmask
        self.broadcast = self.network | (~self.netmask & 0xFFFFFFFF)
        if self.gateway is not None and not self.on_link(self.gateway):
            raise ValueError(f"gateway {ip_to_str(self.gateway)} is not on {self.cidr}")

    @classmethod
    def from_config(
        cls,
        addr: str,
        *,
        mac: str | None = None,
        gateway: str | None = None,
        mtu: int = DEFAULT_MTU,
    ) -> Interface:
        ip, prefix = parse_cidr(addr)
        return cls(
            addr=ip,
            prefix_len=prefix,
            mac=mac_from_str(mac) if mac else random_mac(),
            gateway=ip_from_str(gateway) if gateway else None,
            mtu=mtu,
        )

    @property
    def cidr(self) -> str:
        return f"{ip_to_str(self.addr)}/{self.prefix_len}"

    @property
    def mac_str(self) -> str:
        return mac_to_str(self.mac)

    def on_link(self, ip: int) -> bool:
        return ip & self.netmask == self.network

    def next_hop(self, dst: int) -> int | None:
        """Where to send a datagram for dst on the link, or None if unroutable."""
        if dst & self.netmask == self.network or dst == 0xFFFFFFFF:
            return dst
        return self.gateway

    def is_local(self, dst: int) -> bool:
        """Addressed to this host: our address, or a broadcast we hear (RFC 1122 3.3.6)."""
        return dst == self.addr or dst == self.broadcast or dst == 0xFFFFFFFF
