"""Python face of the C poll-mode ring (ext/ring.c); the only importer of ustack._ring.

A `Ring` owns one TAP queue and one buffer pool.  Received frames are read
in place: after `rx_burst()` returns n, frame i lies in `pool` at
`rx_offset(i)` for `rx_len[i]` bytes until the next burst overwrites it, so
nothing may keep a view of it past the burst.  Transmit is also in place:
`tx_alloc()` hands out a slot, the caller writes the frame at
`tx_offset(slot)`, `tx_submit()` queues it and `tx_burst()` writes every
queued frame in one call and returns the slots to the free list.

When virtio-net headers are on, each frame carries the header of
include/uapi/linux/virtio_net.h in the ten bytes before it: read it with
`rx_vnet(i)`, set it with `tx_set_vnet(slot, ...)`.
"""

from __future__ import annotations

import errno
import os
import struct
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

from ustack import netns
from ustack._ring import ffi as _ffi
from ustack._ring import lib as _lib
from ustack.errors import (
    BadDeviceNameError,
    DeviceGoneError,
    DeviceNotFoundError,
    DevicePermissionError,
    PoolExhaustedError,
    UstackError,
)

if TYPE_CHECKING:
    from ustack.dev.pcap import PcapWriter

HEADROOM: int = _lib.US_HEADROOM
VNET_HDR_LEN: int = _lib.US_VNET_HDR_LEN

OFFLOAD_CSUM: int = _lib.US_OFFLOAD_CSUM
OFFLOAD_TSO4: int = _lib.US_OFFLOAD_TSO4
OFFLOAD_TSO6: int = _lib.US_OFFLOAD_TSO6
OFFLOAD_TSO_ECN: int = _lib.US_OFFLOAD_TSO_ECN

# virtio-net header flags and GSO types (virtio 1.x, section 5.1.6)
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_UDP = 3
VNET_GSO_TCPV6 = 4
VNET_GSO_ECN = 0x80

# Slot for an Ethernet frame of a 1500-byte MTU plus a VLAN tag, and for a
# 64 KB GSO frame when the kernel may hand us superframes.
SLOT_SIZE_PLAIN = 2048
SLOT_SIZE_GSO = 65536 + 4096

COUNTER_NAMES: tuple[str, ...] = (
    "rx_frames",
    "rx_bytes",
    "tx_frames",
    "tx_bytes",
    "rx_bursts",
    "rx_empty_polls",
    "rx_reads",
    "rx_eagain",
    "tx_bursts",
    "tx_writes",
    "tx_eagain",
    "waits",
    "wakeups",
    "drop_rx_truncated",
    "drop_rx_short",
    "drop_rx_error",
    "drop_tx_error",
    "drop_tx_eagain",
    "drop_tx_bad_desc",
    "tx_pool_exhausted",
)
assert len(COUNTER_NAMES) == _lib.US_N_COUNTERS
_C_POOL_EXHAUSTED = COUNTER_NAMES.index("tx_pool_exhausted")

_VNET = struct.Struct("<BBHHHH")
_VNET_ZERO = bytes(VNET_HDR_LEN)


class VnetHeader(NamedTuple):
    """struct virtio_net_hdr, little-endian as the TAP uses it on this host."""

    flags: int = 0
    gso_type: int = VNET_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0


def _raise_open_error(ifname: str, err: int, message: str) -> None:
    if err in (errno.EPERM, errno.EACCES):
        raise DevicePermissionError(err, f"{message} (needs root or CAP_NET_ADMIN)", ifname)
    if err in (errno.ENODEV, errno.ENOENT, errno.ENXIO):
        raise DeviceNotFoundError(err, message, ifname)
    if err == errno.EINVAL and "name" in message:
        raise BadDeviceNameError(message)
    raise UstackError(message)


class Ring:
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
        self.vnet_hdr_len: int = info.vnet_hdr_len
        self.hugepages = bool(info.hugepages)
        self.offloads: int = info.offloads
        self.slot_size: int = info.slot_size
        self.rx_slots: int = info.rx_slots
        self.tx_slots: int = info.tx_slots
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
        # TX slots follow the RX slots in the pool; the free list is a stack
        # so the most recently used (cache-warm) slot is reused first.
        self._tx_free: list[int] = list(
            range(self.rx_slots + self.tx_slots - 1, self.rx_slots - 1, -1)
        )
        self._tx_pending = 0
        self._rx_burst = _lib.us_rx_burst
        self._tx_burst = _lib.us_tx_burst
        self.pcap: PcapWriter | None = None
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

    def rx_offset(self, i: int) -> int:
        return i * self.slot_size + HEADROOM

    def frame(self, i: int) -> memoryview:
        """Frame i of the last burst as a view (valid until the next burst)."""
        off = i * self.slot_size + HEADROOM
        return self.pool[off : off + self.rx_len[i]]

    def rx_vnet(self, i: int) -> VnetHeader:
        """The virtio-net header the kernel gave frame i of the last burst."""
        if not self.vnet_hdr_len:
            raise UstackError(f"{self.ifname} was opened without vnet headers")
        return VnetHeader._make(
            _VNET.unpack_from(self.pool, i * self.slot_size + HEADROOM - VNET_HDR_LEN)
        )

    # -- transmit --------------------------------------------------------

    def tx_alloc(self) -> int:
        """Take a free transmit slot; its frame area starts at tx_offset(slot)."""
        try:
            slot = self._tx_free.pop()
        except IndexError:
            self.counters[_C_POOL_EXHAUSTED] += 1
            raise PoolExhaustedError(
                f"all {self.tx_slots} transmit slots of {self.ifname} are in use; "
                "call tx_burst() or tx_free() first"
            ) from None
        if self.vnet_hdr_len:
            off = slot * self.slot_size + HEADROOM - VNET_HDR_LEN
            self.pool[off : off + VNET_HDR_LEN] = _VNET_ZERO
        return slot

    def tx_offset(self, slot: int) -> int:
        return slot * self.slot_size + HEADROOM

    def tx_buffer(self, slot: int) -> memoryview:
        """The writable frame area of a transmit slot."""
        off = slot * self.slot_size + HEADROOM
        return self.pool[off : off + self.slot_size - HEADROOM]

    @property
    def tx_capacity(self) -> int:
        """Largest frame a transmit slot holds."""
        return self.slot_size - HEADROOM

    def tx_free_count(self) -> int:
        return len(self._tx_free)

    def tx_set_vnet(self, slot: int, hdr: VnetHeader) -> None:
        if not self.vnet_hdr_len:
            raise UstackError(f"{self.ifname} was opened without vnet headers")
        _VNET.pack_into(self.pool, slot * self.slot_size + HEADROOM - VNET_HDR_LEN, *hdr)

    def tx_submit(self, slot: int, length: int) -> None:
        """Queue the frame of `slot` (length bytes) for the next tx_burst."""
        n = self._tx_pending
        self._tx_slot[n] = slot
        self._tx_len[n] = length
        self._tx_pending = n + 1

    def tx_free(self, slot: int) -> None:
        """Give back a slot that will not be submitted."""
        self._tx_free.append(slot)

    @property
    def tx_pending(self) -> int:
        return self._tx_pending

    def tx_burst(self) -> int:
        """Write every queued frame in one call; returns how many were written."""
        n = self._tx_pending
        if not n:
            return 0
        if self.pcap is not None:
            self.pcap.write_tx(self, n)
        sent: int = self._tx_burst(self._ptr, n)
        self._tx_pending = 0
        free = self._tx_free
        slots = self._tx_slot
        for i in range(n):
            free.append(slots[i])
        if sent < 0:
            self._gone(-sent)
        return sent

    def tx_slot_of(self, i: int) -> int:
        """Slot of the i-th queued frame (for the pcap writer)."""
        return int(self._tx_slot[i])

    def tx_len_of(self, i: int) -> int:
        return int(self._tx_len[i])

    # -- waiting ---------------------------------------------------------

    def wait(self, timeout_ms: int) -> bool:
        """Block in epoll until a frame is readable; False on timeout or signal."""
        rc: int = _lib.us_wait(self._ptr, timeout_ms)
        if rc < 0:
            self._gone(-rc)
        return rc > 0

    # -- counters --------------------------------------------------------

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {name: int(c[i]) for i, name in enumerate(COUNTER_NAMES)}

    def _gone(self, err: int) -> None:
        raise DeviceGoneError(
            err, f"TAP device {self.ifname} is gone ({os.strerror(err)})", self.ifname
        )
