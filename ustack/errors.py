"""Exceptions that ustack raises for misuse and for failures of the host.

Each subclasses the builtin OSError type a caller would catch for the same
failure on a kernel socket or file, so generic handlers keep working.
Malformed input from the network is never an exception: it is dropped and
counted where it arrives.
"""


class UstackError(Exception):
    """Base of every exception ustack raises on purpose."""


class DeviceNotFoundError(UstackError, FileNotFoundError):
    """The TAP device, /dev/net/tun or the network namespace does not exist."""


class DevicePermissionError(UstackError, PermissionError):
    """Opening or configuring the device needs root or CAP_NET_ADMIN."""


class BadDeviceNameError(UstackError, ValueError):
    """An interface or namespace name the kernel would not accept."""


class DeviceGoneError(UstackError, ConnectionAbortedError):
    """The TAP device was deleted or its queue detached while in use."""


class PoolExhaustedError(UstackError, BufferError):
    """Every transmit slot is taken; flush with tx_burst before allocating."""


class TopologyError(UstackError, OSError):
    """Creating or removing the test topology failed."""
