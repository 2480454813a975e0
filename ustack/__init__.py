"""ustack: a userspace TCP/IP stack for Linux over TAP devices.

The C layer in ext/ moves raw Ethernet frames between a TAP queue and a
preallocated pool in bursts; everything above it is Python.  See
ARCHITECTURE.md in the project's shared notes for the layer map.
"""

__version__ = "0.1.0"
