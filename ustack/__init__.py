"""ustack: a userspace TCP/IP stack for Linux over TAP devices.

The C layer in ext/ moves raw Ethernet frames between a TAP queue and a
preallocated pool in bursts; everything above it is Python.  See
ARCHITECTURE.md in the project's shared notes for the layer map.

`ustack.configure(**config)` sets the configuration (name, addr, gateway,
poll, offload, pcap; see ustack.config) of the Contexts the native API
opens per thread; `ustack.socket` stands in for Python's socket module.
Importing the package loads nothing else: submodules are imported on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ustack.config import Config

__version__ = "0.1.0"


def configure(**config: object) -> Config:
    """Configure the Contexts opened from now on (see ustack.api.context.configure)."""
    from ustack.api.context import configure as _configure

    return _configure(**config)
