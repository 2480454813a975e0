"""The load generator of `ustack bench`, its latency histogram, and a kernel sink.

Worker processes (``python -m ustack.bench.loadgen worker SPEC``), each
pinned to the client CPU and living in the client namespace, drive one
scenario against one server:

    pingpong   blocking socket, one request outstanding, send / recv_into
               in a tight loop (echo-latency)
    stream     non-blocking sockets in one epoll loop, `depth` requests
               outstanding per connection (echo-rate and kv; depth 1 is
               "not pipelined"); with `rate` > 0, open loop instead (paced)
    bulk-up    blocking sendall of large chunks to a discard server
    bulk-echo  one connection to an echo server, both directions at once,
               a bounded number of bytes in flight
    connect    connect, one small echo, close, again (connect-rate)
    idle       open connections and send nothing (idle)

A worker learns the timing from its parent as absolute CLOCK_MONOTONIC
instants: warm-up starts when the schedule line arrives, the timed window
is [t_timed, t_end).  A request counts when its reply completes inside the
window; its latency (send to last byte of the reply, taken with
time.monotonic_ns, so it includes the client's own Python and syscalls,
the same for every target) goes into an array during the run and into a
log-bucket Histogram afterwards, which the parent merges across workers.

Paced (open-loop) load: with `rate` > 0 a stream worker sends on a fixed
schedule, not when a reply comes back.  Slot k is due at t_timed + (k +
phase) / rate (`Schedule`; the phase interleaves the workers of one run)
and goes to connection k mod conns, however many requests that connection
already has outstanding, up to `max_outstanding`: a slot due when its
connection is at the cap is not sent and counts as dropped; a slot more
than `max_lag_ms` behind when the worker gets to it (the worker itself fell
behind) is not sent and counts as late.  A reply's latency runs from its
request's scheduled time, not from when it was sent, so a stall of the
client or of its connection is charged to the requests it delayed
(no coordinated omission).  Between sends the worker sleeps in epoll_wait,
woken by replies or by a periodic timerfd that expires at every slot:
epoll's own timeout is in milliseconds, far coarser than the tens of
microseconds between requests at the rates measured.  Latencies include
the worker's wake-up at each slot (some tens of microseconds on a VM).

The kv client speaks the memcached text protocol (`get`, `set`) from a
request plan built before the run (90% gets by default, uniform keys, all
keys set during the prefill, so a get that misses is counted, not
expected).

`sink` is a minimal server on kernel sockets (asyncio Protocols under
uvloop or the default loop) for echo, discard and kv: the load
generator's reference ("kernel sink") when measuring its own ceiling, and
a stand-in for servers that do not exist yet.  It follows the same
contract as `ustack serve`: one "ready" line, counters on SIGTERM,
`--stats-json FILE` written at exit and on SIGUSR1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import gc
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import termios
import time
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ustack import netns

# -- the histogram ----------------------------------------------------------------


class Histogram:
    """Log-bucket histogram of non-negative integers (ns), HdrHistogram-like.

    Values below 2 * 2**sub_bits are exact; above, each power of two is cut
    into 2**sub_bits buckets, so a bucket is at most 1/2**sub_bits of its
    value wide (0.8% with the default 7).  Sparse, mergeable, JSON-able.
    """

    __slots__ = ("count", "counts", "max", "min", "sub_bits", "total")

    def __init__(self, sub_bits: int = 7) -> None:
        self.sub_bits = sub_bits
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def index(self, v: int) -> int:
        s = self.sub_bits
        shift = v.bit_length() - s - 1
        if shift <= 0:
            return v
        return (shift << s) + (v >> shift)

    def bounds(self, idx: int) -> tuple[int, int]:
        """[low, high) of the values that land in bucket idx."""
        s = self.sub_bits
        if idx < (2 << s):
            return idx, idx + 1
        shift = (idx >> s) - 1
        m = idx - (shift << s)
        return m << shift, (m + 1) << shift

    def record_many(self, values: Iterable[int]) -> None:
        counts = self.counts
        get = counts.get
        s = self.sub_bits
        lo, hi, n, total = self.min, self.max, self.count, self.total
        for v in values:
            shift = v.bit_length() - s - 1
            idx = v if shift <= 0 else (shift << s) + (v >> shift)
            counts[idx] = get(idx, 0) + 1
            if n == 0 or v < lo:
                lo = v
            if v > hi:
                hi = v
            n += 1
            total += v
        self.min, self.max, self.count, self.total = lo, hi, n, total

    def record(self, v: int) -> None:
        self.record_many((v,))

    def merge(self, other: Histogram) -> None:
        if other.sub_bits != self.sub_bits:
            raise ValueError("cannot merge histograms of different precision")
        if other.count == 0:
            return
        for idx, c in other.counts.items():
            self.counts[idx] = self.counts.get(idx, 0) + c
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def _value(self, idx: int) -> float:
        low, high = self.bounds(idx)
        mid = (low + high - 1) / 2
        return float(min(max(mid, self.min), self.max))

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (q in 0..1), in the recorded unit."""
        if self.count == 0:
            return None
        rank = max(1, min(self.count, -int(-q * self.count // 1)))
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                return self._value(idx)
        return float(self.max)

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def cdf(self) -> list[tuple[float, float]]:
        """(value, share of values <= it) per non-empty bucket, in order."""
        out: list[tuple[float, float]] = []
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            out.append((self._value(idx), seen / self.count))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "sub_bits": self.sub_bits,
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "counts": {str(k): v for k, v in sorted(self.counts.items())},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Histogram:
        h = cls(int(d["sub_bits"]))
        h.counts = {int(k): int(v) for k, v in d["counts"].items()}
        h.count, h.total = int(d["count"]), int(d["total"])
        h.min, h.max = int(d["min"]), int(d["max"])
        return h


# -- the memcached text protocol (client side) ---------------------------------------

GET, SET = 0, 1
KEY_FMT = "k%09d"  # every key the same length, so a hit's reply has a known length
_STORED = b"STORED\r\n"
_END = b"END\r\n"


class ProtocolError(Exception):
    """The server's reply is not what the memcached text protocol allows."""


def kv_key(i: int) -> bytes:
    return (KEY_FMT % i).encode()


def kv_value(size: int) -> bytes:
    return bytes((48 + i % 10) for i in range(size))  # "0123456789..."


def kv_set_request(i: int, value: bytes) -> bytes:
    return b"set %s 0 0 %d\r\n%s\r\n" % (kv_key(i), len(value), value)


def kv_get_request(i: int) -> bytes:
    return b"get %s\r\n" % kv_key(i)


def kv_hit_len(value_size: int) -> int:
    """Length of a get's reply for a stored key (flags 0)."""
    return len(b"VALUE %s 0 %d\r\n" % (kv_key(0), value_size)) + value_size + 2 + len(_END)


def kv_plan(
    n: int, keys: int, get_ratio: float, value: bytes, seed: int
) -> tuple[list[int], list[bytes]]:
    """A random sequence of n requests (kind, bytes), replayed in a cycle."""
    rnd = random.Random(seed)
    kinds: list[int] = []
    reqs: list[bytes] = []
    for _ in range(n):
        k = rnd.randrange(keys)
        if rnd.random() < get_ratio:
            kinds.append(GET)
            reqs.append(kv_get_request(k))
        else:
            kinds.append(SET)
            reqs.append(kv_set_request(k, value))
    return kinds, reqs


def kv_parse_one(buf: bytes | bytearray, pos: int, kind: int, hit_len: int) -> tuple[int, int]:
    """One reply at buf[pos:]: (new pos, 0 ok / 1 miss / 2 error), or (-1, 0) if incomplete."""
    avail = len(buf) - pos
    if kind == GET:
        if avail >= hit_len and buf[pos] == 86 and buf[pos + hit_len - 5 : pos + hit_len] == _END:
            return pos + hit_len, 0  # the common case: b"VALUE " ... b"END\r\n"
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if avail > 512:
                raise ProtocolError(f"no end of line in {bytes(buf[pos : pos + 40])!r}")
            return -1, 0
        line = bytes(buf[pos:eol])
        if line == b"END":
            return eol + 2, 1
        if line.startswith(b"VALUE "):
            parts = line.split()
            if len(parts) < 4:
                raise ProtocolError(f"bad VALUE line {line!r}")
            end = eol + 2 + int(parts[3]) + 2 + len(_END)
            if len(buf) < end:
                return -1, 0
            if buf[end - 5 : end] != _END:
                raise ProtocolError(f"get reply does not end in END: {bytes(buf[end - 5 : end])!r}")
            return end, 0
        if line.startswith((b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR")):
            return eol + 2, 2
        raise ProtocolError(f"unexpected reply to get: {line[:60]!r}")
    if avail >= 8 and buf[pos : pos + 8] == _STORED:
        return pos + 8, 0
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        if avail > 512:
            raise ProtocolError(f"no end of line in {bytes(buf[pos : pos + 40])!r}")
        return -1, 0
    line = bytes(buf[pos:eol])
    if line in (b"NOT_STORED", b"EXISTS", b"NOT_FOUND") or line.startswith(
        (b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR")
    ):
        return eol + 2, 2
    raise ProtocolError(f"unexpected reply to set: {line[:60]!r}")


# -- worker spec and result --------------------------------------------------------------


@dataclass
class WorkerSpec:
    mode: str  # pingpong, stream, bulk-up, bulk-echo, connect, idle
    proto: str  # echo, kv, discard
    ns: str | None  # client namespace (None: stay where we are)
    cpu: int | None
    dst: str
    port: int
    conns: int = 1
    depth: int = 1
    size: int = 64  # echo request / bulk chunk / connect payload bytes
    keys: int = 10000
    value_size: int = 1024
    get_ratio: float = 0.9
    prefill: list[int] = field(default_factory=list)  # [start, stop, step] of keys to set
    window: int = 256 * 1024  # bulk-echo: bytes in flight
    seed: int = 1
    rate: float = 0.0  # stream: requests/s this worker offers (open loop); 0: closed loop
    phase: float = 0.0  # paced: offset of the schedule, a share (0..1) of an interval
    max_outstanding: int = 256  # paced: requests in flight per connection at most
    max_lag_ms: float = 100.0  # paced: a slot this far behind is given up (late)


@dataclass
class WorkerResult:
    ops: int = 0  # replies (or chunks, connections) completed in the timed window
    ops_total: int = 0  # everything the server saw from us, warm-up and prefill included
    bytes: int = 0  # payload bytes moved in the window (bulk: acknowledged / echoed)
    window_s: float = 0.0  # the window this worker measured over
    errors: int = 0
    misses: int = 0  # kv gets of a key the server did not have
    error_kinds: dict[str, int] = field(default_factory=dict)
    hist: dict[str, Any] = field(default_factory=dict)
    # Paced only, slots scheduled inside the window: offered = issued + dropped + late.
    offered: int = 0
    issued: int = 0
    dropped: int = 0  # their connection already had max_outstanding requests in flight
    late: int = 0  # the worker was more than max_lag_ms behind its schedule
    rate: float = 0.0  # the schedule's exact rate (whole-ns interval)


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Blocking socket with SO_RCVTIMEO/SO_SNDTIMEO (connect obeys the latter).

    A Python-level timeout (settimeout) would make CPython poll() before
    every send and recv: twice the client's syscalls.  On expiry the call
    raises BlockingIOError.
    """
    sock.settimeout(None)
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _connect(dst: str, port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        _kernel_timeouts(sock, timeout)
        _nodelay(sock)
        sock.connect((dst, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _recv_exact(sock: socket.socket, view: memoryview, n: int) -> None:
    got = 0
    while got < n:
        r = sock.recv_into(view[got:n])
        if r == 0:
            raise ConnectionError("the server closed the connection")
        got += r


def kv_prefill(dst: str, port: int, keys: Sequence[int], value: bytes, batch: int = 64) -> int:
    """Set the given keys, `batch` requests per write; how many were stored."""
    sock = _connect(dst, port)
    buf = bytearray(8 * batch)
    view = memoryview(buf)
    stored = 0
    try:
        for i in range(0, len(keys), batch):
            chunk = keys[i : i + batch]
            sock.sendall(b"".join(kv_set_request(k, value) for k in chunk))
            _recv_exact(sock, view, 8 * len(chunk))
            if buf[: 8 * len(chunk)] != _STORED * len(chunk):
                raise ProtocolError(f"prefill: server said {bytes(buf[:40])!r}")
            stored += len(chunk)
    finally:
        sock.close()
    return stored


# -- the loops ------------------------------------------------------------------------


def _pingpong_echo(
    spec: WorkerSpec, sock: socket.socket, t_timed: int, t_end: int, res: WorkerResult
) -> array[int]:
    size = spec.size
    req = bytes(size)
    buf = bytearray(size)
    view = memoryview(buf)
    send = sock.send
    recv_into = sock.recv_into
    now = time.monotonic_ns
    lat: array[int] = array("q")
    append = lat.append
    ops = total = 0
    t0 = now()
    while t0 < t_end:
        if send(req) != size:
            raise ConnectionError("short send on a blocking socket")
        got = recv_into(view)
        while got < size:
            r = recv_into(view[got:])
            if r == 0:
                raise ConnectionError("the server closed the connection")
            got += r
        t1 = now()
        total += 1
        if t1 >= t_timed and t1 < t_end:
            append(t1 - t0)
            ops += 1
        t0 = t1
    res.ops += ops
    res.ops_total += total
    res.bytes += ops * size
    return lat


class _Conn:
    __slots__ = ("acc", "buf", "fd", "kinds", "out", "sock", "times")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.times: deque[int] = deque()  # per request in flight: when it was (to be) sent
        self.kinds: deque[int] = deque()
        self.acc = 0
        self.out = bytearray()
        self.buf = bytearray()


class _Replies:
    """Matches the bytes a connection received to its requests in flight.

    One call per recv: completes as many replies as arrived, pops their
    send times, and counts them (and their latencies while the window is
    open) for both stream loops.
    """

    __slots__ = ("errors", "hit_len", "kv", "lat", "misses", "nbytes", "ops", "size", "total")

    def __init__(self, kv: bool, size: int, hit_len: int) -> None:
        self.kv = kv
        self.size = size
        self.hit_len = hit_len
        self.lat: array[int] = array("q")
        self.ops = self.total = self.nbytes = self.misses = self.errors = 0

    def take(self, c: _Conn, data: memoryview, t: int, inwin: bool) -> int:
        """The replies completed by `data` (received at t); how many."""
        times = c.times
        append = self.lat.append
        k = 0
        if self.kv:
            buf = c.buf
            buf += data
            kinds = c.kinds
            hit_len = self.hit_len
            pos = 0
            while kinds:
                pos2, status = kv_parse_one(buf, pos, kinds[0], hit_len)
                if pos2 < 0:
                    break
                kinds.popleft()
                t0 = times.popleft()
                k += 1
                if status:
                    if status == 1:
                        self.misses += 1
                    else:
                        self.errors += 1
                if inwin:
                    append(t - t0)
                    self.nbytes += pos2 - pos
                pos = pos2
            if pos:
                del buf[:pos]
        else:
            size = self.size
            acc = c.acc + len(data)
            k = acc // size
            c.acc = acc - k * size
            if inwin:
                for _ in range(k):
                    append(t - times.popleft())
                self.nbytes += k * size
            else:
                for _ in range(k):
                    times.popleft()
        if k:
            self.total += k
            if inwin:
                self.ops += k
        return k

    def into(self, res: WorkerResult) -> array[int]:
        res.ops += self.ops
        res.ops_total += self.total
        res.bytes += self.nbytes
        res.misses += self.misses
        res.errors += self.errors
        return self.lat


def _send_queued(ep: select.epoll, c: _Conn) -> None:
    """The socket is writable: send what is queued; stop watching for that once all went."""
    try:
        n = c.sock.send(c.out)
    except BlockingIOError:
        n = 0
    del c.out[:n]
    if not c.out:
        ep.modify(c.fd, select.EPOLLIN)


def _recv(c: _Conn, rbuf: bytearray) -> int:
    """Read what the server sent on `c` into rbuf; a connection it closed is an error."""
    n = c.sock.recv_into(rbuf)
    if n == 0:
        raise ConnectionError("the server closed a connection")
    return n


def _stream_setup(
    spec: WorkerSpec, socks: list[socket.socket]
) -> tuple[select.epoll, dict[int, _Conn], _Replies, list[int], list[bytes]]:
    """Non-blocking connections in an epoll set, the reply matcher, the kv plan."""
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    for s in socks:
        s.setblocking(False)
        c = _Conn(s)
        conns[c.fd] = c
        ep.register(c.fd, select.EPOLLIN)
    kinds_plan: list[int] = []
    reqs_plan: list[bytes] = []
    hit_len = 0
    kv = spec.proto == "kv"
    if kv:
        value = kv_value(spec.value_size)
        kinds_plan, reqs_plan = kv_plan(16384, spec.keys, spec.get_ratio, value, spec.seed)
        hit_len = kv_hit_len(spec.value_size)
    return ep, conns, _Replies(kv, spec.size, hit_len), kinds_plan, reqs_plan


def _stream(
    spec: WorkerSpec, socks: list[socket.socket], t_timed: int, t_end: int, res: WorkerResult
) -> array[int]:
    """Many connections, `depth` requests outstanding on each, one epoll loop."""
    ep, conns, replies, kinds_plan, reqs_plan = _stream_setup(spec, socks)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    depth = spec.depth
    kv = replies.kv
    echo_batch = [bytes(spec.size) * k for k in range(depth + 1)]
    plan_n = len(kinds_plan)
    plan_i = 0
    now = time.monotonic_ns
    take = replies.take
    rbuf = bytearray(1 << 18)
    rview = memoryview(rbuf)

    def send(c: _Conn, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            c.out += data[n:]
            ep.modify(c.fd, IN | OUT)

    def issue(c: _Conn, k: int, t: int) -> None:
        nonlocal plan_i
        c.times.extend([t] * k)
        if not kv:
            send(c, echo_batch[k])
            return
        i = plan_i
        j = i + k
        if j <= plan_n:
            c.kinds.extend(kinds_plan[i:j])
            data = b"".join(reqs_plan[i:j])
        else:
            j -= plan_n
            c.kinds.extend(kinds_plan[i:])
            c.kinds.extend(kinds_plan[:j])
            data = b"".join(reqs_plan[i:]) + b"".join(reqs_plan[:j])
        plan_i = j
        send(c, data)

    t = now()
    for c in conns.values():
        issue(c, depth, t)
    try:
        while t < t_end:
            events = ep.poll(0.2)
            for fd, ev in events:
                c = conns[fd]
                if ev & OUT:
                    _send_queued(ep, c)
                if not ev & (IN | select.EPOLLERR | select.EPOLLHUP):
                    continue
                n = _recv(c, rbuf)
                t = now()
                k = take(c, rview[:n], t, t_timed <= t < t_end)
                if k and t < t_end:
                    issue(c, k, t)
            if not events:
                t = now()
    finally:
        ep.close()
    return replies.into(res)


# -- open loop ---------------------------------------------------------------------------


class Schedule:
    """When a paced worker's requests are due: slot k at base + k * interval_ns.

    base = t_timed + phase * interval_ns, so slot 0 is the first of the
    timed window and slots below 0 are warm-up; the window holds slots
    0 .. n_window - 1.  The interval is a whole number of nanoseconds, so
    slot times are exact integers (`rate` is the rate that gives).  `take`
    hands out the slots due at a time t as a range of slot numbers, first
    giving up those more than max_lag_ns old; `finish` gives up what the
    window still had.  Late slots are counted only inside the window.
    """

    __slots__ = ("base", "interval_ns", "k", "late", "max_lag_ns", "n_window", "rate")

    def __init__(
        self,
        rate: float,
        t_start: int,
        t_timed: int,
        t_end: int,
        phase: float = 0.0,
        max_lag_ns: int = 100_000_000,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a paced schedule needs a rate above 0, not {rate}")
        iv = max(1, round(1e9 / rate))
        self.interval_ns = iv
        self.rate = 1e9 / iv
        self.base = t_timed + int((phase % 1.0) * iv)
        self.max_lag_ns = max_lag_ns
        # Slots due before the worker started: warm-up ones are skipped
        # quietly, window ones by take() as late.
        self.k = min(0, -((self.base - t_start) // iv))
        self.n_window = max(0, -((self.base - t_end) // iv))
        self.late = 0

    def at(self, k: int) -> int:
        return self.base + k * self.interval_ns

    def _give_up(self, k0: int, k1: int) -> None:
        lo, hi = max(k0, 0), min(k1, self.n_window)
        if hi > lo:
            self.late += hi - lo

    def take(self, t: int) -> range:
        """Slots due at t (scheduled at or before it), after dropping late ones."""
        k0 = self.k
        iv = self.interval_ns
        k1 = (t - self.base) // iv + 1
        if k1 <= k0:
            return range(k0, k0)
        oldest = -((self.base + self.max_lag_ns - t) // iv)  # first slot at >= t - max_lag
        if oldest > k0:
            self._give_up(k0, oldest)
            k0 = oldest
        self.k = k1
        return range(k0, k1)

    def finish(self) -> None:
        """The window is over: slots of it not taken were never sent in time."""
        self._give_up(self.k, self.n_window)
        self.k = max(self.k, self.n_window)


class _ITimerSpec(ctypes.Structure):
    _fields_ = [
        ("interval_sec", ctypes.c_long),
        ("interval_nsec", ctypes.c_long),
        ("value_sec", ctypes.c_long),
        ("value_nsec", ctypes.c_long),
    ]


class Timer:
    """A periodic CLOCK_MONOTONIC timerfd, to wake an epoll at each slot of a Schedule.

    Python 3.11 has no os.timerfd_*, so this goes through libc with ctypes.
    Periodic, so it is set once per run; each expiry leaves the fd readable
    until `clear` reads the count.  It fires at whole nanoseconds (no timer
    slack), where epoll's own timeout has whole milliseconds.
    """

    _CLOCK_MONOTONIC = 1
    _TFD_TIMER_ABSTIME = 1

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        create = libc.timerfd_create
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        self._settime = libc.timerfd_settime
        self._settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_ITimerSpec),
            ctypes.c_void_p,
        ]
        fd = create(self._CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd: int = fd
        self._count = [bytearray(8)]  # where clear() reads the expiry count

    def start(self, first_ns: int, interval_ns: int) -> None:
        """Expire at monotonic time first_ns (at once if past), then every interval_ns."""
        spec = _ITimerSpec(
            interval_ns // 1_000_000_000,
            interval_ns % 1_000_000_000,
            first_ns // 1_000_000_000,
            first_ns % 1_000_000_000,
        )
        if self._settime(self.fd, self._TFD_TIMER_ABSTIME, ctypes.pointer(spec), None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def clear(self) -> None:
        """Read (and forget) the expiries so far, so the fd stops being readable."""
        with contextlib.suppress(BlockingIOError):
            os.readv(self.fd, self._count)

    def close(self) -> None:
        os.close(self.fd)


def _paced(
    spec: WorkerSpec, socks: list[socket.socket], t_timed: int, t_end: int, res: WorkerResult
) -> array[int]:
    """Open loop: requests on the Schedule, round robin over the connections."""
    ep, conns, replies, kinds_plan, reqs_plan = _stream_setup(spec, socks)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    kv = replies.kv
    order = list(conns.values())
    nconn = len(order)
    cap = max(1, spec.max_outstanding)
    echo_req = bytes(spec.size)
    plan_n = len(kinds_plan)
    plan_i = 0
    now = time.monotonic_ns
    take = replies.take
    rbuf = bytearray(1 << 18)
    rview = memoryview(rbuf)
    sched = Schedule(spec.rate, now(), t_timed, t_end, spec.phase, int(spec.max_lag_ms * 1e6))
    base, iv = sched.base, sched.interval_ns
    timer = Timer()
    tfd = timer.fd
    ep.register(tfd, IN)
    timer.start(sched.at(sched.k), iv)
    dirty: list[_Conn] = []  # connections given requests this round, to send once each
    issued = dropped = 0
    try:
        t = now()
        while True:
            # Last round (t >= t_end): the window's slots that came due while
            # we were away are still sent, late, rather than never.
            for k in sched.take(t if t < t_end else t_end - 1):
                c = order[k % nconn]
                times = c.times
                if len(times) >= cap:
                    if k >= 0:
                        dropped += 1
                    continue
                if k >= 0:
                    issued += 1
                times.append(base + k * iv)  # latency counts from here, not from the send
                out = c.out
                if not out:
                    dirty.append(c)
                if kv:
                    c.kinds.append(kinds_plan[plan_i])
                    out += reqs_plan[plan_i]
                    plan_i += 1
                    if plan_i == plan_n:
                        plan_i = 0
                else:
                    out += echo_req
            if dirty:
                for c in dirty:
                    try:
                        n = c.sock.send(c.out)
                    except BlockingIOError:
                        n = 0
                    if n:
                        del c.out[:n]
                    if c.out:
                        ep.modify(c.fd, IN | OUT)
                dirty.clear()
            if t >= t_end:
                break
            wake = sched.at(sched.k)
            if wake > t_end:
                wake = t_end
            # The timer wakes us at the next slot; epoll's own timeout, rounded
            # up to whole ms, only ends the run.
            t = now()
            for fd, ev in ep.poll(max(0.0, (wake - t) / 1e9)):
                if fd == tfd:
                    timer.clear()
                    continue
                c = conns[fd]
                if ev & OUT:
                    _send_queued(ep, c)
                if not ev & (IN | select.EPOLLERR | select.EPOLLHUP):
                    continue
                n = _recv(c, rbuf)
                t = now()
                take(c, rview[:n], t, t_timed <= t < t_end)
            t = now()
        sched.finish()
    finally:
        ep.close()
        timer.close()
    res.offered += sched.n_window
    res.issued += issued
    res.dropped += dropped
    res.late += sched.late
    res.rate = sched.rate
    return replies.into(res)


def _outq(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer."""
    b = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", b)[0])


def _bulk_up(
    spec: WorkerSpec, sock: socket.socket, t_timed: int, t_end: int, res: WorkerResult
) -> array[int]:
    chunk = memoryview(bytes(spec.size))
    now = time.monotonic_ns
    sendall = sock.sendall
    sent = 0
    chunks = 0
    t = now()
    while t < t_timed:
        sendall(chunk)
        sent += spec.size
        chunks += 1
        t = now()
    t0, acked0 = t, sent - _outq(sock)
    while t < t_end:
        sendall(chunk)
        sent += spec.size
        chunks += 1
        t = now()
    acked1 = sent - _outq(sock)
    moved = acked1 - acked0
    res.bytes += moved
    res.ops += moved // spec.size
    res.ops_total += chunks
    res.window_s = (t - t0) / 1e9
    return array("q")


def _bulk_echo(
    spec: WorkerSpec, sock: socket.socket, t_timed: int, t_end: int, res: WorkerResult
) -> array[int]:
    """Send a stream of chunks and read it back at once, `window` bytes in flight."""
    sock.setblocking(False)
    size = spec.size
    chunk = memoryview(bytes(size))
    window = max(spec.window, size)
    ep = select.epoll()
    fd = sock.fileno()
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    ep.register(fd, IN | OUT)
    want_out = True
    rbuf = bytearray(1 << 18)
    sent = recvd = 0
    boundary = size  # received byte count at which the next chunk is complete
    sent_at: deque[int] = deque()  # when each chunk's last byte went to the kernel
    now = time.monotonic_ns
    lat: array[int] = array("q")
    ops = total = nbytes = 0
    t = now()
    try:
        while t < t_end:
            for _, ev in ep.poll(0.2):
                if ev & OUT and sent - recvd < window:
                    off = sent % size
                    try:
                        n = sock.send(chunk[off:])
                    except BlockingIOError:
                        n = 0
                    sent += n
                    if n and sent % size == 0:
                        sent_at.append(now())
                if ev & (IN | select.EPOLLERR | select.EPOLLHUP):
                    n = sock.recv_into(rbuf)
                    if n == 0:
                        raise ConnectionError("the server closed the connection")
                    recvd += n
                    t = now()
                    if t >= t_timed and t < t_end:
                        nbytes += n
                    while recvd >= boundary and sent_at:
                        t0 = sent_at.popleft()
                        boundary += size
                        total += 1
                        if t >= t_timed and t < t_end:
                            lat.append(t - t0)
                            ops += 1
                room = sent - recvd < window
                if room != want_out:
                    ep.modify(fd, IN | OUT if room else IN)
                    want_out = room
            t = now()
    finally:
        ep.close()
    res.ops += ops
    res.ops_total += total
    res.bytes += nbytes
    return lat


def _connect_loop(spec: WorkerSpec, t_timed: int, t_end: int, res: WorkerResult) -> array[int]:
    addr = (spec.dst, spec.port)
    timeouts = struct.pack("ll", 2, 0)
    msg = bytes(spec.size)
    buf = bytearray(spec.size)
    view = memoryview(buf)
    now = time.monotonic_ns
    lat: array[int] = array("q")
    ops = total = errors = 0
    kinds: dict[str, int] = {}
    t0 = now()
    while t0 < t_end:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeouts)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeouts)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.connect(addr)
            s.sendall(msg)
            _recv_exact(s, view, spec.size)
        except OSError as exc:
            errors += 1
            name = type(exc).__name__ if exc.errno is None else os.strerror(exc.errno)
            kinds[name] = kinds.get(name, 0) + 1
            s.close()
            if errors > 100000:
                break
            t0 = now()
            continue
        s.close()
        t1 = now()
        total += 1
        if t1 >= t_timed and t1 < t_end:
            lat.append(t1 - t0)
            ops += 1
        t0 = t1
    res.ops += ops
    res.ops_total += total
    res.errors += errors
    for k, v in kinds.items():
        res.error_kinds[k] = res.error_kinds.get(k, 0) + v
    return lat


# -- the worker process ------------------------------------------------------------------


def _window_from_parent() -> tuple[int, int]:
    """Say "ready", then read "T_TIMED T_END" (monotonic ns) from the parent."""
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 2:
        raise SystemExit("loadgen worker: no schedule from the parent")
    return int(line[0]), int(line[1])


def run_worker(spec: WorkerSpec) -> WorkerResult:
    """Set up (connect, prefill), wait for the schedule, run, return the figures."""
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    if spec.ns is not None:
        netns.enter(spec.ns)
    res = WorkerResult()
    socks: list[socket.socket] = []
    if spec.prefill:
        start, stop, step = spec.prefill
        keys = range(start, stop, step)
        res.ops_total += kv_prefill(spec.dst, spec.port, keys, kv_value(spec.value_size))
    if spec.mode != "connect":
        socks = [_connect(spec.dst, spec.port) for _ in range(spec.conns)]
    gc.collect()
    gc.disable()  # no collector pauses inside the window
    t_timed, t_end = _window_from_parent()
    res.window_s = (t_end - t_timed) / 1e9
    try:
        if spec.mode == "pingpong":
            lat = _pingpong_echo(spec, socks[0], t_timed, t_end, res)
        elif spec.mode == "stream" and spec.rate > 0:
            lat = _paced(spec, socks, t_timed, t_end, res)
        elif spec.mode == "stream":
            lat = _stream(spec, socks, t_timed, t_end, res)
        elif spec.mode == "bulk-up":
            lat = _bulk_up(spec, socks[0], t_timed, t_end, res)
        elif spec.mode == "bulk-echo":
            lat = _bulk_echo(spec, socks[0], t_timed, t_end, res)
        elif spec.mode == "connect":
            lat = _connect_loop(spec, t_timed, t_end, res)
        elif spec.mode == "idle":
            time.sleep(max(0.0, (t_end - time.monotonic_ns()) / 1e9))
            lat = array("q")
        else:
            raise ValueError(f"unknown load mode {spec.mode!r}")
    finally:
        for s in socks:
            s.close()
    h = Histogram()
    h.record_many(lat)
    res.hist = h.to_json()
    return res


# -- the kernel sink server --------------------------------------------------------------


class SinkStats:
    """The sink's counters, named like the `ustack serve` apps' (app_*)."""

    def __init__(self) -> None:
        self.c: dict[str, int] = {
            "app_conns_accepted": 0,
            "app_requests": 0,
            "app_bytes_in": 0,
            "app_bytes_out": 0,
            "app_kv_hits": 0,
            "app_protocol_errors": 0,
        }


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, st: SinkStats) -> None:
        self.st = st.c
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.st["app_conns_accepted"] += 1

    def data_received(self, data: bytes) -> None:
        st = self.st
        st["app_requests"] += 1
        st["app_bytes_in"] += len(data)
        st["app_bytes_out"] += len(data)
        assert self.transport is not None
        self.transport.write(data)


class _DiscardProtocol(_EchoProtocol):
    def data_received(self, data: bytes) -> None:
        self.st["app_requests"] += 1
        self.st["app_bytes_in"] += len(data)


class _KvProtocol(_EchoProtocol):
    """get/set of the memcached text protocol; a hit's reply is stored whole."""

    def __init__(self, st: SinkStats, store: dict[bytes, bytes]) -> None:
        super().__init__(st)
        self.store = store
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        st = self.st
        st["app_bytes_in"] += len(data)
        buf = self.buf
        buf += data
        store = self.store
        out: list[bytes] = []
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if buf.startswith(b"get ", pos):
                key = bytes(buf[pos + 4 : eol])
                st["app_requests"] += 1
                hit = store.get(key)
                if hit is None:
                    out.append(_END)
                else:
                    st["app_kv_hits"] += 1
                    out.append(hit)
                pos = eol + 2
            elif buf.startswith(b"set ", pos):
                parts = bytes(buf[pos:eol]).split()
                try:
                    n = int(parts[4])
                except (IndexError, ValueError):
                    out.append(b"CLIENT_ERROR bad command line format\r\n")
                    st["app_protocol_errors"] += 1
                    pos = eol + 2
                    continue
                end = eol + 2 + n + 2
                if len(buf) < end:
                    break
                key, flags = parts[1], parts[2]
                store[key] = b"VALUE %s %s %d\r\n%s\r\nEND\r\n" % (
                    key,
                    flags,
                    n,
                    buf[eol + 2 : eol + 2 + n],
                )
                st["app_requests"] += 1
                out.append(_STORED)
                pos = end
            else:
                st["app_protocol_errors"] += 1
                out.append(b"ERROR\r\n")
                pos = eol + 2
        if pos:
            del buf[:pos]
        if out:
            data_out = b"".join(out)
            st["app_bytes_out"] += len(data_out)
            assert self.transport is not None
            self.transport.write(data_out)


def _write_stats(path: str | None, stats: dict[str, int]) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f)
    os.replace(tmp, path)


def run_sink(
    app: str, ns: str | None, addr: str, port: int, loop_name: str, stats: str | None
) -> int:
    """Serve `app` on kernel sockets until SIGTERM/SIGINT (the kernel sink)."""
    if ns is not None:
        netns.enter(ns)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, port))
    lsock.setblocking(False)
    st = SinkStats()
    store: dict[bytes, bytes] = {}

    def factory() -> asyncio.Protocol:
        if app == "echo":
            return _EchoProtocol(st)
        if app == "discard":
            return _DiscardProtocol(st)
        return _KvProtocol(st, store)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: _write_stats(stats, dict(st.c)))
        server = await loop.create_server(factory, sock=lsock, backlog=4096)
        print(
            f"sink {app} ready on {addr} port {port} (kernel sockets, loop {loop_name},"
            f" netns {ns})",
            flush=True,
        )
        await stop.wait()
        server.close()

    if loop_name == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    _write_stats(stats, dict(st.c))
    print(f"sink {app} stopped; counters:")
    for k, v in st.c.items():
        print(f"    {k:34} {v}")
    sys.stdout.flush()
    return 0


# -- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ustack.bench.loadgen")
    sub = ap.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker", help="one load generator process (spec as JSON)")
    w.add_argument("spec")
    s = sub.add_parser("sink", help="minimal server on kernel sockets")
    s.add_argument("app", choices=["echo", "discard", "kv"])
    s.add_argument("--ns", default=None, help="network namespace to serve in")
    s.add_argument("--addr", default="0.0.0.0")
    s.add_argument("--port", type=int, default=7)
    s.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    s.add_argument("--stats-json", default=None)
    args = ap.parse_args(argv)
    if args.role == "sink":
        return run_sink(args.app, args.ns, args.addr, args.port, args.loop, args.stats_json)
    spec = WorkerSpec(**json.loads(args.spec))
    try:
        res = run_worker(spec)
    except (OSError, ProtocolError) as exc:
        print(json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(asdict(res)), flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
