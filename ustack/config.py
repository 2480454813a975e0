"""Configuration of a Context: the keywords every ustack entry point takes.

One set of keywords everywhere (`ustack.configure`, `open_context`, the
command line):

=========  ==================  ===================================================
keyword    environment         meaning
=========  ==================  ===================================================
name       USTACK_NAME         topology whose TAP to attach to (default ``ustack``)
addr       USTACK_ADDR         our address with prefix (default ``198.18.0.2/24``)
gateway    USTACK_GATEWAY      default gateway, on the addr's subnet (default none)
poll       USTACK_POLL         ``busy``, ``interrupt`` or ``hybrid`` (default)
budget     USTACK_BUDGET       most frames per receive burst, 1..4096 (default 64)
idle_us    USTACK_IDLE_US      hybrid: microseconds without a frame before it
                               sleeps, 0..1000000 (default 100)
offload    USTACK_OFFLOAD      checksum offload and TSO on the TAP (default off)
pcap       USTACK_PCAP         file recording every frame in and out (default none)
=========  ==================  ===================================================

A keyword given explicitly wins over the environment, which wins over the
default; an empty environment variable counts as unset.  Every value is
checked when the Config is made, so a bad one fails with a ValueError that
names the keyword (or the variable) and says what is expected, before any
device is opened.

``budget`` is NAPI's budget: a burst never takes more frames than this, so
the application runs between bursts even under a flood (the device also
caps a burst at its receive slots, 256 on the TAP ring).  ``idle_us`` is
hybrid mode's idle threshold, counted from the first empty poll; 0 sleeps
at the first empty poll like ``interrupt``.  Both apply to the native
waits (`ustack.loop.Context`) and to the asyncio selector alike.

This module imports nothing heavy: `ustack.configure()` may be called at
program start without pulling in the device layer.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Final

__all__ = [
    "DEFAULT_ADDR",
    "DEFAULT_BUDGET",
    "DEFAULT_IDLE_US",
    "DEFAULT_NAME",
    "ENV",
    "MAX_BUDGET",
    "MAX_IDLE_US",
    "POLL_MODES",
    "Config",
]

DEFAULT_NAME: Final = "ustack"
"""Same as ustack.topology.DEFAULT_NAME (a unit test keeps them equal)."""
DEFAULT_ADDR: Final = "198.18.0.2/24"
"""Same as ustack.runtime.DEFAULT_ADDR."""
POLL_MODES: Final = ("busy", "interrupt", "hybrid")
"""Same as ustack.loop.POLL_MODES."""
DEFAULT_BUDGET: Final = 64
"""Same as ustack.loop.DEFAULT_BUDGET (a unit test keeps them equal)."""
DEFAULT_IDLE_US: Final = 100
"""Same as ustack.loop.DEFAULT_IDLE_US (a unit test keeps them equal)."""
MAX_BUDGET: Final = 4096
"""No device has more receive slots than this; a larger budget means nothing."""
MAX_IDLE_US: Final = 1_000_000
"""A hybrid loop that spins for more than a second is busy mode: ask for that."""

ENV: Final = {
    "name": "USTACK_NAME",
    "addr": "USTACK_ADDR",
    "gateway": "USTACK_GATEWAY",
    "poll": "USTACK_POLL",
    "budget": "USTACK_BUDGET",
    "idle_us": "USTACK_IDLE_US",
    "offload": "USTACK_OFFLOAD",
    "pcap": "USTACK_PCAP",
}
"""The environment variable read for each keyword."""

# The rule of ustack.topology.Topology's names (a unit test keeps them equal);
# repeated here so that checking a name does not import pyroute2.
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_INTS: Final = frozenset({"budget", "idle_us"})


@dataclass(frozen=True)
class Config:
    """A validated configuration; build it with `Config.resolve` or directly."""

    name: str = DEFAULT_NAME
    addr: str = DEFAULT_ADDR
    gateway: str | None = None
    poll: str = "hybrid"
    budget: int = DEFAULT_BUDGET
    idle_us: int = DEFAULT_IDLE_US
    offload: bool = False
    pcap: str | None = None

    def __post_init__(self) -> None:
        _validate(self.as_dict(), {})

    @classmethod
    def resolve(
        cls, keywords: Mapping[str, object] | None = None, *, env: Mapping[str, str] | None = None
    ) -> Config:
        """`keywords` first, then the environment (`os.environ` unless given), then defaults.

        An unknown keyword is a TypeError, as for a function; a bad value is
        a ValueError naming the keyword or the environment variable.
        """
        keywords = {} if keywords is None else keywords
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(keywords) - set(known))
        if unknown:
            raise TypeError(
                f"unknown ustack configuration keyword(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(known)}"
            )
        source = os.environ if env is None else env
        values: dict[str, object] = {}
        labels: dict[str, str] = {}
        for key in known:
            if key in keywords:
                values[key] = keywords[key]
                continue
            var = ENV[key]
            text = source.get(var, "")
            if text:
                if key == "offload":
                    values[key] = _offload_from_env(var, text)
                elif key in _INTS:
                    values[key] = _int_from_env(var, text)
                else:
                    values[key] = text
                labels[key] = var
        full = {**{f.name: f.default for f in fields(cls)}, **values}
        _validate(full, labels)
        return cls(**values)  # type: ignore[arg-type]  # _validate checked every type

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def context_kwargs(self) -> dict[str, object]:
        """Keywords for `ustack.runtime.open_context`; offload only when on.

        (open_context takes `offload` only in builds that have it; leaving it
        out when off keeps this working with both.)
        """
        kw: dict[str, object] = {
            "name": self.name,
            "addr": self.addr,
            "gateway": self.gateway,
            "poll": self.poll,
            "budget": self.budget,
            "idle_us": self.idle_us,
            "pcap": self.pcap,
        }
        if self.offload:
            kw["offload"] = True
        return kw


def _validate(v: Mapping[str, object], labels: Mapping[str, str]) -> None:
    """Check every value; messages name `labels[key]` (an environment variable) or the key."""

    def label(key: str) -> str:
        return labels.get(key, key)

    _check_name(v["name"], label("name"))
    _check_addr(v["addr"], label("addr"))
    if v["gateway"] is not None:
        _check_gateway(v["gateway"], str(v["addr"]), label("gateway"))
    if v["poll"] not in POLL_MODES:
        raise ValueError(
            f"{label('poll')} must be one of {', '.join(POLL_MODES)}, got {v['poll']!r}"
        )
    _check_int(v["budget"], 1, MAX_BUDGET, "frames", label("budget"))
    _check_int(v["idle_us"], 0, MAX_IDLE_US, "microseconds", label("idle_us"))
    if not isinstance(v["offload"], bool):
        raise ValueError(f"{label('offload')} must be True or False, got {v['offload']!r}")
    pcap = v["pcap"]
    if pcap is not None and (not isinstance(pcap, str) or not pcap):
        raise ValueError(f"{label('pcap')} must be a file path or None, got {pcap!r}")


def _int_from_env(var: str, text: str) -> int | str:
    """The integer in `text`; the text itself if it is none (then _validate names `var`)."""
    try:
        return int(text.strip(), 10)
    except ValueError:
        return text


def _check_int(value: object, low: int, high: int, unit: str, what: str) -> None:
    # bool is an int in Python, but budget=True is a mistake, not 1 frame.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} must be a whole number of {unit}, {low}..{high}, got {value!r}")


def _offload_from_env(var: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{var} must be one of 1/0, true/false, yes/no, on/off, got {text!r}")


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"{what} must be a topology name of up to 41 letters, digits, '_', '.', '-' "
            f"(not starting with '_', '.', '-'), got {name!r}"
        )


def _interface(addr: object, what: str) -> ipaddress.IPv4Interface:
    if not isinstance(addr, str):
        raise ValueError(
            f"{what} must be an IPv4 address with prefix like 198.18.0.2/24, got {addr!r}"
        )
    try:
        iface = ipaddress.IPv4Interface(addr)
    except ValueError as exc:
        raise ValueError(
            f"{what} must be an IPv4 address with prefix like 198.18.0.2/24, got {addr!r} ({exc})"
        ) from None
    return iface


def _check_addr(addr: object, what: str) -> None:
    iface = _interface(addr, what)
    ip = iface.ip
    if ip.is_multicast or ip.is_unspecified or int(ip) == 0xFFFFFFFF:
        raise ValueError(f"{what} must be a unicast IPv4 address, got {addr!r}")
    net = iface.network
    if net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
        raise ValueError(
            f"{what} {addr!r} is the network or broadcast address of {net}; pick a host address"
        )


def _check_gateway(gateway: object, addr: str, what: str) -> None:
    if not isinstance(gateway, str):
        raise ValueError(f"{what} must be an IPv4 address like 198.18.0.1, got {gateway!r}")
    try:
        gw = ipaddress.IPv4Address(gateway)
    except ValueError:
        raise ValueError(
            f"{what} must be an IPv4 address like 198.18.0.1, got {gateway!r}"
        ) from None
    net = ipaddress.IPv4Interface(addr).network
    if gw not in net:
        raise ValueError(f"{what} {gateway} is not on our subnet {net} (addr {addr})")
