"""FaultDevice over a MemoryRing: each fault with a fixed seed and a fake clock.

The draws are part of the contract (see ustack/dev/fault.py): one
generator per direction seeded with ``f"{seed}/rx"`` or ``f"{seed}/tx"``,
and per frame loss, dup, then per copy corrupt and reorder, each drawn only
when its probability is non-zero.  So the expected outcome of a run is
computed here by replaying the same generator, and the counters are
asserted exactly.  A Stack over the FaultDevice then shows that corruption
is caught by the checksums and that a spec without faults changes nothing.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Padding, Raw

from ustack.dev.base import VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VnetHeader
from ustack.dev.fault import REORDER_MAX_FRAMES, FaultDevice, FaultSpec
from ustack.dev.memring import MemoryRing
from ustack.dev.pcap import PcapWriter
from ustack.loop import Context
from ustack.runtime import close_context
from ustack.stack.interface import Interface
from ustack.stack.stack import Stack

US = "198.18.0.2"
PEER = "198.18.0.1"
US_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
BCAST_MAC = "ff:ff:ff:ff:ff:ff"

MS = 1_000
T0 = 5_000_000
N = 200


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class SpyRing(MemoryRing):
    """A MemoryRing that records the timeouts it is asked to wait for."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.waited: list[int] = []

    def wait(self, timeout_ms: int) -> bool:
        self.waited.append(timeout_ms)
        return super().wait(timeout_ms)


def frame(i: int, size: int = 0) -> bytes:
    """A distinct IPv4/UDP frame from PEER to US, padded to at least 60 bytes."""
    pkt = (
        Ether(dst=US_MAC, src=PEER_MAC)
        / IP(src=PEER, dst=US, id=i)
        / UDP(sport=40000, dport=9000)
        / Raw(f"frame {i:04d} ".encode() + bytes(size))
    )
    raw = bytes(pkt)
    return raw + bytes(max(0, 60 - len(raw)))


FRAMES = [frame(i, size=(i * 37) % 300) for i in range(N)]


def rig(
    spec: FaultSpec, *, ring: MemoryRing | None = None, **kw: Any
) -> tuple[MemoryRing, FaultDevice, FakeClock]:
    ring = ring if ring is not None else MemoryRing()
    clock = FakeClock()
    return ring, FaultDevice(ring, spec, clock, **kw), clock


def receive(dev: FaultDevice, frames: list[bytes], burst: int = 16) -> list[bytes]:
    """Inject frames into the inner ring and run rx bursts until it is drained."""
    ring = dev.inner
    assert isinstance(ring, MemoryRing)
    for f in frames:
        ring.inject(f)
    out: list[bytes] = []
    while True:
        n = dev.rx_burst(burst)
        out.extend(bytes(dev.frame(i)) for i in range(n))
        if not n and not ring._inbox:
            return out


def send(dev: FaultDevice, frames: list[bytes], burst: int = 16) -> None:
    """Transmit frames through dev, `burst` per tx_burst."""
    for start in range(0, len(frames), burst):
        for f in frames[start : start + burst]:
            slot = dev.tx_alloc()
            dev.tx_buffer(slot)[: len(f)] = f
            dev.tx_submit(slot, len(f))
        dev.tx_burst()


def fault_counters(dev: FaultDevice) -> dict[str, int]:
    """The fault counters that are not zero, without the seed."""
    return {k: v for k, v in dev.fault_stats().items() if v and k != "fault_seed"}


def diff_positions(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [i for i in range(len(a)) if a[i] != b[i]]


# ---- no faults -----------------------------------------------------------------


def test_no_faults_rx_and_tx_pass_through_unchanged():
    ring, dev, _ = rig(FaultSpec(seed=1))
    assert receive(dev, FRAMES) == FRAMES
    send(dev, FRAMES)
    assert ring.sent == FRAMES
    assert fault_counters(dev) == {}
    assert dev.next_release_us() is None


def test_no_faults_vnet_headers_are_copied_both_ways():
    ring, dev, _ = rig(FaultSpec(seed=1), ring=MemoryRing(vnet_hdr=True))
    hdr = VnetHeader(flags=VNET_F_DATA_VALID)
    ring.inject(FRAMES[0], hdr)
    ring.inject(FRAMES[1])
    assert dev.rx_burst() == 2
    assert (dev.rx_vnet(0), dev.rx_vnet(1)) == (hdr, VnetHeader())
    assert bytes(dev.frame(0)) == FRAMES[0]
    out_hdr = VnetHeader(flags=VNET_F_NEEDS_CSUM, csum_start=34, csum_offset=6)
    slot = dev.tx_alloc()
    dev.tx_buffer(slot)[: len(FRAMES[2])] = FRAMES[2]
    dev.tx_set_vnet(slot, out_hdr)
    dev.tx_submit(slot, len(FRAMES[2]))
    assert dev.tx_burst() == 1
    assert ring.sent == [FRAMES[2]]
    assert ring.sent_vnet == [out_hdr]


def test_geometry_follows_the_inner_device():
    ring = MemoryRing(rx_slots=8, tx_slots=16, slot_size=4096, vnet_hdr=True)
    dev = FaultDevice(ring, FaultSpec(seed=1))
    assert (dev.rx_slots, dev.tx_slots, dev.slot_size, dev.vnet_hdr_len) == (8, 16, 4096, 10)
    assert dev.tx_capacity == ring.tx_capacity
    assert dev.fileno() == ring.fileno()


# ---- loss ------------------------------------------------------------------------


def test_rx_loss_drops_exactly_the_frames_the_seed_picks():
    _ring, dev, _ = rig(FaultSpec(loss=0.3, seed=7, direction="rx"))
    rng = random.Random("7/rx")
    expected = [f for f in FRAMES if not rng.random() < 0.3]
    assert receive(dev, FRAMES) == expected
    dropped = N - len(expected)
    assert 40 < dropped < 80
    assert fault_counters(dev) == {"fault_rx_dropped": dropped}
    assert dev.stats()["rx_frames"] == N  # the inner device's counters are merged in


def test_rx_loss_one_drops_everything_and_tx_is_untouched_by_dir_rx():
    ring, dev, _ = rig(FaultSpec(loss=1.0, seed=7, direction="rx"))
    assert receive(dev, FRAMES[:10]) == []
    send(dev, FRAMES[:10])
    assert ring.sent == FRAMES[:10]
    assert fault_counters(dev) == {"fault_rx_dropped": 10}


def test_tx_loss_drops_exactly_the_frames_the_seed_picks():
    ring, dev, _ = rig(FaultSpec(loss=0.3, seed=7, direction="tx"))
    rng = random.Random("7/tx")
    expected = [f for f in FRAMES if not rng.random() < 0.3]
    assert receive(dev, FRAMES) == FRAMES  # dir=tx leaves RX alone
    send(dev, FRAMES)
    assert ring.sent == expected
    assert fault_counters(dev) == {"fault_tx_dropped": N - len(expected)}


def test_both_directions_use_separate_generators():
    ring, dev, _ = rig(FaultSpec(loss=0.5, seed=3))
    send(dev, FRAMES[:50])  # TX traffic first must not shift the RX draws
    rx_rng = random.Random("3/rx")
    tx_rng = random.Random("3/tx")
    assert receive(dev, FRAMES) == [f for f in FRAMES if not rx_rng.random() < 0.5]
    assert ring.sent == [f for f in FRAMES[:50] if not tx_rng.random() < 0.5]


# ---- duplication -----------------------------------------------------------------


def test_rx_dup_delivers_the_picked_frames_twice_in_a_row():
    _ring, dev, _ = rig(FaultSpec(dup=0.2, seed=11, direction="rx"))
    rng = random.Random("11/rx")
    expected: list[bytes] = []
    for f in FRAMES:
        expected.extend([f, f] if rng.random() < 0.2 else [f])
    assert receive(dev, FRAMES) == expected
    assert fault_counters(dev) == {"fault_rx_duplicated": len(expected) - N}
    assert len(expected) - N > 20


def test_rx_dup_one_never_pulls_more_than_a_burst_ahead():
    ring, dev, _ = rig(FaultSpec(dup=1.0, seed=11, direction="rx"))
    for f in FRAMES[:8]:
        ring.inject(f)
    assert dev.rx_burst(4) == 4  # 4 pulled, 8 copies ready, 4 delivered
    assert len(ring._inbox) == 4
    assert dev.rx_burst(4) == 4  # 4 copies were ready: nothing pulled
    assert len(ring._inbox) == 4
    assert dev.wait(100) is True
    assert receive(dev, []) == [f for f in FRAMES[4:8] for _ in (0, 1)]
    assert fault_counters(dev) == {"fault_rx_duplicated": 8}


def test_tx_dup_beyond_the_inner_pool_flushes_it_midway():
    ring, dev, _ = rig(FaultSpec(dup=1.0, seed=2, direction="tx"), ring=MemoryRing(tx_slots=4))
    send(dev, FRAMES[:4], burst=4)
    assert ring.sent == [f for f in FRAMES[:4] for _ in (0, 1)]
    assert ring.stats()["tx_bursts"] == 2
    assert fault_counters(dev) == {"fault_tx_duplicated": 4}


# ---- reordering ------------------------------------------------------------------


def test_rx_reorder_changes_order_but_loses_nothing():
    _ring, dev, clock = rig(FaultSpec(reorder=0.2, seed=5, direction="rx"))
    out = receive(dev, FRAMES)
    clock.now += 1 * MS  # the default hold: what waits for later frames goes now
    out += receive(dev, [])
    assert sorted(out) == sorted(FRAMES)
    assert out != FRAMES
    rng = random.Random("5/rx")
    expected, count = _reorder_reference(FRAMES, 0.2, rng)
    assert out == expected
    assert fault_counters(dev) == {"fault_rx_reordered": count}
    assert 20 < count < 60


def _reorder_reference(
    frames: list[bytes], p: float, rng: random.Random
) -> tuple[list[bytes], int]:
    """Held frames go out right after the K-th frame that passes after them."""
    out: list[bytes] = []
    held: list[tuple[int, bytes]] = []
    passed = 0
    count = 0
    for f in frames:
        if rng.random() < p:
            held.append((passed + rng.randint(1, REORDER_MAX_FRAMES), f))
            count += 1
            continue
        out.append(f)
        passed += 1
        out.extend(h for after, h in held if after <= passed)
        held = [(after, h) for after, h in held if after > passed]
    return out + [h for _, h in held], count


def test_rx_reorder_hold_expires_when_no_later_frame_comes():
    _ring, dev, clock = rig(FaultSpec(reorder=1.0, seed=5, direction="rx", reorder_hold_us=5 * MS))
    assert receive(dev, FRAMES[:3]) == []
    assert dev.next_release_us() == T0 + 5 * MS
    assert dev.stats()["fault_held"] == 3
    clock.now = T0 + 5 * MS - 1
    assert receive(dev, []) == []
    clock.now = T0 + 5 * MS
    assert receive(dev, []) == FRAMES[:3]
    assert fault_counters(dev) == {"fault_rx_reordered": 3}


def test_tx_reorder_changes_order_but_loses_nothing():
    ring, dev, clock = rig(FaultSpec(reorder=0.2, seed=5, direction="tx"))
    send(dev, FRAMES)
    clock.now += 1 * MS
    assert dev.tx_burst() == 0  # nothing new, but the expired holds leave
    expected, count = _reorder_reference(FRAMES, 0.2, random.Random("5/tx"))
    assert ring.sent == expected
    assert sorted(ring.sent) == sorted(FRAMES)
    assert fault_counters(dev) == {"fault_tx_reordered": count}


# ---- delay -----------------------------------------------------------------------


def test_rx_delay_releases_after_delay_us_and_wait_wakes_for_it():
    _ring, dev, clock = rig(FaultSpec(delay_us=20 * MS, seed=1, direction="rx"), ring=SpyRing())
    spy = dev.inner
    assert isinstance(spy, SpyRing)
    assert receive(dev, FRAMES[:3]) == []
    assert dev.next_release_us() == T0 + 20 * MS
    clock.now = T0 + 10 * MS
    assert receive(dev, FRAMES[3:4]) == []
    assert fault_counters(dev) == {"fault_rx_delayed": 4, "fault_held": 4}

    # A long wait is cut to the release of the first held frame, rounded up.
    clock.now = T0 + 20 * MS - 1500
    assert dev.wait(1000) is False
    assert dev.wait(-1) is False
    assert dev.wait(1) is False
    assert spy.waited == [2, 2, 1]

    clock.now = T0 + 20 * MS
    assert dev.wait(1000) is True
    assert spy.waited == [2, 2, 1]  # due now: no need to ask the inner device
    assert receive(dev, []) == FRAMES[:3]
    assert dev.next_release_us() == T0 + 30 * MS
    clock.now = T0 + 30 * MS
    assert receive(dev, []) == FRAMES[3:4]
    assert dev.next_release_us() is None
    assert fault_counters(dev) == {"fault_rx_delayed": 4}
    assert dev.wait(50) is False
    assert spy.waited[-1] == 50


def test_tx_delay_releases_on_a_later_flush_or_receive_burst():
    ring, dev, clock = rig(FaultSpec(delay_us=500, seed=1, direction="tx"))
    send(dev, FRAMES[:2])
    assert ring.sent == []
    assert dev.next_release_us() == T0 + 500
    clock.now = T0 + 500
    assert dev.wait(10) is True
    assert dev.rx_burst() == 0  # the Context polls after a wakeup
    assert ring.sent == FRAMES[:2]
    send(dev, FRAMES[2:3])
    clock.now += 500
    assert dev.tx_burst() == 0
    assert ring.sent == FRAMES[:3]
    assert fault_counters(dev) == {"fault_tx_delayed": 3}


def test_delay_and_reorder_together_keep_every_frame():
    ring, dev, clock = rig(FaultSpec(delay_us=2 * MS, reorder=0.3, dup=0.1, seed=9))
    out: list[bytes] = []
    for start in range(0, N, 10):
        out += receive(dev, FRAMES[start : start + 10])
        send(dev, FRAMES[start : start + 10])
        clock.now += 300
    clock.now += 10 * MS
    out += receive(dev, [])
    assert dev.next_release_us() is None
    c = dev.fault_stats()
    assert c["fault_held"] == 0
    assert len(out) == N + c["fault_rx_duplicated"]
    assert set(out) == set(FRAMES)
    assert len(ring.sent) == N + c["fault_tx_duplicated"]
    assert set(ring.sent) == set(FRAMES)
    assert out != FRAMES and ring.sent != FRAMES


# ---- corruption ------------------------------------------------------------------


def test_rx_corrupt_flips_exactly_one_byte_of_the_ipv4_datagram():
    _ring, dev, _ = rig(FaultSpec(corrupt=1.0, seed=13, direction="rx"))
    short = frame(9999)  # padded to 60 bytes: the padding is never chosen
    frames = [*FRAMES, short]
    out = receive(dev, frames)
    assert len(out) == len(frames)
    positions = []
    for before, after in zip(frames, out, strict=True):
        diff = diff_positions(before, after)
        assert len(diff) == 1
        ip_len = Ether(before)[IP].len
        assert 14 <= diff[0] < 14 + ip_len
        positions.append(diff[0])
    assert min(positions) < 34 < max(positions)  # IPv4 header and payload both get hit
    assert fault_counters(dev) == {"fault_rx_corrupted": len(frames)}


def test_rx_corrupt_picks_the_frames_the_seed_picks_and_spares_arp():
    _ring, dev, _ = rig(FaultSpec(corrupt=0.1, seed=13, direction="rx"))
    arp = bytes(
        Ether(dst=BCAST_MAC, src=PEER_MAC)
        / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER, pdst=US)
        / Padding(bytes(18))
    )
    rng = random.Random("13/rx")
    hit = []
    for i, f in enumerate(FRAMES):
        if rng.random() < 0.1:
            hit.append(i)
            ip_len = Ether(f)[IP].len
            rng.randrange(14, 14 + ip_len)
            rng.randrange(1, 256)
    out = receive(dev, FRAMES)
    assert [i for i in range(N) if out[i] != FRAMES[i]] == hit
    assert fault_counters(dev) == {"fault_rx_corrupted": len(hit)}

    _, dev2, _ = rig(FaultSpec(corrupt=1.0, seed=13, direction="rx"))
    assert receive(dev2, [arp] * 5) == [arp] * 5
    assert fault_counters(dev2) == {}


def test_rx_corrupt_clears_the_vnet_flags_that_vouch_for_checksums():
    ring, dev, _ = rig(
        FaultSpec(corrupt=1.0, seed=13, direction="rx"), ring=MemoryRing(vnet_hdr=True)
    )
    ring.inject(FRAMES[0], VnetHeader(flags=VNET_F_DATA_VALID))
    assert dev.rx_burst() == 1
    assert dev.rx_vnet(0) == VnetHeader()
    assert len(diff_positions(FRAMES[0], bytes(dev.frame(0)))) == 1


def test_tx_corrupt_flips_one_byte_and_only_the_ip_header_when_the_kernel_checksums():
    ring, dev, _ = rig(
        FaultSpec(corrupt=1.0, seed=17, direction="tx"), ring=MemoryRing(vnet_hdr=True)
    )
    send(dev, FRAMES[:50])
    for before, after in zip(FRAMES[:50], ring.sent, strict=True):
        diff = diff_positions(before, after)
        assert len(diff) == 1 and 14 <= diff[0] < 14 + Ether(before)[IP].len
    assert any(diff_positions(b, a)[0] >= 34 for b, a in zip(FRAMES, ring.sent, strict=False))
    ring.sent.clear()
    hdr = VnetHeader(flags=VNET_F_NEEDS_CSUM, csum_start=34, csum_offset=6)
    for f in FRAMES[:50]:
        slot = dev.tx_alloc()
        dev.tx_buffer(slot)[: len(f)] = f
        dev.tx_set_vnet(slot, hdr)
        dev.tx_submit(slot, len(f))
    dev.tx_burst()
    for before, after in zip(FRAMES[:50], ring.sent, strict=True):
        diff = diff_positions(before, after)
        assert len(diff) == 1 and 14 <= diff[0] < 34
    assert ring.sent_vnet[-50:] == [hdr] * 50  # TX headers are the kernel's to act on
    assert fault_counters(dev) == {"fault_tx_corrupted": 100}


# ---- the bound on held frames ----------------------------------------------------


def test_delay_line_is_bounded_and_counts_overflow():
    ring, dev, clock = rig(FaultSpec(delay_us=1 * MS, seed=1), max_held=4)
    assert receive(dev, FRAMES[:10]) == []
    send(dev, FRAMES[:3])  # the bound is shared by both directions
    assert fault_counters(dev) == {"fault_rx_delayed": 4, "fault_held": 4, "fault_overflow": 9}
    clock.now += 1 * MS
    assert receive(dev, []) == FRAMES[:4]
    assert ring.sent == []
    send(dev, FRAMES[:3])
    clock.now += 1 * MS
    dev.tx_burst()
    assert ring.sent == FRAMES[:3]
    assert fault_counters(dev) == {
        "fault_rx_delayed": 4,
        "fault_tx_delayed": 3,
        "fault_overflow": 9,
    }


def test_reorder_hold_is_bounded_and_counts_overflow():
    _ring, dev, clock = rig(FaultSpec(reorder=1.0, seed=1, direction="rx"), max_held=2)
    assert receive(dev, FRAMES[:5]) == []
    assert fault_counters(dev) == {"fault_rx_reordered": 2, "fault_held": 2, "fault_overflow": 3}
    clock.now += 1 * MS
    assert receive(dev, []) == FRAMES[:2]
    assert dev.fault_stats()["fault_held"] == 0


def test_max_held_must_be_positive():
    with pytest.raises(ValueError, match="max_held"):
        FaultDevice(MemoryRing(), FaultSpec(), max_held=0)


# ---- seeds -------------------------------------------------------------------------


def test_no_seed_gets_a_random_one_that_replays_the_run():
    _ring, dev, _ = rig(FaultSpec(loss=0.3, dup=0.2, corrupt=0.1))
    seed = dev.spec.seed
    assert seed is not None
    assert dev.stats()["fault_seed"] == seed
    out = receive(dev, FRAMES)
    replay = FaultDevice(MemoryRing(), FaultSpec.parse(str(dev.spec)), FakeClock())
    assert replay.spec == dev.spec
    assert receive(replay, FRAMES) == out
    assert replay.fault_stats() == dev.fault_stats()


# ---- FaultSpec.parse ---------------------------------------------------------------


def test_parse_accepts_the_issue_example():
    spec = FaultSpec.parse("loss=0.05,dup=0.01,reorder=0.05,delay=20ms,corrupt=0.001")
    assert spec == FaultSpec(
        loss=0.05, dup=0.01, reorder=0.05, corrupt=0.001, delay_us=20_000, seed=None
    )
    assert spec.direction == "both"
    spec = FaultSpec.parse(" loss=5% , seed=7, dir=RX, delay=1.5s, hold=250us ")
    assert spec == FaultSpec(
        loss=0.05, seed=7, direction="rx", delay_us=1_500_000, reorder_hold_us=250
    )
    assert FaultSpec.parse("delay=20").delay_us == 20_000
    assert FaultSpec.parse("delay=500us,direction=tx") == FaultSpec(delay_us=500, direction="tx")
    assert FaultSpec.parse("") == FaultSpec()
    assert not FaultSpec.parse("").active


def test_str_round_trips_through_parse():
    spec = FaultSpec(
        loss=0.05, dup=0.01, reorder=0.1, corrupt=0.001, delay_us=1500, seed=42, direction="rx"
    )
    assert str(spec) == "loss=0.05,dup=0.01,reorder=0.1,corrupt=0.001,delay=1500us,seed=42,dir=rx"
    assert FaultSpec.parse(str(spec)) == spec
    spec = FaultSpec(delay_us=20_000, reorder_hold_us=3000)
    assert str(spec) == "delay=20ms,hold=3ms,dir=both"
    assert FaultSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("los=0.1", "unknown key 'los'"),
        ("loss=1.5", "loss='1.5' is out of range"),
        ("dup=-0.1", "dup='-0.1' is out of range"),
        ("corrupt=nan", "corrupt='nan' is out of range"),
        ("loss=abc", "loss='abc' is not a probability"),
        ("delay=-5ms", "delay='-5ms' is negative"),
        ("delay=5min", "delay='5min' is not a duration"),
        ("loss", "malformed item 'loss'"),
        ("loss=", "malformed item 'loss='"),
        ("loss=0.1,,dup=0.1", "malformed item ''"),
        ("=0.1", "malformed item '=0.1'"),
        ("seed=x", "seed='x' is not an integer"),
        ("dir=up", "dir='up' must be one of rx, tx, both"),
        ("loss=0.1,loss=0.2", "loss is given twice"),
    ],
)
def test_parse_rejects_bad_input_with_a_message(text: str, message: str):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        FaultSpec.parse(text)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("fault spec: ")


def test_direct_construction_is_validated():
    with pytest.raises(ValueError, match=r"reorder=2 is out of range"):
        FaultSpec(reorder=2)
    with pytest.raises(ValueError, match=r"delay_us=-1 must be a non-negative integer"):
        FaultSpec(delay_us=-1)
    with pytest.raises(ValueError, match=r"dir='sideways'"):
        FaultSpec(direction="sideways")


# ---- a Stack over a FaultDevice ----------------------------------------------------


def echo_request(i: int) -> bytes:
    return bytes(
        Ether(dst=US_MAC, src=PEER_MAC)
        / IP(src=PEER, dst=US, id=1000 + i)
        / ICMP(type=8, id=0x1234, seq=i)
        / Raw(b"ping %03d" % i + bytes(40))
    )


def arp_request() -> bytes:
    return bytes(
        Ether(dst=BCAST_MAC, src=PEER_MAC)
        / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER, pdst=US)
        / Padding(bytes(18))
    )


def run_stack(ring: MemoryRing, dev: MemoryRing | FaultDevice) -> tuple[Stack, list[bytes], int]:
    """ARP, then 50 echo requests and 50 datagrams for a bound socket; what came out."""
    stack = Stack(dev, Interface.from_config(f"{US}/24", mac=US_MAC))
    sock = stack.udp_socket()
    sock.bind(("", 9000))
    frames = [arp_request()] + [echo_request(i) for i in range(50)] + FRAMES[:50]
    for start in range(0, len(frames), 16):
        for f in frames[start : start + 16]:
            ring.inject(f)
        n = dev.rx_burst(16)
        stack.process(n, T0)
        stack.flush()
    delivered = 0
    while sock.readable:
        sock.recvfrom(2048)
        delivered += 1
    return stack, list(ring.sent), delivered


def stack_counters(stack: Stack) -> dict[str, int]:
    return {k: v for k, v in stack.stats().items() if not k.startswith("dev_") and v}


def test_stack_over_fault_device_without_faults_behaves_exactly_as_without_it():
    plain = MemoryRing()
    stack_a, sent_a, delivered_a = run_stack(plain, plain)
    ring = MemoryRing()
    stack_b, sent_b, delivered_b = run_stack(ring, FaultDevice(ring, FaultSpec(), FakeClock()))
    assert sent_b == sent_a
    assert len(sent_a) == 51  # the ARP reply and 50 echo replies
    assert delivered_a == delivered_b == 50
    assert stack_counters(stack_b) == stack_counters(stack_a)


def test_stack_drops_every_rx_corrupted_frame_by_checksum():
    ring = MemoryRing()
    dev = FaultDevice(ring, FaultSpec(corrupt=1.0, seed=21, direction="rx"), FakeClock())
    stack, sent, delivered = run_stack(ring, dev)
    assert delivered == 0
    assert len(sent) == 1  # the ARP reply; ARP is never corrupted, no echo is answered
    assert dev.fault_stats()["fault_rx_corrupted"] == 100
    c = stack_counters(stack)
    drops = {k: v for k, v in c.items() if k.startswith("drop_")}
    # One flip hit a UDP length field, which is checked before the checksum.
    assert drops == {
        "drop_ipv4_bad_checksum": 17,
        "drop_icmp_bad_checksum": 38,
        "drop_udp_bad_checksum": 44,
        "drop_udp_bad_length": 1,
    }
    assert "icmp_in_echos" not in c and "udp_in_datagrams" not in c


def test_tx_corrupted_replies_fail_their_checksums():
    ring = MemoryRing()
    dev = FaultDevice(ring, FaultSpec(corrupt=1.0, seed=23, direction="tx"), FakeClock())
    _, sent, _ = run_stack(ring, dev)
    clean = MemoryRing()
    _, expected, _ = run_stack(clean, clean)
    assert len(sent) == len(expected) == 51
    assert sent[0] == expected[0]  # the ARP reply
    reasons: Counter[str] = Counter()
    for got, want in zip(sent[1:], expected[1:], strict=True):
        assert len(diff_positions(got, want)) == 1
        # Feed our reply to a second stack as if it came back: it must be dropped.
        back = MemoryRing()
        peer = Stack(back, Interface.from_config(f"{PEER}/24", mac=PEER_MAC))
        back.inject(got)
        peer.process(back.rx_burst(), T0)
        c = peer.stats()
        assert c.get("icmp_in_msgs", 0) == 0
        drops = {k: v for k, v in c.items() if k.startswith("drop_") and v}
        assert sum(drops.values()) == 1
        reasons.update(drops)
    # Flips in the version/IHL byte fail before the checksum is looked at.
    assert reasons == {
        "drop_ipv4_bad_checksum": 7,
        "drop_ipv4_bad_ihl": 1,
        "drop_ipv4_bad_version": 1,
        "drop_icmp_bad_checksum": 41,
    }


# ---- runtime -------------------------------------------------------------------------


def test_close_context_closes_the_inner_device_and_both_pcaps(tmp_path):
    ring = MemoryRing()
    dev = FaultDevice(ring, FaultSpec(loss=0.5, seed=1), FakeClock())
    ring.pcap = PcapWriter(str(tmp_path / "wire.pcap"))
    dev.pcap = PcapWriter(str(tmp_path / "stack.pcap"))
    ctx = Context(dev, Stack(dev, Interface.from_config(f"{US}/24", mac=US_MAC)))
    ring.inject(FRAMES[0])
    close_context(ctx)
    assert not ring._inbox
    assert ring.pcap._file.closed and dev.pcap._file.closed
