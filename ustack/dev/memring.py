"""An in-memory device with the Ring's interface, for tests and simulations.

Frames handed to `inject()` come out of the next `rx_burst()`; frames
written with `tx_burst()` are appended to `sent` as bytes.  It lets the
stack be driven frame by frame with no TAP, no namespace and no root.
"""

from __future__ import annotations

from array import array
from collections import deque

from ustack.dev.base import (
    COUNTER_NAMES,
    HEADROOM,
    VNET_HDR_LEN,
    VNET_STRUCT,
    FrameDevice,
    VnetHeader,
)

_C = {name: i for i, name in enumerate(COUNTER_NAMES)}


class MemoryRing(FrameDevice):
    """A device whose wire is two Python queues."""

    def __init__(
        self,
        *,
        rx_slots: int = 256,
        tx_slots: int = 512,
        slot_size: int = 2048,
        vnet_hdr: bool = False,
        name: str = "mem0",
    ) -> None:
        self.name = name
        self._init_slots(slot_size, rx_slots, tx_slots, VNET_HDR_LEN if vnet_hdr else 0)
        self.pool = memoryview(bytearray(slot_size * (rx_slots + tx_slots)))
        self.counters = memoryview(array("Q", bytes(8 * len(COUNTER_NAMES)))).cast("B").cast("Q")
        self.rx_len = memoryview(array("I", bytes(4 * rx_slots))).cast("B").cast("I")
        self._tx_slot = memoryview(array("I", bytes(4 * tx_slots))).cast("B").cast("I")
        self._tx_len = memoryview(array("I", bytes(4 * tx_slots))).cast("B").cast("I")
        self._inbox: deque[tuple[bytes, VnetHeader | None]] = deque()
        self.sent: list[bytes] = []
        self.sent_vnet: list[VnetHeader | None] = []

    def inject(self, frame: bytes, vnet: VnetHeader | None = None) -> None:
        """Queue a frame for the next rx_burst (truncated to a slot, as a TAP read would fail)."""
        self._inbox.append((frame, vnet))

    def rx_burst(self, max_frames: int = 32) -> int:
        c = self.counters
        c[_C["rx_bursts"]] += 1
        cap = self.slot_size - HEADROOM
        n = 0
        while n < min(max_frames, self.rx_slots) and self._inbox:
            frame, vnet = self._inbox.popleft()
            if len(frame) > cap:
                c[_C["drop_rx_truncated"]] += 1
                continue
            if len(frame) < 14:
                c[_C["drop_rx_short"]] += 1
                continue
            off = n * self.slot_size + HEADROOM
            self.pool[off : off + len(frame)] = frame
            self.rx_len[n] = len(frame)
            if self.vnet_hdr_len:
                VNET_STRUCT.pack_into(self.pool, off - VNET_HDR_LEN, *(vnet or VnetHeader()))
            c[_C["rx_frames"]] += 1
            c[_C["rx_bytes"]] += len(frame)
            n += 1
        if not n:
            c[_C["rx_empty_polls"]] += 1
        if self.pcap is not None and n:
            self.pcap.write_rx(self, n)
        return n

    def _write_burst(self, n: int) -> int:
        c = self.counters
        c[_C["tx_bursts"]] += 1
        for i in range(n):
            off = self._tx_slot[i] * self.slot_size + HEADROOM
            length = self._tx_len[i]
            self.sent.append(bytes(self.pool[off : off + length]))
            if self.vnet_hdr_len:
                self.sent_vnet.append(self.tx_vnet_at(off))
            c[_C["tx_frames"]] += 1
            c[_C["tx_bytes"]] += length
        return n

    def tx_vnet_at(self, off: int) -> VnetHeader:
        return VnetHeader._make(VNET_STRUCT.unpack_from(self.pool, off - VNET_HDR_LEN))

    def wait(self, timeout_ms: int) -> bool:
        self.counters[_C["waits"]] += 1
        return bool(self._inbox)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self._inbox.clear()
