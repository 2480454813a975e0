"""What every frame device shares: the slot pool, its views and TX bookkeeping.

A device's pool is one buffer of fixed-size slots.  The first `rx_slots`
are refilled by every `rx_burst()`: frame i of a burst lies at
`rx_offset(i)` for `rx_len[i]` bytes until the next burst overwrites it, so
nothing may keep a view of it past the burst.  The other slots are for
transmit: `tx_alloc()` hands one out, the caller writes the frame at
`tx_offset(slot)`, `tx_submit()` queues it and `tx_burst()` writes every
queued frame in one call and puts the slots back on the free list.

When virtio-net headers are on, each frame carries the header of
include/uapi/linux/virtio_net.h in the ten bytes before it: read it with
`rx_vnet(i)`, set it with `tx_set_vnet(slot, ...)`.

Subclasses (the TAP `Ring`, the in-memory `MemoryRing`) provide the
buffers and the burst calls.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from ustack.errors import PoolExhaustedError, UstackError

if TYPE_CHECKING:
    from ustack.dev.pcap import PcapWriter

HEADROOM = 64
VNET_HDR_LEN = 10

# virtio-net header flags and GSO types (virtio 1.x, section 5.1.6)
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_UDP = 3
VNET_GSO_TCPV6 = 4
VNET_GSO_ECN = 0x80

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
C_POOL_EXHAUSTED = COUNTER_NAMES.index("tx_pool_exhausted")

VNET_STRUCT = struct.Struct("<BBHHHH")  # struct virtio_net_hdr, little-endian
_VNET_ZERO = bytes(VNET_HDR_LEN)


class VnetHeader(NamedTuple):
    """struct virtio_net_hdr, little-endian as the TAP uses it on this host."""

    flags: int = 0
    gso_type: int = VNET_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0


class FrameDevice:
    """Slot pool, descriptor views and transmit bookkeeping of a device."""

    name: str
    pool: memoryview
    counters: memoryview
    rx_len: memoryview
    _tx_slot: memoryview
    _tx_len: memoryview

    def _init_slots(self, slot_size: int, rx_slots: int, tx_slots: int, vnet_hdr_len: int) -> None:
        self.slot_size = slot_size
        self.rx_slots = rx_slots
        self.tx_slots = tx_slots
        self.vnet_hdr_len = vnet_hdr_len
        # TX slots follow the RX slots in the pool; the free list is a stack
        # so the most recently used (cache-warm) slot is reused first.
        self._tx_free: list[int] = list(range(rx_slots + tx_slots - 1, rx_slots - 1, -1))
        # The queued slots also as Python ints, so that tx_burst returns them
        # to the free list without re-creating an int per frame from C memory.
        self._tx_queued: list[int] = []
        self._tx_pending = 0
        self.pcap: PcapWriter | None = None

    # -- receive ---------------------------------------------------------

    def rx_burst(self, max_frames: int = 32) -> int:
        raise NotImplementedError

    def rx_offset(self, i: int) -> int:
        return i * self.slot_size + HEADROOM

    def frame(self, i: int) -> memoryview:
        """Frame i of the last burst as a view (valid until the next burst)."""
        off = i * self.slot_size + HEADROOM
        return self.pool[off : off + self.rx_len[i]]

    def rx_vnet(self, i: int) -> VnetHeader:
        """The virtio-net header that came with frame i of the last burst."""
        if not self.vnet_hdr_len:
            raise UstackError(f"{self.name} was opened without vnet headers")
        off = i * self.slot_size + HEADROOM - VNET_HDR_LEN
        return VnetHeader._make(VNET_STRUCT.unpack_from(self.pool, off))

    # -- transmit --------------------------------------------------------

    def tx_alloc(self) -> int:
        """Take a free transmit slot; its frame area starts at tx_offset(slot)."""
        try:
            slot = self._tx_free.pop()
        except IndexError:
            self.counters[C_POOL_EXHAUSTED] += 1
            raise PoolExhaustedError(
                f"all {self.tx_slots} transmit slots of {self.name} are in use; "
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
            raise UstackError(f"{self.name} was opened without vnet headers")
        VNET_STRUCT.pack_into(self.pool, slot * self.slot_size + HEADROOM - VNET_HDR_LEN, *hdr)

    def tx_submit(self, slot: int, length: int) -> None:
        """Queue the frame of `slot` (length bytes) for the next tx_burst."""
        n = self._tx_pending
        self._tx_slot[n] = slot
        self._tx_len[n] = length
        self._tx_queued.append(slot)
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
        self._tx_pending = 0
        try:
            return self._write_burst(n)
        finally:
            self._tx_free.extend(self._tx_queued)
            self._tx_queued.clear()

    def _write_burst(self, n: int) -> int:
        raise NotImplementedError

    def tx_slot_of(self, i: int) -> int:
        """Slot of the i-th queued frame (for the pcap writer)."""
        return int(self._tx_slot[i])

    def tx_len_of(self, i: int) -> int:
        return int(self._tx_len[i])

    # -- waiting and counters ----------------------------------------------

    def wait(self, timeout_ms: int) -> bool:
        raise NotImplementedError

    def fileno(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {name: int(c[i]) for i, name in enumerate(COUNTER_NAMES)}
