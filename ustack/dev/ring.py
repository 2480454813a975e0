"""The TAP poll-mode ring: Python face of ext/ring.c, the only importer of ustack._ring.

A `Ring` owns one TAP queue, its buffer pool and its counters, all in C
memory that Python sees through memoryviews; see ustack.dev.base for the
slot layout.  One call moves a burst of frames in either direction.
"""

from __future__ import annotations

import errno
import os
from types import TracebackType

from ustack import netns
from ustack._ring import ffi as _ffi
from ustack._ring import lib as _lib
from ustack.dev.base import (
    COUNTER_NAMES,
    HEADROOM,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_ECN,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    VNET_GSO_TCPV6,
    VNET_GSO_UDP,
    VNET_HDR_LEN,
    FrameDevice,
    VnetHeader,
)
from ustack.errors import (
    BadDeviceNameError,
    DeviceGoneError,
    DeviceNotFoundError,
    DevicePermissionError,
    UstackError,
)

__all__ = [
    "OFFLOAD_CSUM",
    "OFFLOAD_TSO4",
    "OFFLOAD_TSO6",
    "OFFLOAD_TSO_ECN",
    "VNET_F_DATA_VALID",
    "VNET_F_NEEDS_CSUM",
    "VNET_GSO_ECN",
    "VNET_GSO_NONE",
    "VNET_GSO_TCPV4",
    "VNET_GSO_TCPV6",
    "VNET_GSO_UDP",
    "Ring",
    "VnetHeader",
]

assert HEADROOM == _lib.US_HEADROOM and VNET_HDR_LEN == _lib.US_VNET_HDR_LEN
assert len(COUNTER_NAMES) == _lib.US_N_COUNTERS

OFFLOAD_CSUM: int = _lib.US_OFFLOAD_CSUM
OFFLOAD_TSO4: int = _lib.US_OFFLOAD_TSO4
OFFLOAD_TSO6: int = _lib.US_OFFLOAD_TSO6
OFFLOAD_TSO_ECN: int = _lib.US_OFFLOAD_TSO_ECN

# Slot for an Ethernet frame of a 1500-byte MTU plus a VLAN tag, and for a
# 64 KB GSO frame when the kernel may hand us superframes.
SLOT_SIZE_PLAIN = 2048
SLOT_SIZE_GSO = 65536 + 4096


def _raise_open_error(ifname: str, err: int, message: str) -> None:
    if err in (errno.EPERM, errno.EACCES):
        raise DevicePermissionError(err, f"{message} (needs root or CAP_NET_ADMIN)", ifname)
    if err in (errno.ENODEV, errno.ENOENT, errno.ENXIO):
        raise DeviceNotFoundError(err, message, ifname)
    if err == errno.EINVAL and "name" in message:
        raise BadDeviceNameError(message)
    raise UstackError(message)


class Ring(FrameDevice):
    """One TAP queue with its buffer pool and counters."""

    def __init__(
        self,
        ifname: str,
        *,
        namespace: str | None = None,
        multi_queue: bool = True,
        vnet_hdr: bool = False,
        offloads: int = 0,
        rx_slots: int = 256,
        tx_slots: int = 512,
        slot_size: int | None = None,
        create: bool = False,
    ) -> None:
        if slot_size is None:
            slot_size = SLOT_SIZE_GSO if vnet_hdr else SLOT_SIZE_PLAIN
        if offloads and not vnet_hdr:
            raise ValueError(
                "offloads need vnet_hdr=True: the kernel describes them in that header"
            )
        flags = 0
        if multi_queue:
            flags |= _lib.US_OPEN_MULTI_QUEUE
        if vnet_hdr:
            flags |= _lib.US_OPEN_VNET_HDR
        if create:
            flags |= _lib.US_OPEN_CREATE
        err = _ffi.new("char[256]")
        name = ifname.encode()

        # A TAP is looked up by name in the namespace of whoever opens
        # /dev/net/tun, and the fd stays bound to it afterwards.
        with netns.inside(namespace):
            ptr = _lib.us_ring_open(name, flags, offloads, rx_slots, tx_slots, slot_size, err, 256)
        if ptr == _ffi.NULL:
            _raise_open_error(ifname, _ffi.errno, _ffi.string(err).decode(errors="replace"))
        self._ptr = _ffi.gc(ptr, _lib.us_ring_close)
        self.ifname = ifname
        self.namespace = namespace
        info = _ffi.new("struct us_ring_info *")
        _lib.us_ring_info(self._ptr, info)
        self.name = ifname
        self.hugepages = bool(info.hugepages)
        self.offloads: int = info.offloads
        self._init_slots(info.slot_size, info.rx_slots, info.tx_slots, info.vnet_hdr_len)
        self._fd: int = info.fd

        self.pool = memoryview(_ffi.buffer(_lib.us_ring_pool(self._ptr), info.pool_bytes))
        self.counters = memoryview(
            _ffi.buffer(_lib.us_ring_counters(self._ptr), 8 * len(COUNTER_NAMES))
        ).cast("Q")
        self.rx_len = memoryview(
            _ffi.buffer(_lib.us_ring_rx_len(self._ptr), 4 * self.rx_slots)
        ).cast("I")
        self._tx_slot = memoryview(
            _ffi.buffer(_lib.us_ring_tx_slot(self._ptr), 4 * self.tx_slots)
        ).cast("I")
        self._tx_len = memoryview(
            _ffi.buffer(_lib.us_ring_tx_len(self._ptr), 4 * self.tx_slots)
        ).cast("I")
        self._rx_burst = _lib.us_rx_burst
        self._tx_burst = _lib.us_tx_burst
        self._closed = False

    # -- lifecycle -------------------------------------------------------

    def fileno(self) -> int:
        """The TAP fd, for registering in a selector (it is nonblocking)."""
        return self._fd

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for view in (self.counters, self.rx_len, self._tx_slot, self._tx_len, self.pool):
            view.release()
        ptr, self._ptr = self._ptr, _ffi.NULL
        _ffi.release(ptr)

    def __enter__(self) -> Ring:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def set_offload(self, offloads: int) -> None:
        """Change TUNSETOFFLOAD on the fly (needs vnet headers unless 0)."""
        rc = _lib.us_ring_set_offload(self._ptr, offloads)
        if rc < 0:
            raise UstackError(
                f"cannot set offloads {offloads:#x} on {self.ifname}: {os.strerror(-rc)}"
            )
        self.offloads = offloads

    # -- receive ---------------------------------------------------------

    def rx_burst(self, max_frames: int = 32) -> int:
        """Read up to max_frames frames in one call; returns how many.

        Frame i of the burst is `pool[rx_offset(i) : rx_offset(i) + rx_len[i]]`.
        """
        n: int = self._rx_burst(self._ptr, max_frames)
        if n < 0:
            self._gone(-n)
        if self.pcap is not None and n:
            self.pcap.write_rx(self, n)
        return n

    def _write_burst(self, n: int) -> int:
        sent: int = self._tx_burst(self._ptr, n)
        if sent < 0:
            self._gone(-sent)
        return sent

    # -- waiting ---------------------------------------------------------

    def wait(self, timeout_ms: int) -> bool:
        """Block in epoll until a frame is readable; False on timeout or signal."""
        rc: int = _lib.us_wait(self._ptr, timeout_ms)
        if rc < 0:
            self._gone(-rc)
        return rc > 0

    def _gone(self, err: int) -> None:
        raise DeviceGoneError(
            err, f"TAP device {self.ifname} is gone ({os.strerror(err)})", self.ifname
        )
