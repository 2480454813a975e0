"""Benchmark of the C poll-mode ring (ext/ring.c) against plain read/write loops.

Frames per second through one TAP queue, both ways, at 64-byte and 1500-byte
frames (whole Ethernet frames without FCS), for three ways of moving them:

    burst   ring.rx_burst(b) / tx_alloc + tx_submit + ring.tx_burst() from
            Python, for b in 1, 8, 32, 128;
    os      a plain Python os.read / os.write loop on the ring's own fd;
    C loop  us_ref_read_loop / us_ref_write_loop, the same loop in C with no
            Python in it.

Receive: the kernel transmits out of the TAP and the ring reads.  The frames
come from child processes of this script that enter the namespace, pin
themselves to the source CPUs and run us_ref_send_loop (sendmmsg on an
AF_PACKET socket bound to the TAP, qdisc bypassed).  Two methods:

    stream   the source sends during the whole measurement, as in real use.
             On a two-core machine the source costs about as much per frame
             as the reader, so it may be the limit; the table shows the
             source's own rate in the same window, the frames the TAP
             dropped because its queue was full (the reader fell behind) and
             the share of polls that found the queue empty (it did not).
    backlog  the source first fills a deep TAP queue and stops; the reader
             then drains it for a slice shorter than the backlog, so it
             never waits for a frame and nothing competes with it.  Slices
             repeat until --backlog-seconds of draining are timed.  This is
             the reader's own capacity, which the RX targets are about.

Transmit: the ring writes into the TAP and the kernel receives and drops the
frames (their destination MAC is nobody's), all on the reader CPU.

Everything runs in a private topology (ustack.topology, 198.18.0.0/15) that
is removed on exit, also on Ctrl-C.  Both ends are pinned (an idle vCPU
halts and waking it costs tens of microseconds) and the CPUs are printed.
Each figure is the median of --repeat runs, each after a warm-up in the same
mode.  On a shared two-core machine other work easily takes a CPU from a
spinning loop, so before each run the benchmark waits for the CPUs to be
idle, and a run in which other work took more than 3% of the reader's (or
a source's) CPU time is done again; the share is printed for every row.

The RX targets (burst 32 at >= 90% of the C loop and above os.read) are
checked for both methods, and the Python memory blocks a burst of 32 leaves
allocated per frame are counted (sys.getallocatedblocks), together with the
int objects tx_burst creates per frame, which that count cannot see.

    sudo .venv/bin/python tools/bench_ring.py [--seconds 2] [--repeat 3]
        [--reader-cpu 1] [--source-cpus 0] [--json FILE] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any, TextIO

from benchlib import int_list, machine_info, progress
from pyroute2 import IPRoute
from ustack._ring import ffi, lib

from ustack import netns
from ustack.dev import Ring
from ustack.dev.base import COUNTER_NAMES
from ustack.topology import Topology
from ustack.wire.checksum import checksum, pseudo_sum

FRAME_SIZES = (64, 1500)
BURSTS = (1, 8, 32, 128)
RX_TARGET_BURST = 32
RX_TARGET_FRACTION = 0.90

# Made-up, locally administered MACs: no interface owns the destination, so
# the kernel drops what the ring writes as soon as it has parsed Ethernet.
SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("0200000000fe")
SRC_IP = "198.18.0.1"
DST_IP = "198.18.0.2"
UDP_SPORT = 40000
UDP_DPORT = 9  # discard (RFC 863)

SOL_PACKET = 263  # linux/socket.h; the socket module exports neither
PACKET_QDISC_BYPASS = 20  # linux/if_packet.h
READ_SIZE = 2048
CLOCK_EVERY = 32  # loop iterations between two reads of the clock
STREAM_TAIL_S = 0.05  # the source outlasts the reader's window by this much
BACKLOG_FILL_RATE = 0.8e6  # frames/s a source surely reaches, to size the fill
BACKLOG_SLICE_RATE = 4e6  # frames/s no reader reaches, to size a slice
BACKLOG_WARMUP_S = 0.005
# A run in which other tasks took more than this share of the reader's (or a
# source's) CPU is done again, at most MAX_RETRIES times: other work on a
# two-core machine would otherwise show up as a slow ring.
STOLEN_LIMIT = 0.03
# In stream runs, a C loop that lets the TAP drop less than this share of the
# frames kept up with the source: the source was the limit.
SOURCE_BOUND_LOSS = 0.01
MAX_RETRIES = 3
RETRY_PAUSE_S = 1.0  # doubled on each retry, to let the other work pass
# Before each run the CPUs must be this idle for QUIET_SAMPLE_S (other work
# waited out for at most --quiet-wait seconds).
QUIET_BUSY = 0.10
QUIET_SAMPLE_S = 0.1

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_C_BURSTS = COUNTER_NAMES.index("rx_bursts")
_C_EMPTY = COUNTER_NAMES.index("rx_empty_polls")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class CpuShare:
    """How much of a pinned, spinning thread's wall time other work took.

    The thread never sleeps while measured, so any wall time it was not
    charged with (CLOCK_THREAD_CPUTIME_ID) went to another task, or to the
    hypervisor when steal time is accounted.
    """

    def __init__(self) -> None:
        self.wall0 = time.monotonic_ns()
        self.cpu0 = time.thread_time_ns()

    def stolen(self) -> float:
        wall = time.monotonic_ns() - self.wall0
        cpu = time.thread_time_ns() - self.cpu0
        return max(0.0, 1.0 - cpu / wall) if wall > 0 else 0.0


def _cpu_times(cpus: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies of each CPU from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(x) for x in fields[:8]]
                idle = ticks[3] + ticks[4]  # idle + iowait
                out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def wait_for_quiet(cpus: Sequence[int], limit_s: float) -> float:
    """Wait (at most limit_s) until other work leaves the CPUs nearly idle.

    Called while this benchmark itself is idle, so what keeps a CPU busy is
    someone else's.  Returns the seconds waited.
    """
    t0 = time.monotonic()
    noted = False
    while True:
        a = _cpu_times(cpus)
        time.sleep(QUIET_SAMPLE_S)
        b = _cpu_times(cpus)
        busy = max((b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in a)
        waited = time.monotonic() - t0
        if busy <= QUIET_BUSY or waited >= limit_s:
            if noted:
                progress(f"  (waited {waited:.0f} s for other work to finish)")
            return waited
        if not noted:
            progress(f"  (CPUs {busy:.0%} busy with other work: waiting up to {limit_s:g} s)")
            noted = True


# -- frames ------------------------------------------------------------------


def build_frame(size: int) -> bytes:
    """A valid Ethernet + IPv4 + UDP frame of exactly `size` bytes."""
    payload_len = size - _ETH.size - _IPV4.size - _UDP.size
    if payload_len < 0:
        raise ValueError(f"a UDP frame needs at least 42 bytes, not {size}")
    src = socket.inet_aton(SRC_IP)
    dst = socket.inet_aton(DST_IP)
    ip = bytearray(
        _IPV4.pack(0x45, 0, size - _ETH.size, 0, 0x4000, 64, socket.IPPROTO_UDP, 0, src, dst)
    )
    struct.pack_into("!H", ip, 10, checksum(ip, 0, len(ip)))
    udp_len = _UDP.size + payload_len
    udp = bytearray(_UDP.pack(UDP_SPORT, UDP_DPORT, udp_len, 0))
    udp += bytes(i & 0xFF for i in range(payload_len))
    initial = pseudo_sum(
        int.from_bytes(src, "big"), int.from_bytes(dst, "big"), socket.IPPROTO_UDP, udp_len
    )
    struct.pack_into("!H", udp, 6, checksum(udp, 0, udp_len, initial) or 0xFFFF)
    frame = _ETH.pack(DST_MAC, SRC_MAC, 0x0800) + bytes(ip) + bytes(udp)
    assert len(frame) == size
    return frame


# -- the traffic source (child processes) ------------------------------------


def source_main(namespace: str, ifname: str, cpu: int) -> int:
    """Child: send frames out of the TAP on command, one line per command.

    Protocol on stdin/stdout: the child prints "ready"; a line
    "<frame size> <lead ns> <timed ns> <tail ns>" makes it print "start" and
    run the C sendmmsg loop three times in a row, then print
    "<frames> <elapsed ns> <stolen share>" of the middle (timed) run (see
    CpuShare).  EOF ends it.
    """
    os.sched_setaffinity(0, {cpu})
    netns.enter(namespace)
    # Protocol 0: the socket only sends, so no copy of any frame comes back.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    sock.bind((ifname, 0))
    fd = sock.fileno()
    send = lib.us_ref_send_loop
    print("ready", flush=True)
    for line in sys.stdin:
        size, lead_ns, timed_ns, tail_ns = (int(x) for x in line.split())
        frame = build_frame(size)
        buf = ffi.from_buffer(frame)
        print("start", flush=True)
        if lead_ns:
            send(fd, buf, size, lead_ns)
        share = CpuShare()
        t0 = time.monotonic_ns()
        sent = int(send(fd, buf, size, timed_ns))
        elapsed = time.monotonic_ns() - t0
        stolen = share.stolen()
        if tail_ns:
            send(fd, buf, size, tail_ns)
        print(f"{sent} {elapsed} {stolen:.6f}", flush=True)
    sock.close()
    return 0


class Sources:
    """The source child processes, one per source CPU, driven over pipes."""

    def __init__(self, namespace: str, ifname: str, cpus: Sequence[int]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        argv = [sys.executable, os.path.abspath(__file__), "--source-role", namespace, ifname]
        try:
            for cpu in cpus:
                self.procs.append(
                    subprocess.Popen(
                        [*argv, str(cpu)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        bufsize=1,
                    )
                )
            for proc in self.procs:
                self._expect(proc, "ready")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"traffic source {proc.pid} exited with {proc.wait()}")
        return line.strip()

    def _expect(self, proc: subprocess.Popen[str], word: str) -> None:
        line = self._line(proc)
        if line != word:
            raise RuntimeError(f"traffic source {proc.pid} said {line!r}, expected {word!r}")

    def start(self, size: int, lead_ns: int, timed_ns: int, tail_ns: int) -> None:
        """Start every source; returns once all of them are sending."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{size} {lead_ns} {timed_ns} {tail_ns}\n")
            proc.stdin.flush()
        for proc in self.procs:
            self._expect(proc, "start")

    def finish(self) -> tuple[float, float]:
        """Wait for the current run: the sources' combined timed rate in
        frames/s, and the largest share of a source's CPU other work took."""
        rate = 0.0
        stolen = 0.0
        for proc in self.procs:
            sent, elapsed, share = self._line(proc).split()
            rate += int(sent) * 1e9 / int(elapsed)
            stolen = max(stolen, float(share))
        return rate, stolen

    def close(self) -> None:
        """End the children: EOF first, then SIGKILL by PID if one hangs."""
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs = []


class TapStats:
    """Kernel counters of the TAP, read over one netlink socket in its namespace."""

    def __init__(self, namespace: str, ifname: str) -> None:
        with netns.inside(namespace):
            self._ipr = IPRoute()
        self._index: int = self._ipr.link_lookup(ifname=ifname)[0]

    def tx(self) -> tuple[int, int]:
        """(frames handed to the ring, frames dropped on a full queue)."""
        link = self._ipr.get_links(self._index)[0]
        s = link.get_attr("IFLA_STATS64")
        return int(s["tx_packets"]), int(s["tx_dropped"])

    def set_txqlen(self, frames: int) -> None:
        """The depth of the TAP's queue (the tun driver resizes its ring)."""
        self._ipr.link("set", index=self._index, txqlen=frames)

    def txqlen(self) -> int:
        return int(self._ipr.get_links(self._index)[0].get_attr("IFLA_TXQLEN"))

    def close(self) -> None:
        self._ipr.close()


# -- measured loops ----------------------------------------------------------
#
# A loop runs for a duration and returns a Sample; the clock is read every
# CLOCK_EVERY iterations to keep it out of the cost.


@dataclass
class Sample:
    frames: int
    elapsed_ns: int
    empty: int = -1  # polls that found nothing (-1: not known)
    polls: int = -1

    @property
    def rate(self) -> float:
        return self.frames * 1e9 / self.elapsed_ns


Loop = Callable[[int], Sample]


def rx_burst_loop(ring: Ring, burst: int) -> Loop:
    def run(duration_ns: int) -> Sample:
        rx = ring.rx_burst
        inner = range(CLOCK_EVERY)
        clock = time.monotonic_ns
        c = ring.counters
        bursts0 = c[_C_BURSTS]
        empty0 = c[_C_EMPTY]
        frames = 0
        t0 = clock()
        end = t0 + duration_ns
        while True:
            for _ in inner:
                frames += rx(burst)
            t = clock()
            if t >= end:
                break
        return Sample(frames, t - t0, c[_C_EMPTY] - empty0, c[_C_BURSTS] - bursts0)

    return run


def rx_os_read_loop(ring: Ring) -> Loop:
    # The ring's fd stays O_NONBLOCK, as for the other two RX loops: an
    # empty queue raises BlockingIOError, which is counted, never waited on.
    fd = ring.fileno()

    def run(duration_ns: int) -> Sample:
        read = os.read
        inner = range(CLOCK_EVERY)
        clock = time.monotonic_ns
        frames = 0
        empty = 0
        polls = 0
        t0 = clock()
        end = t0 + duration_ns
        while True:
            for _ in inner:
                try:
                    read(fd, READ_SIZE)
                    frames += 1
                except BlockingIOError:
                    empty += 1
            polls += CLOCK_EVERY
            t = clock()
            if t >= end:
                break
        return Sample(frames, t - t0, empty, polls)

    return run


def rx_c_loop(ring: Ring) -> Loop:
    def run(duration_ns: int) -> Sample:
        t0 = time.monotonic_ns()
        frames = int(lib.us_ref_read_loop(ring._ptr, duration_ns))
        return Sample(frames, time.monotonic_ns() - t0)

    return run


def place_tx_frames(ring: Ring, frame: bytes, count: int) -> list[int]:
    """Write `frame` into the `count` slots tx_alloc hands out next.

    The free list is a stack and tx_burst pushes back the slots it sent, so
    an alloc/submit/burst cycle of `count` frames keeps reusing exactly
    these slots and never has to rewrite them.  Returns the slots.
    """
    slots = [ring.tx_alloc() for _ in range(count)]
    for s in slots:
        off = ring.tx_offset(s)
        ring.pool[off : off + len(frame)] = frame
    for s in reversed(slots):
        ring.tx_free(s)
    return slots


def tx_burst_loop(ring: Ring, frame: bytes, burst: int) -> Loop:
    place_tx_frames(ring, frame, burst)
    length = len(frame)

    def run(duration_ns: int) -> Sample:
        alloc = ring.tx_alloc
        submit = ring.tx_submit
        send = ring.tx_burst
        inner = range(burst)
        outer = range(max(1, CLOCK_EVERY // burst))
        clock = time.monotonic_ns
        frames = 0
        t0 = clock()
        end = t0 + duration_ns
        while True:
            for _ in outer:
                for _ in inner:
                    submit(alloc(), length)
                frames += send()
            t = clock()
            if t >= end:
                break
        return Sample(frames, t - t0)

    return run


def tx_os_write_loop(ring: Ring, frame: bytes) -> Loop:
    fd = ring.fileno()

    def run(duration_ns: int) -> Sample:
        write = os.write
        inner = range(CLOCK_EVERY)
        clock = time.monotonic_ns
        frames = 0
        full = 0
        polls = 0
        t0 = clock()
        end = t0 + duration_ns
        while True:
            for _ in inner:
                try:
                    write(fd, frame)
                    frames += 1
                except BlockingIOError:
                    full += 1
            polls += CLOCK_EVERY
            t = clock()
            if t >= end:
                break
        return Sample(frames, t - t0, full, polls)

    return run


def tx_c_loop(ring: Ring, frame: bytes) -> Loop:
    # us_ref_write_loop writes from the first TX slot, number rx_slots.
    off = ring.tx_offset(ring.rx_slots)
    ring.pool[off : off + len(frame)] = frame

    def run(duration_ns: int) -> Sample:
        t0 = time.monotonic_ns()
        frames = int(lib.us_ref_write_loop(ring._ptr, len(frame), duration_ns))
        return Sample(frames, time.monotonic_ns() - t0)

    return run


def drain(ring: Ring) -> int:
    """Read until the queue stays empty; returns the frames thrown away."""
    got = 0
    quiet = 0
    while quiet < 3:
        n = ring.rx_burst(128)
        got += n
        if n:
            quiet = 0
        else:
            quiet += 1
            time.sleep(0.001)
    return got


# -- rows of the table -------------------------------------------------------


@dataclass
class Row:
    side: str  # "rx stream", "rx backlog" or "tx"
    mode: str  # "burst", "os.read", "os.write" or "C loop"
    size: int
    burst: int | None
    rates: list[float] = field(default_factory=list)
    source_rates: list[float] = field(default_factory=list)  # rx stream only
    drop_rates: list[float] = field(default_factory=list)  # rx stream only
    empty_fractions: list[float] = field(default_factory=list)
    dry_slices: int = 0  # rx backlog: slices that ran the queue dry (discarded)
    retries: int = 0  # runs (backlog: slices) redone because other work took CPU
    stolen: list[float] = field(default_factory=list)  # CPU share lost, kept runs
    queued: list[int] = field(default_factory=list)  # rx backlog: frames per fill

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def label(self) -> str:
        return f"{self.mode} {self.burst}" if self.burst is not None else self.mode

    def summary(self) -> dict[str, Any]:
        def med(xs: Sequence[float]) -> float | None:
            return statistics.median(xs) if xs else None

        return {
            **asdict(self),
            "rate": self.rate,
            "source_rate": med(self.source_rates),
            "drop_rate": med(self.drop_rates),
            "empty_fraction": med(self.empty_fractions),
        }


def make_rows(side: str, sizes: Sequence[int], bursts: Sequence[int]) -> list[Row]:
    plain = "os.write" if side == "tx" else "os.read"
    rows = []
    for size in sizes:
        rows += [Row(side, "burst", size, b) for b in bursts]
        rows += [Row(side, plain, size, None), Row(side, "C loop", size, None)]
    return rows


def rx_loop(ring: Ring, row: Row) -> Loop:
    if row.mode == "burst":
        assert row.burst is not None
        return rx_burst_loop(ring, row.burst)
    if row.mode == "os.read":
        return rx_os_read_loop(ring)
    return rx_c_loop(ring)


def tx_loop(ring: Ring, row: Row, frame: bytes) -> Loop:
    if row.mode == "burst":
        assert row.burst is not None
        return tx_burst_loop(ring, frame, row.burst)
    if row.mode == "os.write":
        return tx_os_write_loop(ring, frame)
    return tx_c_loop(ring, frame)


@dataclass
class Config:
    seconds: float
    repeat: int
    warmup: float
    backlog_seconds: float
    backlog_depth: int
    reader_cpu: int
    source_cpus: list[int]
    sizes: list[int]
    bursts: list[int]
    quiet_wait: float

    @property
    def cpus(self) -> list[int]:
        return [self.reader_cpu, *self.source_cpus]


# -- running -----------------------------------------------------------------


def _quiet(stolen: float) -> bool:
    return stolen <= STOLEN_LIMIT


def _retry_pause(attempt: int) -> None:
    # Random, so that another benchmark gated like this one, which saw the
    # CPUs go quiet at the same moment, does not restart in step with it.
    time.sleep(RETRY_PAUSE_S * 2**attempt * random.uniform(0.5, 1.5))


def run_rx_stream(
    ring: Ring, sources: Sources, tap: TapStats, cfg: Config, rows: list[Row], rep: int
) -> None:
    for row in rows:
        loop = rx_loop(ring, row)
        for attempt in range(1 + MAX_RETRIES):
            drain(ring)
            wait_for_quiet(cfg.cpus, cfg.quiet_wait)
            # The source's timed window starts with the reader's warm-up and
            # ends STREAM_TAIL_S after the reader's, so the queue never
            # starves because the source stopped first.
            sources.start(row.size, 0, _ns(cfg.warmup + cfg.seconds), _ns(STREAM_TAIL_S))
            loop(_ns(cfg.warmup))
            _, drop0 = tap.tx()
            share = CpuShare()
            s = loop(_ns(cfg.seconds))
            stolen = share.stolen()
            _, drop1 = tap.tx()
            source_rate, source_stolen = sources.finish()
            stolen = max(stolen, source_stolen)
            if _quiet(stolen) or attempt == MAX_RETRIES:
                break
            row.retries += 1
            progress(f"  (rx stream {row.label} {row.size} B: {stolen:.1%} stolen, again)")
            _retry_pause(attempt)
        row.rates.append(s.rate)
        row.source_rates.append(source_rate)
        row.drop_rates.append((drop1 - drop0) * 1e9 / s.elapsed_ns)
        row.stolen.append(stolen)
        if s.polls > 0:
            row.empty_fractions.append(s.empty / s.polls)
        progress(
            f"  [{rep + 1}/{cfg.repeat}] rx stream  {row.label:<10} {row.size:>5} B"
            f" {s.rate / 1e6:6.3f} M/s  (source {source_rate / 1e6:.3f},"
            f" dropped {row.drop_rates[-1] / 1e6:.3f}, stolen {stolen:.1%})"
        )
    drain(ring)


@dataclass
class _Drain:
    """One backlog row's progress through a run of slices."""

    row: Row
    loop: Loop
    slice_ns: int
    frames: int = 0
    elapsed_ns: int = 0
    stolen: float = 0.0
    slices: int = 0


def run_rx_backlog(ring: Ring, sources: Sources, cfg: Config, rows: list[Row], rep: int) -> None:
    """Each row drains slices until it has timed --backlog-seconds.

    The rows of one frame size take their slices in turn, so whatever
    drifts during a run (other work, the state of the kernel's memory)
    falls on all of them alike.
    """
    fill_ns = _ns(cfg.backlog_depth / BACKLOG_FILL_RATE)
    want_ns = _ns(cfg.backlog_seconds)
    for size in cfg.sizes:
        todo = [
            _Drain(r, rx_loop(ring, r), _ns(cfg.backlog_depth / BACKLOG_SLICE_RATE))
            for r in rows
            if r.size == size
        ]
        while any(d.elapsed_ns < want_ns for d in todo):
            for d in todo:
                if d.elapsed_ns < want_ns:
                    _backlog_slice(ring, sources, cfg, d, fill_ns)
        for d in todo:
            d.row.rates.append(d.frames * 1e9 / d.elapsed_ns)
            d.row.stolen.append(d.stolen)
            progress(
                f"  [{rep + 1}/{cfg.repeat}] rx backlog {d.row.label:<10} {size:>5} B"
                f" {d.row.rates[-1] / 1e6:6.3f} M/s  (queue ~{min(d.row.queued)} frames,"
                f" slice {d.slice_ns / 1e6:.0f} ms, stolen {d.stolen:.1%})"
            )


def _backlog_slice(ring: Ring, sources: Sources, cfg: Config, d: _Drain, fill_ns: int) -> None:
    row = d.row
    drain(ring)
    wait_for_quiet(cfg.cpus, cfg.quiet_wait)
    sources.start(row.size, 0, fill_ns, 0)
    sources.finish()
    warm = d.loop(_ns(BACKLOG_WARMUP_S))
    share = CpuShare()
    s = d.loop(d.slice_ns)
    stolen = share.stolen()
    left = drain(ring)
    row.queued.append(warm.frames + s.frames + left)
    d.slices += 1
    if left == 0 or s.empty > 0:
        # The reader caught up with the backlog inside the slice: the figure
        # would include waiting, so drop it and shorten the slices.
        row.dry_slices += 1
        d.slice_ns //= 2
        if d.slice_ns < _ns(0.001):
            raise RuntimeError(
                f"rx backlog {row.label} {row.size} B: the queue held only"
                f" {row.queued[-1]} frames after a fill; is the source running?"
            )
        return
    if not _quiet(stolen) and d.slices <= 4 * MAX_RETRIES + 20:
        row.retries += 1
        return
    d.frames += s.frames
    d.elapsed_ns += s.elapsed_ns
    d.stolen = max(d.stolen, stolen)


def run_tx(ring: Ring, cfg: Config, rows: list[Row], rep: int) -> None:
    frames = {size: build_frame(size) for size in cfg.sizes}
    for row in rows:
        loop = tx_loop(ring, row, frames[row.size])
        for attempt in range(1 + MAX_RETRIES):
            wait_for_quiet(cfg.cpus, cfg.quiet_wait)
            loop(_ns(cfg.warmup))
            share = CpuShare()
            s = loop(_ns(cfg.seconds))
            stolen = share.stolen()
            if _quiet(stolen) or attempt == MAX_RETRIES:
                break
            row.retries += 1
            progress(f"  (tx {row.label} {row.size} B: {stolen:.1%} stolen, again)")
            _retry_pause(attempt)
        row.rates.append(s.rate)
        row.stolen.append(stolen)
        progress(
            f"  [{rep + 1}/{cfg.repeat}] tx         {row.label:<10} {row.size:>5} B"
            f" {s.rate / 1e6:6.3f} M/s  (stolen {stolen:.1%})"
        )


# -- allocation check --------------------------------------------------------


@dataclass
class AllocCheck:
    side: str
    size: int
    burst: int
    frames: int
    blocks: int
    blocks_per_frame: float
    new_ints_per_frame: float | None = None  # tx only: objects tx_burst makes


def rx_alloc_check(ring: Ring, burst: int, frames_wanted: int, limit_ns: int) -> tuple[int, int]:
    """Blocks still allocated after rx_burst calls that got frames_wanted
    frames (or fewer, if limit_ns passes first)."""
    rx = ring.rx_burst
    for _ in range(1000):
        rx(burst)
    clock = time.monotonic_ns
    inner = range(CLOCK_EVERY)
    gc.collect()
    gc.disable()
    try:
        frames = 0
        end = clock() + limit_ns
        before = sys.getallocatedblocks()
        while frames < frames_wanted and clock() < end:
            for _ in inner:
                frames += rx(burst)
        blocks = sys.getallocatedblocks() - before
    finally:
        gc.enable()
    return frames, blocks


def tx_alloc_check(ring: Ring, frame: bytes, burst: int, bursts: int) -> tuple[int, int, float]:
    """Net blocks after `bursts` alloc/submit/burst cycles, and new ints per frame.

    sys.getallocatedblocks sees only what a burst leaves behind, not an
    object made and freed inside it.  So the slot numbers that tx_burst
    puts back on the free list are also checked: one that is not the very
    object submitted was created during the burst.
    """
    slots = place_tx_frames(ring, frame, burst)
    length = len(frame)
    alloc = ring.tx_alloc
    submit = ring.tx_submit
    send = ring.tx_burst
    inner = range(burst)
    for _ in range(100):
        for _ in inner:
            submit(alloc(), length)
        send()
    gc.collect()
    gc.disable()
    try:
        frames = 0
        before = sys.getallocatedblocks()
        for _ in range(bursts):
            for _ in inner:
                submit(alloc(), length)
            frames += send()
        blocks = sys.getallocatedblocks() - before
    finally:
        gc.enable()
    submitted = [alloc() for _ in inner]
    for s in submitted:
        submit(s, length)
    send()
    returned = [alloc() for _ in inner]
    fresh = sum(1 for r in returned if not any(r is s for s in submitted))
    for s in reversed(returned):
        ring.tx_free(s)
    assert sorted(returned) == sorted(slots)
    return frames, blocks, fresh / burst


def run_alloc_checks(ring: Ring, sources: Sources, cfg: Config) -> list[AllocCheck]:
    out = []
    burst = RX_TARGET_BURST
    wanted = 200_000
    for size in cfg.sizes:
        drain(ring)
        # The check stops when it has `wanted` frames, or just before the
        # source does.
        limit_ns = _ns(2 * wanted / BACKLOG_FILL_RATE)
        sources.start(size, 0, limit_ns + _ns(0.2), 0)
        frames, blocks = rx_alloc_check(ring, burst, wanted, limit_ns)
        sources.finish()
        out.append(AllocCheck("rx", size, burst, frames, blocks, blocks / frames))
    drain(ring)
    for size in cfg.sizes:
        frames, blocks, fresh = tx_alloc_check(ring, build_frame(size), burst, wanted // burst)
        out.append(AllocCheck("tx", size, burst, frames, blocks, blocks / frames, fresh))
    return out


# -- reporting ---------------------------------------------------------------


def find(rows: Sequence[Row], side: str, size: int, mode: str, burst: int | None) -> Row | None:
    for r in rows:
        if (r.side, r.size, r.mode, r.burst) == (side, size, mode, burst):
            return r
    return None


@dataclass
class Target:
    side: str
    size: int
    burst_rate: float
    c_rate: float
    os_read_rate: float

    @property
    def fraction_of_c(self) -> float:
        return self.burst_rate / self.c_rate

    @property
    def ok_c(self) -> bool:
        return self.fraction_of_c >= RX_TARGET_FRACTION

    @property
    def ok_os_read(self) -> bool:
        return self.burst_rate > self.os_read_rate

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "fraction_of_c": self.fraction_of_c,
            "ok_c": self.ok_c,
            "ok_os_read": self.ok_os_read,
        }


def targets(rows: Sequence[Row], sizes: Sequence[int]) -> list[Target]:
    out = []
    for side in ("rx backlog", "rx stream"):
        for size in sizes:
            b = find(rows, side, size, "burst", RX_TARGET_BURST)
            c = find(rows, side, size, "C loop", None)
            o = find(rows, side, size, "os.read", None)
            if b and c and o and b.rates and c.rates and o.rates:
                out.append(Target(side, size, b.rate, c.rate, o.rate))
    return out


def _pct(xs: Sequence[float]) -> str:
    return f"{100 * statistics.median(xs):.1f}%" if xs else "-"


def _rate(xs: Sequence[float]) -> str:
    return f"{statistics.median(xs):,.0f}" if xs else "-"


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        "| side       | mode      | frame B |  frames/s | min..max M/s  | % of C "
        "| source frames/s | dropped frames/s | empty polls | stolen |",
        "|------------|-----------|--------:|----------:|---------------|-------:"
        "|----------------:|-----------------:|------------:|-------:|",
    ]
    for r in rows:
        if not r.rates:
            continue
        c = find(rows, r.side, r.size, "C loop", None)
        pct = f"{100 * r.rate / c.rate:.0f}%" if c and c.rates else "-"
        spread = f"{min(r.rates) / 1e6:.3f}..{max(r.rates) / 1e6:.3f}"
        lines.append(
            f"| {r.side:<10} | {r.label:<9} | {r.size:>7} | {r.rate:>9,.0f} | {spread:<13} "
            f"| {pct:>6} | {_rate(r.source_rates):>15} | {_rate(r.drop_rates):>16} "
            f"| {_pct(r.empty_fractions):>11} | {100 * max(r.stolen, default=0):>5.1f}% |"
        )
    return "\n".join(lines)


def report(
    out: TextIO,
    command: str,
    machine: dict[str, Any],
    cfg: Config,
    setup: dict[str, Any],
    rows: Sequence[Row],
    allocs: Sequence[AllocCheck],
) -> list[Target]:
    w = out.write
    w(f"command: {command}\n")
    w(
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']},"
        f" Python {machine['python']}\n"
    )
    w(
        f"CPUs: reader/writer (this process) on CPU {cfg.reader_cpu};"
        f" traffic source(s) on CPU {', '.join(map(str, cfg.source_cpus))}\n"
    )
    w(
        f"runs: median of {cfg.repeat}; stream and tx runs last {cfg.seconds:g} s after"
        f" {cfg.warmup:g} s of warm-up in the same mode; backlog runs time"
        f" {cfg.backlog_seconds:g} s of draining a queue of {cfg.backlog_depth} frames\n"
    )
    w(f"setup: {setup}\n\n")
    w(format_table(rows) + "\n")
    w(
        "% of C: against the C loop of the same side and frame size.  source: what the\n"
        "sources got into the TAP queue in the reader's window; dropped: what the TAP\n"
        "dropped because that queue was full; empty polls: reads or bursts that found\n"
        "it empty.  stolen: the largest share of the reader's (stream: or a source's)\n"
        "CPU time that other work took in a kept run (backlog: in a kept slice).\n"
    )
    dry = [r for r in rows if r.dry_slices]
    if dry:
        w(
            "backlog slices discarded because the reader emptied the queue: "
            + ", ".join(f"{r.label} {r.size} B: {r.dry_slices}" for r in dry)
            + "\n"
        )
    w("\nPython memory blocks left allocated per frame by bursts of 32 (must be ~0):\n")
    for a in allocs:
        extra = ""
        if a.new_ints_per_frame is not None:
            extra = f"; int objects tx_burst creates per frame: {a.new_ints_per_frame:.2f}"
        w(
            f"  {a.side} {a.size:>5} B: {a.blocks:+d} blocks over {a.frames} frames"
            f" = {a.blocks_per_frame:.6f} per frame{extra}\n"
        )
    got = targets(rows, cfg.sizes)
    w(f"\nRX targets: burst {RX_TARGET_BURST} >= 90% of the C loop, and above os.read\n")
    for t in got:
        w(
            f"  {t.side:<10} {t.size:>5} B: {t.fraction_of_c:6.1%} of C loop"
            f" {'PASS' if t.ok_c else 'FAIL'};"
            f" {t.burst_rate / t.os_read_rate:.2f}x os.read {'PASS' if t.ok_os_read else 'FAIL'}\n"
        )
    for size in cfg.sizes:
        c = find(rows, "rx stream", size, "C loop", None)
        if c is None or not c.rates:
            continue
        lost = statistics.median(c.drop_rates) / c.rate
        if lost < SOURCE_BOUND_LOSS:
            w(
                f"  rx stream {size:>5} B: the C loop dropped only {lost:.1%} of the frames:"
                " the source, not the reader, set that rate, so stream figures show who"
                " keeps up with it, not how fast each reader can go (see backlog)\n"
            )
    return got


# -- main --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Frames/s of the C poll-mode ring vs os.read/os.write and a C loop."
    )
    ap.add_argument("--seconds", type=float, default=2.0, help="timed length of a run (2)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; median kept (3)")
    ap.add_argument("--warmup", type=float, default=0.2, help="warm-up before a run, s (0.2)")
    ap.add_argument(
        "--backlog-seconds", type=float, default=0.5, help="timed draining per backlog run (0.5)"
    )
    ap.add_argument(
        "--backlog-depth", type=int, default=200_000, help="TAP queue depth for backlog (200000)"
    )
    ap.add_argument("--reader-cpu", type=int, default=1, help="CPU of this process (1)")
    ap.add_argument(
        "--source-cpus",
        type=int_list,
        default=[0],
        help="CPUs of the traffic sources, one process each, comma-separated (0)",
    )
    ap.add_argument("--sizes", type=int_list, default=list(FRAME_SIZES), help="frame sizes")
    ap.add_argument("--bursts", type=int_list, default=list(BURSTS), help="burst sizes")
    ap.add_argument(
        "--only",
        choices=("stream", "backlog", "tx"),
        action="append",
        help="run only these parts (repeatable); the allocation check always runs",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before a run, wait up to this long for other work to leave the CPUs (120)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: short runs, 1 repeat")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--source-role", nargs=3, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # pyroute2 forks helpers that inherit this handler; only the benchmark
    # process itself unwinds (and so removes its topology).
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.source_role:
        ns, ifname, cpu = args.source_role
        return source_main(ns, ifname, int(cpu))

    if args.quick:
        args.seconds, args.repeat, args.warmup = 0.3, 1, 0.05
        args.backlog_seconds, args.backlog_depth = 0.1, 50_000
    cfg = Config(
        args.seconds,
        args.repeat,
        args.warmup,
        args.backlog_seconds,
        args.backlog_depth,
        args.reader_cpu,
        args.source_cpus,
        args.sizes,
        sorted(set(args.bursts) | {RX_TARGET_BURST}),
        args.quiet_wait,
    )
    parts = set(args.only or ("stream", "backlog", "tx"))
    allowed = os.sched_getaffinity(0)
    for cpu in [cfg.reader_cpu, *cfg.source_cpus]:
        if cpu not in allowed:
            print(f"error: CPU {cpu} is not available (have {sorted(allowed)})", file=sys.stderr)
            return 2
    if cfg.reader_cpu in cfg.source_cpus:
        progress(f"warning: the reader shares CPU {cfg.reader_cpu} with a source")
    for size in cfg.sizes:
        build_frame(size)

    command = " ".join(["python", *sys.argv])
    signal.signal(signal.SIGTERM, _on_sigterm)
    topo = Topology(f"ustbench{os.getpid()}")
    ring: Ring | None = None
    sources: Sources | None = None
    tap: TapStats | None = None
    stream = make_rows("rx stream", cfg.sizes, cfg.bursts)
    backlog = make_rows("rx backlog", cfg.sizes, cfg.bursts)
    tx = make_rows("tx", cfg.sizes, cfg.bursts)
    try:
        topo.up()
        ring = Ring(topo.tap, namespace=topo.client_ns)
        os.sched_setaffinity(0, {cfg.reader_cpu})
        tap = TapStats(topo.client_ns, topo.tap)
        setup: dict[str, Any] = {
            "rx_slots": ring.rx_slots,
            "tx_slots": ring.tx_slots,
            "slot_size": ring.slot_size,
            "hugepages": ring.hugepages,
            "vnet_hdr": bool(ring.vnet_hdr_len),
            "tap_txqlen": tap.txqlen(),
            "source": "us_ref_send_loop, AF_PACKET + PACKET_QDISC_BYPASS",
        }
        # The TAP has carrier only while a queue is attached: sources last.
        sources = Sources(topo.client_ns, topo.tap, cfg.source_cpus)
        c0 = ring.stats()
        for rep in range(cfg.repeat):
            if "stream" in parts:
                run_rx_stream(ring, sources, tap, cfg, stream, rep)
            if "backlog" in parts:
                tap.set_txqlen(cfg.backlog_depth)
                try:
                    run_rx_backlog(ring, sources, cfg, backlog, rep)
                finally:
                    drain(ring)
                    tap.set_txqlen(setup["tap_txqlen"])
            if "tx" in parts:
                run_tx(ring, cfg, tx, rep)
        progress("allocation check")
        allocs = run_alloc_checks(ring, sources, cfg)
        c1 = ring.stats()
        counters = {k: c1[k] - c0[k] for k in c1 if c1[k] != c0[k]}
    finally:
        if sources is not None:
            sources.close()
        if tap is not None:
            tap.close()
        if ring is not None:
            ring.close()
        topo.down()

    rows = [*stream, *backlog, *tx]
    machine = machine_info()
    print()
    got = report(sys.stdout, command, machine, cfg, setup, rows, allocs)
    print(f"\nring counters over the run: {counters}")
    if args.json:
        doc = {
            "command": command,
            "machine": machine,
            "config": asdict(cfg),
            "setup": setup,
            "rows": [r.summary() for r in rows if r.rates],
            "alloc": [asdict(a) for a in allocs],
            "rx_targets": [t.summary() for t in got],
            "ring_counters": counters,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
