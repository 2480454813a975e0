"""Seeded fault injection between a frame device and the stack: loss, duplication,
reordering, delay and corruption, for testing integrity under impairment.

`FaultDevice` wraps another device (a `Ring` or a `MemoryRing`) and is itself
a `FrameDevice`, so a Stack or a Context uses it unchanged.  It owns a pool
with the inner device's geometry (slot size, vnet header length, RX and TX
slot counts): `rx_burst()` pulls a burst from the inner device, applies the
RX faults and copies what survives into its own RX slots; `tx_burst()`
applies the TX faults to the frames queued in its own TX slots and copies
what survives into the inner device's TX slots, then flushes it.  Frames
are copied with their virtio-net header.

Theory of operation.  Each direction is a pipe.  A frame entering a pipe
draws, from that direction's generator and in this order, only for the
faults whose probability is non-zero:

1. loss: the frame is dropped;
2. dup: the frame goes on as two copies, one after the other;
3. for each copy, corrupt: one byte of the IPv4 datagram (past the Ethernet
   header, inside the IPv4 total length so that link padding is never the
   byte chosen) is XORed with a non-zero value, so the IPv4 header checksum
   or the ICMP/UDP/TCP checksum must catch it (or, for a few header bytes,
   the version, IHL and length checks before it; the one hole is a flip
   that turns a UDP checksum into zero, "no checksum").  The position and then
   the value are two more draws.  Frames that are not IPv4 (ARP above all,
   which has no checksum and whose corruption would only poison a
   neighbour cache) are never corrupted and draw nothing more;
4. for each copy, reorder: the copy is held back until K (1 to 3, one more
   draw) later frames of the same direction have gone past it, or
   `reorder_hold_us` at the latest when traffic stops.

Then every copy, when `delay_us` is set, waits on a delay line for
`delay_us` of the device's clock before it is released (and, if it drew
reorder, held back from there).  The draws depend only on the sequence of
frames, never on timing, so a seed and the same input replay the same
faults.  RX and TX have separate generators, seeded with the strings
``f"{seed}/rx"`` and ``f"{seed}/tx"``: the faults of one direction do not
depend on the traffic of the other.  A spec without a seed gets a random
one, kept in `FaultDevice.spec` and reported as the `fault_seed` counter,
so that a failing run can be replayed.

Held frames (delay line and reorder hold, both directions) are copies and
share one bound, `max_held`; a frame that would exceed it is dropped and
counted in `fault_overflow`.  Held frames are released by the next
`rx_burst()` or `tx_burst()` after they are due; `wait()` never sleeps past
`next_release_us()`.  The inner device's file descriptor does not become
readable for a held frame: drive a FaultDevice through `wait()`, not a
selector on `fileno()` alone.

Checksum offloads: a corrupted RX frame has its vnet header flags cleared,
so the stack verifies the checksums that the kernel had vouched for.  A TX
frame whose vnet header asks the kernel to complete the checksum
(NEEDS_CSUM) is corrupted in its IPv4 header only, since the kernel would
checksum a corrupted payload as if it were good; with GSO the kernel also
rewrites parts of that header, so such corruption may go unnoticed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ustack.dev.base import (
    COUNTER_NAMES,
    HEADROOM,
    VNET_F_NEEDS_CSUM,
    FrameDevice,
)
from ustack.errors import PoolExhaustedError

__all__ = ["DIRECTIONS", "FaultDevice", "FaultSpec", "monotonic_us"]

DIRECTIONS = ("rx", "tx", "both")
REORDER_MAX_FRAMES = 3
"""A reordered frame goes out after 1 to this many later frames."""
DEFAULT_MAX_HELD = 4096

_ETH_HLEN = 14
_ETHERTYPE_IPV4 = b"\x08\x00"
_IPV4_HLEN = 20
_C_POOL_EXHAUSTED = COUNTER_NAMES.index("tx_pool_exhausted")

_KEYS = ("loss", "dup", "reorder", "corrupt", "delay", "hold", "seed", "dir")
_PROBABILITY_KEYS = {"loss": "loss", "dup": "dup", "reorder": "reorder", "corrupt": "corrupt"}
_DURATION_KEYS = {"delay": "delay_us", "hold": "reorder_hold_us"}
_UNIT_US = {"us": 1, "ms": 1_000, "s": 1_000_000}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(us|ms|s)?")


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def _parse_probability(key: str, value: str) -> float:
    text = value.strip()
    scale = 1.0
    if text.endswith("%"):
        text, scale = text[:-1], 0.01
    try:
        p = float(text) * scale
    except ValueError:
        raise ValueError(
            f"fault spec: {key}={value!r} is not a probability (use a number from 0 to 1)"
        ) from None
    if not 0.0 <= p <= 1.0:  # also rejects nan
        raise ValueError(f"fault spec: {key}={value!r} is out of range (0 to 1)")
    return p


def _parse_duration_us(key: str, value: str) -> int:
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"fault spec: {key}={value!r} is negative")
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(
            f"fault spec: {key}={value!r} is not a duration (e.g. 20ms, 500us, 1s; "
            "a bare number is milliseconds)"
        )
    return round(float(m.group(1)) * _UNIT_US[m.group(2) or "ms"])


def _format_duration(us: int) -> str:
    if us % 1000:
        return f"{us}us"
    return f"{us // 1000}ms"


@dataclass(frozen=True)
class FaultSpec:
    """What to inject: probabilities per frame, a delay, a seed and a direction."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay_us: int = 0
    seed: int | None = None
    direction: str = "both"
    reorder_hold_us: int = 1_000
    """Longest a reordered frame waits for later frames to overtake it."""

    def __post_init__(self) -> None:
        for name in ("loss", "dup", "reorder", "corrupt"):
            p = getattr(self, name)
            if not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
                raise ValueError(f"fault spec: {name}={p!r} is out of range (0 to 1)")
        for name in ("delay_us", "reorder_hold_us"):
            us = getattr(self, name)
            if not isinstance(us, int) or us < 0:
                raise ValueError(f"fault spec: {name}={us!r} must be a non-negative integer")
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"fault spec: dir={self.direction!r} must be one of {', '.join(DIRECTIONS)}"
            )
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"fault spec: seed={self.seed!r} must be an integer")

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """Read ``loss=0.05,dup=0.01,reorder=0.05,delay=20ms,corrupt=0.001,seed=7,dir=rx``.

        Probabilities are numbers from 0 to 1 (or percentages, ``5%``);
        durations (``delay``, ``hold`` for the reorder hold) take ``us``,
        ``ms`` or ``s`` and a bare number is milliseconds; ``dir`` is rx, tx
        or both.  An empty string is no fault at all.
        """
        fields: dict[str, object] = {}
        seen: set[str] = set()
        if not text.strip():
            return cls()
        for item in text.split(","):
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or not key or not value.strip():
                raise ValueError(
                    f"fault spec: malformed item {item.strip()!r} (expected key=value)"
                )
            if key == "direction":
                key = "dir"
            if key not in _KEYS:
                raise ValueError(
                    f"fault spec: unknown key {key!r} in {item.strip()!r} "
                    f"(known: {', '.join(_KEYS)})"
                )
            if key in seen:
                raise ValueError(f"fault spec: {key} is given twice")
            seen.add(key)
            if key in _PROBABILITY_KEYS:
                fields[_PROBABILITY_KEYS[key]] = _parse_probability(key, value)
            elif key in _DURATION_KEYS:
                fields[_DURATION_KEYS[key]] = _parse_duration_us(key, value)
            elif key == "seed":
                try:
                    fields["seed"] = int(value.strip())
                except ValueError:
                    raise ValueError(f"fault spec: seed={value!r} is not an integer") from None
            else:
                direction = value.strip().lower()
                if direction not in DIRECTIONS:
                    raise ValueError(
                        f"fault spec: dir={value!r} must be one of {', '.join(DIRECTIONS)}"
                    )
                fields["direction"] = direction
        return cls(**fields)  # type: ignore[arg-type]

    def __str__(self) -> str:
        """The spec in parse() syntax (non-default fields, seed and direction)."""
        parts = [
            f"{name}={getattr(self, name)!r}"
            for name in ("loss", "dup", "reorder", "corrupt")
            if getattr(self, name)
        ]
        if self.delay_us:
            parts.append(f"delay={_format_duration(self.delay_us)}")
        if self.reorder_hold_us != FaultSpec.reorder_hold_us:
            parts.append(f"hold={_format_duration(self.reorder_hold_us)}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        parts.append(f"dir={self.direction}")
        return ",".join(parts)

    @property
    def active(self) -> bool:
        """Whether this spec changes anything at all."""
        return bool(self.loss or self.dup or self.reorder or self.corrupt or self.delay_us)

    def applies_to(self, direction: str) -> bool:
        """Whether faults are injected in direction "rx" or "tx"."""
        return self.active and self.direction in (direction, "both")


class _HoldBudget:
    """The bound on held frames that both directions share."""

    __slots__ = ("limit", "overflow", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.overflow = 0


class _Pipe:
    """The faults of one direction: frames in (as bytes, vnet header first), frames out in `ready`.

    A frame is a bytes object holding the vnet header (vnet_len bytes, maybe
    0) followed by the Ethernet frame.
    """

    def __init__(
        self, spec: FaultSpec, rng: random.Random, vnet_len: int, rx: bool, budget: _HoldBudget
    ) -> None:
        self.loss = spec.loss
        self.dup = spec.dup
        self.reorder = spec.reorder
        self.corrupt = spec.corrupt
        self.delay_us = spec.delay_us
        self.hold_us = spec.reorder_hold_us
        self.rng = rng
        self.vnet_len = vnet_len
        self.rx = rx
        self.budget = budget
        self.ready: deque[bytes] = deque()
        # (due_us, frame, k): k > 0 when the frame is to be reordered after release.
        self.delayed: deque[tuple[int, bytes, int]] = deque()
        # [release after this many passed frames, deadline_us, frame], in hold order.
        self.held: list[tuple[int, int, bytes]] = []
        self.passed = 0
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0
        self.delayed_count = 0
        self.corrupted = 0

    @property
    def holding(self) -> int:
        return len(self.delayed) + len(self.held)

    def arrive(self, frame: bytes, now_us: int) -> None:
        """One frame enters the pipe at now_us."""
        rand = self.rng.random
        if self.loss and rand() < self.loss:
            self.dropped += 1
            return
        copies = 1
        if self.dup and rand() < self.dup:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            out = frame
            if self.corrupt and rand() < self.corrupt:
                corrupted = self._corrupt(frame)
                if corrupted is not None:
                    out = corrupted
                    self.corrupted += 1
            k = 0
            if self.reorder and rand() < self.reorder:
                k = self.rng.randint(1, REORDER_MAX_FRAMES)
            if self.delay_us:
                if not self._reserve():
                    continue
                self.delayed_count += 1
                if k:
                    self.reordered += 1
                self.delayed.append((now_us + self.delay_us, out, k))
            else:
                self._release(out, k, now_us)

    def _reserve(self) -> bool:
        b = self.budget
        if b.used >= b.limit:
            b.overflow += 1
            return False
        b.used += 1
        return True

    def _corrupt(self, frame: bytes) -> bytes | None:
        """A copy of frame with one byte of its IPv4 datagram flipped, or None if not IPv4."""
        v = self.vnet_len
        eth = v
        l3 = eth + _ETH_HLEN
        if len(frame) < l3 + _IPV4_HLEN or frame[eth + 12 : eth + 14] != _ETHERTYPE_IPV4:
            return None
        if not self.rx and v and frame[0] & VNET_F_NEEDS_CSUM:
            end = l3 + max(_IPV4_HLEN, (frame[l3] & 0x0F) * 4)
        else:
            total_len = (frame[l3 + 2] << 8) | frame[l3 + 3]
            end = l3 + max(_IPV4_HLEN, total_len)
        end = min(end, len(frame))
        pos = self.rng.randrange(l3, end)
        out = bytearray(frame)
        out[pos] ^= self.rng.randrange(1, 256)
        if self.rx and v:
            out[0] = 0  # the kernel's DATA_VALID / NEEDS_CSUM no longer hold
        return bytes(out)

    def _release(self, frame: bytes, k: int, now_us: int) -> None:
        """A frame leaves the delay line (or skips it): hold it back, or let it out."""
        if k:
            if not self.delay_us:
                # Held frames count against the bound from here (delayed ones already do).
                if not self._reserve():
                    return
                self.reordered += 1
            self.held.append((self.passed + k, now_us + self.hold_us, frame))
            return
        if self.delay_us:
            self.budget.used -= 1
        self.ready.append(frame)
        self.passed += 1
        if self.held:
            passed = self.passed
            keep: list[tuple[int, int, bytes]] = []
            for entry in self.held:
                if entry[0] <= passed:
                    self._let_out(entry[2])
                else:
                    keep.append(entry)
            self.held = keep

    def _let_out(self, frame: bytes) -> None:
        self.budget.used -= 1
        self.ready.append(frame)

    def advance(self, now_us: int) -> None:
        """Release what is due at now_us: the delay line first, then expired reorder holds."""
        delayed = self.delayed
        while delayed and delayed[0][0] <= now_us:
            due, frame, k = delayed.popleft()
            if k:
                # Keeps its budget unit: it moves from the delay line to the
                # hold, timed from when it was due, not from when we looked.
                self.held.append((self.passed + k, due + self.hold_us, frame))
            else:
                self._release(frame, 0, due)
        if self.held:
            keep: list[tuple[int, int, bytes]] = []
            for entry in self.held:
                if entry[1] <= now_us:
                    self._let_out(entry[2])
                else:
                    keep.append(entry)
            self.held = keep

    def next_release_us(self) -> int | None:
        due = self.delayed[0][0] if self.delayed else None
        for entry in self.held:
            if due is None or entry[1] < due:
                due = entry[1]
        return due


class FaultDevice(FrameDevice):
    """A device that injects seeded faults into the frames of another one."""

    def __init__(
        self,
        inner: FrameDevice,
        spec: FaultSpec,
        clock: Callable[[], int] = monotonic_us,
        *,
        max_held: int = DEFAULT_MAX_HELD,
    ) -> None:
        if max_held < 1:
            raise ValueError(f"max_held must be at least 1 frame, got {max_held}")
        if spec.seed is None:
            spec = dataclasses.replace(spec, seed=random.SystemRandom().randrange(1, 2**32))
        assert spec.seed is not None
        self.inner = inner
        self.spec = spec
        self.clock = clock
        self.name = f"fault({inner.name})"
        size = inner.slot_size
        rx_slots = inner.rx_slots
        tx_slots = inner.tx_slots
        vnet = inner.vnet_hdr_len
        self._init_slots(size, rx_slots, tx_slots, vnet)
        self.pool = memoryview(bytearray(size * (rx_slots + tx_slots)))
        self.counters = memoryview(array("Q", bytes(8 * len(COUNTER_NAMES)))).cast("B").cast("Q")
        self.rx_len = memoryview(array("I", bytes(4 * rx_slots))).cast("B").cast("I")
        self._tx_slot = memoryview(array("I", bytes(4 * tx_slots))).cast("B").cast("I")
        self._tx_len = memoryview(array("I", bytes(4 * tx_slots))).cast("B").cast("I")
        self._budget = _HoldBudget(max_held)
        self._rx_on = spec.applies_to("rx")
        self._tx_on = spec.applies_to("tx")
        self._rx = _Pipe(spec, random.Random(f"{spec.seed}/rx"), vnet, True, self._budget)
        self._tx = _Pipe(spec, random.Random(f"{spec.seed}/tx"), vnet, False, self._budget)
        self.tx_no_slot = 0

    @property
    def max_held(self) -> int:
        return self._budget.limit

    # -- receive ---------------------------------------------------------

    def rx_burst(self, max_frames: int = 32) -> int:
        limit = min(max_frames, self.rx_slots)
        if limit <= 0:
            return 0
        inner = self.inner
        if not self._rx_on:
            n = inner.rx_burst(limit)
            self._copy_rx_through(n)
        else:
            now = self.clock()
            pipe = self._rx
            pipe.advance(now)
            if len(pipe.ready) < limit:
                m = inner.rx_burst(limit)
                ipool = inner.pool
                lens = inner.rx_len
                size = inner.slot_size
                v = self.vnet_hdr_len
                for i in range(m):
                    off = i * size + HEADROOM
                    pipe.arrive(bytes(ipool[off - v : off + lens[i]]), now)
            n = self._deliver_rx(limit)
        if self._tx.holding:
            self._pump_tx(self.clock())
        if self.pcap is not None and n:
            self.pcap.write_rx(self, n)
        return n

    def _copy_rx_through(self, n: int) -> None:
        """No RX faults: frame i of the inner burst becomes frame i here (same geometry)."""
        pool = self.pool
        ipool = self.inner.pool
        ilens = self.inner.rx_len
        lens = self.rx_len
        size = self.slot_size
        v = self.vnet_hdr_len
        for i in range(n):
            off = i * size + HEADROOM
            length = ilens[i]
            pool[off - v : off + length] = ipool[off - v : off + length]
            lens[i] = length

    def _deliver_rx(self, limit: int) -> int:
        ready = self._rx.ready
        pool = self.pool
        lens = self.rx_len
        size = self.slot_size
        v = self.vnet_hdr_len
        n = 0
        while n < limit and ready:
            frame = ready.popleft()
            off = n * size + HEADROOM
            pool[off - v : off - v + len(frame)] = frame
            lens[n] = len(frame) - v
            n += 1
        return n

    # -- transmit --------------------------------------------------------

    def tx_burst(self) -> int:
        n = super().tx_burst()
        if not n and self._tx.holding:
            self._pump_tx(self.clock())
        return n

    def _write_burst(self, n: int) -> int:
        pool = self.pool
        size = self.slot_size
        slots = self._tx_slot
        lens = self._tx_len
        v = self.vnet_hdr_len
        if not self._tx_on:
            for i in range(n):
                off = slots[i] * size + HEADROOM
                self._to_inner(pool[off - v : off + lens[i]])
            if self.inner.tx_pending:
                self.inner.tx_burst()
            return n
        now = self.clock()
        pipe = self._tx
        for i in range(n):
            off = slots[i] * size + HEADROOM
            pipe.arrive(bytes(pool[off - v : off + lens[i]]), now)
        self._pump_tx(now)
        return n

    def _pump_tx(self, now_us: int) -> None:
        """Hand the due TX frames to the inner device and flush it."""
        pipe = self._tx
        pipe.advance(now_us)
        ready = pipe.ready
        while ready:
            self._to_inner(ready.popleft())
        if self.inner.tx_pending:
            self.inner.tx_burst()

    def _to_inner(self, frame: bytes | memoryview) -> None:
        """Queue one frame (vnet header first) on the inner device."""
        inner = self.inner
        try:
            slot = inner.tx_alloc()
        except PoolExhaustedError:
            inner.tx_burst()
            try:
                slot = inner.tx_alloc()
            except PoolExhaustedError:
                self.tx_no_slot += 1
                return
        v = self.vnet_hdr_len
        off = inner.tx_offset(slot)
        inner.pool[off - v : off - v + len(frame)] = frame
        inner.tx_submit(slot, len(frame) - v)

    # -- waiting and counters ----------------------------------------------

    def next_release_us(self) -> int | None:
        """When the next held frame (either direction) is due, or None if none is held."""
        a = self._rx.next_release_us()
        b = self._tx.next_release_us()
        if a is None:
            return b
        return a if b is None else min(a, b)

    def wait(self, timeout_ms: int) -> bool:
        """Wait like the inner device, but never past the release of a held frame."""
        if self._rx.ready:
            return True
        due = self.next_release_us()
        if due is None:
            return self.inner.wait(timeout_ms)
        now = self.clock()
        if due <= now:
            return True
        left_ms = math.ceil((due - now) / 1000)
        if 0 <= timeout_ms <= left_ms:
            return self.inner.wait(timeout_ms)
        return self.inner.wait(left_ms) or self.clock() >= due

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        """Close the inner device; held frames are discarded."""
        for pipe in (self._rx, self._tx):
            pipe.ready.clear()
            pipe.delayed.clear()
            pipe.held.clear()
        self._budget.used = 0
        self.inner.close()

    def fault_stats(self) -> dict[str, int]:
        """The fault counters alone."""
        out: dict[str, int] = {}
        for d, p in (("rx", self._rx), ("tx", self._tx)):
            out[f"fault_{d}_dropped"] = p.dropped
            out[f"fault_{d}_duplicated"] = p.duplicated
            out[f"fault_{d}_reordered"] = p.reordered
            out[f"fault_{d}_delayed"] = p.delayed_count
            out[f"fault_{d}_corrupted"] = p.corrupted
        out["fault_held"] = self._rx.holding + self._tx.holding
        out["fault_overflow"] = self._budget.overflow
        out["fault_tx_no_slot"] = self.tx_no_slot
        assert self.spec.seed is not None
        out["fault_seed"] = self.spec.seed
        return out

    def stats(self) -> dict[str, int]:
        """The inner device's counters (our own transmit pool's exhaustion added) and ours."""
        out = self.inner.stats()
        out["tx_pool_exhausted"] = (
            out.get("tx_pool_exhausted", 0) + self.counters[_C_POOL_EXHAUSTED]
        )
        out.update(self.fault_stats())
        return out
