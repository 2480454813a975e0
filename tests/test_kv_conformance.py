"""The kv server against a real memcached: the same raw sessions, the same bytes back.

Debian's memcached runs in netns N-k (198.19.0.2, port 11311, -U 0 -t 1)
next to the kv app twice: `ustack serve kv` on ustack (198.18.0.2) in the
default key mode (``--keys strict``, port 11211), and `ustack serve kv
--stack kernel` beside memcached in memcached's key mode (``--keys
memcached``, port 11212), so both stacks are compared with memcached.
Every session is sent over a raw socket from netns N to all three, and
the replies must be byte-identical once the version string is masked.
The other documented differences (see ustack/apps/kv.py) get tests of
their own at the end, which check both sides of each difference, so a
change on either side shows; the key mode is one of them: in memcached's
mode a key with control characters gets memcached's bytes back.

The three servers live for the whole module and see the same sessions in
the same order, so their state (and their cas ids) must stay in step too:
each session starts with ``flush_all``, which answers OK on all and
takes one cas id on all.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import require_netns, unique_name
from tests.server import ServerProcess
from tests.test_kv_protocol import (
    CONTROL_KEY_MEMCACHED_REPLY,
    CONTROL_KEY_SESSION,
    MEMCACHED_SESSIONS,
)
from ustack import netns
from ustack.topology import Topology

pytestmark = pytest.mark.netns

MEMCACHED_PORT = 11311
OURS_PORT = 11211
OURS_MEMCACHED_KEYS_PORT = 11212
IDLE_S = 0.25  # a reply is complete once nothing more came for this long


class Pause:
    """Between two sends: make them separate reads on the server."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds


Step = bytes | Pause


@dataclass
class Servers:
    topo: Topology
    ours: ServerProcess
    ours_memcached_keys: ServerProcess


def _wait_listening(topo: Topology, port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with netns.inside(topo.client_ns):
                socket.create_connection((topo.kernel_addr, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    require_netns()
    if shutil.which("memcached") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI must run the memcached conformance tests: install memcached")
        pytest.skip("needs Debian's memcached (make setup installs it)")
    topo = Topology(unique_name("kvc")).up()
    # `ip netns exec` execs memcached: the child's pid is memcached's.
    mc = subprocess.Popen(
        ["ip", "netns", "exec", topo.kernel_ns, "memcached", "-u", "root", "-l",
         topo.kernel_addr, "-p", str(MEMCACHED_PORT), "-U", "0", "-t", "1", "-m", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ours = ServerProcess(topo, "kv", "--port", str(OURS_PORT))  # on ustack
    ours_mk = ServerProcess(
        topo, "kv", "--stack", "kernel", "--port", str(OURS_MEMCACHED_KEYS_PORT), "--keys",
        "memcached",
    )  # fmt: skip
    try:
        _wait_listening(topo, MEMCACHED_PORT)
        with ours, ours_mk:
            assert "keys memcached" in ours_mk.ready_line and "keys" not in ours.ready_line
            yield Servers(topo, ours, ours_mk)
    finally:
        mc.terminate()
        mc.wait(10)
        topo.down()


def _session(
    topo: Topology, addr: str, port: int, steps: list[Step], out: dict[int, bytes]
) -> None:
    with netns.inside(topo.client_ns):
        sock = socket.create_connection((addr, port), timeout=10)
    got = bytearray()
    try:
        for step in steps:
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                continue
            try:
                sock.sendall(step)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server closed on us; what it said before still counts
        sock.settimeout(IDLE_S)
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                break
            except ConnectionResetError:
                got += b"<EOF>"
                break
            if not chunk:
                got += b"<EOF>"
                break
            got += chunk
    finally:
        sock.close()
    out[port] = bytes(got)


def both(servers: Servers, steps: list[Step]) -> tuple[bytes, bytes, bytes]:
    """Replay `steps` on memcached and on ours (both key modes) at once.

    (memcached's, ours on ustack with strict keys, ours on kernel sockets
    with memcached's keys).
    """
    out: dict[int, bytes] = {}
    topo = servers.topo
    where = (
        (topo.kernel_addr, MEMCACHED_PORT),
        (topo.ustack_addr, OURS_PORT),
        (topo.kernel_addr, OURS_MEMCACHED_KEYS_PORT),
    )
    threads = [
        threading.Thread(target=_session, args=(topo, addr, port, steps, out))
        for addr, port in where
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out[MEMCACHED_PORT], out[OURS_PORT], out[OURS_MEMCACHED_KEYS_PORT]


_VERSION = re.compile(rb"VERSION [^\r\n]*\r\n")


def mask(reply: bytes) -> bytes:
    return _VERSION.sub(b"VERSION <masked>\r\n", reply)


def assert_same(theirs: bytes, ours: bytes, *more: bytes) -> None:
    """memcached's reply and ours (and `more` of ours) are the same bytes."""
    for other in more:
        assert_same(theirs, other)
    a, b = mask(theirs), mask(ours)
    if a == b:
        return
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    lo = max(0, at - 60)
    raise AssertionError(
        f"replies differ at byte {at} (memcached {len(a)} bytes, ours {len(b)}):\n"
        f"  memcached: {a[lo : at + 80]!r}\n  ours:      {b[lo : at + 80]!r}"
    )


FLUSH = b"flush_all\r\n"


# -- the recorded sessions, live ------------------------------------------------------


@pytest.mark.parametrize("data", [pytest.param(d, id=n) for n, d, _ in MEMCACHED_SESSIONS])
def test_recorded_session_same_bytes(servers: Servers, data: bytes):
    theirs, ours, ours_mk = both(servers, [FLUSH, Pause(), data])
    assert theirs.startswith(b"OK\r\n")
    assert_same(theirs, ours, ours_mk)


@pytest.mark.parametrize("data", [pytest.param(d, id=n) for n, d, _ in MEMCACHED_SESSIONS])
def test_recorded_session_in_small_reads_same_bytes(servers: Servers, data: bytes):
    if len(data) > 2048 and b"\n" not in data[-2:]:
        pytest.skip("a junk line's fate depends on where memcached's reads end")
    steps: list[Step] = [FLUSH]
    for i in range(0, len(data), 23):
        steps += [Pause(0.002), data[i : i + 23]]
    theirs, ours, ours_mk = both(servers, steps)
    assert_same(theirs, ours, ours_mk)


# -- sessions that need a live server ---------------------------------------------------


SESSIONS: dict[str, list[Step]] = {
    "big_values_pipelined": [
        b"set a 0 0 500000\r\n" + b"a" * 500000 + b"\r\nset b 7 0 1000000\r\n" + b"b" * 1000000,
        Pause(),
        b"\r\nget a b\r\ngets b a\r\nappend a 0 0 600000\r\n" + b"c" * 600000 + b"\r\nget a\r\n",
    ],
    "too_large_swallowed_over_many_reads": [
        b"set k 0 0 1\r\n1\r\nset k 0 0 3000000\r\n",
        *[step for _ in range(30) for step in (Pause(0.01), b"z" * 100000)],
        b"\r\nget k\r\nset j 0 0 3000000 noreply\r\n" + b"y" * 3000002 + b"version\r\n",
    ],
    "largest_item_exactly": [
        b"set kk 0 0 1048515\r\n" + b"x" * 1048515 + b"\r\n",
        b"set kk 0 0 1048516\r\n" + b"x" * 1048516 + b"\r\n",
        b"set kk 9 0 1048511\r\n" + b"x" * 1048511 + b"\r\n",
        b"set kk 9 0 1048512\r\n" + b"x" * 1048512 + b"\r\nget kk\r\n",
    ],
    "value_split_at_every_place": [
        b"set k 0 0 10\r",
        Pause(),
        b"\n01234",
        Pause(),
        b"56789\r",
        Pause(),
        b"\nget k\r",
        Pause(),
        b"\n",
    ],
    "get_line_streamed_in_pieces": [
        b"set k 0 0 1\r\n1\r\nget ",
        *[step for _ in range(8) for step in (Pause(0.01), b"nokey " * 500 + b"k ")],
        b"k\r\nversion\r\n",
    ],
    "get_line_streamed_key_too_long": [
        b"set k 0 0 1\r\n1\r\nget k ",
        *[step for _ in range(4) for step in (Pause(0.01), b"k " * 1500)],
        b"k" * 251,
        Pause(),
        b" k\r\nversion\r\n",
    ],
    "get_line_streamed_cr_split_from_lf": [
        b"set k 0 0 1\r\n1\r\nget " + b"k " * 1100 + b"k\r",
        Pause(),
        b"\nversion\r\n",
    ],
    "junk_line_closes_in_pieces": [
        b"set k 0 0 1\r\n1\r\n",
        Pause(),
        b"x" * 1500,
        Pause(),
        b"x" * 600,
    ],
    "junk_line_past_read_buffer_with_newline": [b"version\r\n", Pause(), b"x" * 20000 + b"\r\n"],
    "junk_line_after_spaces": [b" " * 101 + b"get " + b"k " * 1100],
    "many_keys_one_get": [
        b"".join(b"set key%d 0 0 %d\r\n%s\r\n" % (i, i, b"v" * i) for i in range(100)),
        Pause(),
        b"get " + b" ".join(b"key%d" % i for i in range(100)) + b" none\r\n",
        b"gets " + b" ".join(b"key%d" % i for i in range(0, 100, 3)) + b"\r\n",
    ],
    "quit_mid_pipeline": [b"set k 0 0 1\r\n1\r\nget k\r\nquit\r\nget k\r\n"],
    "disconnect_mid_value_then_check": [b"set half 0 0 100\r\n" + b"h" * 50],
    "after_disconnect": [b"get half\r\n"],
    "cas_sequence": [
        b"set c 0 0 1\r\n1\r\ngets c\r\ncas c 0 0 1 0\r\n2\r\nincr c 5\r\ngets c\r\n",
        b"touch c 100\r\ngats 100 c\r\nappend c 0 0 1\r\n9\r\ngets c\r\nprepend c 0 0 1\r\n8\r\n",
        b"gets c\r\nreplace c 0 0 1\r\n7\r\nadd c 0 0 1\r\n6\r\ngets c\r\ndelete c\r\ngets c\r\n",
    ],
}


@pytest.mark.parametrize("name", list(SESSIONS))
def test_live_session_same_bytes(servers: Servers, name: str):
    theirs, ours, ours_mk = both(servers, [FLUSH, Pause(), *SESSIONS[name]])
    assert theirs.startswith(b"OK\r\n")
    assert_same(theirs, ours, ours_mk)


def test_expiry_and_delayed_flush_in_real_time(servers: Servers):
    theirs, ours, ours_mk = both(
        servers,
        [
            FLUSH,
            b"set a 0 2 1\r\na\r\nset b 0 100 1\r\nb\r\nset c 0 0 1\r\nc\r\nget a b c\r\n",
            Pause(3.0),
            b"get a b c\r\nflush_all 2\r\nget b c\r\n",
            Pause(2.5),
            b"get b c\r\nset d 0 0 1\r\nd\r\nget d\r\n",
        ],
    )
    assert theirs.count(b"VALUE") == 8  # a, b, c; b, c; b, c (before the flush); d
    assert_same(theirs, ours, ours_mk)


_COUNTERS = (
    b"cmd_get",
    b"cmd_set",
    b"cmd_flush",
    b"cmd_touch",
    b"get_hits",
    b"get_misses",
    b"get_expired",
    b"delete_misses",
    b"delete_hits",
    b"incr_misses",
    b"incr_hits",
    b"decr_misses",
    b"decr_hits",
    b"cas_misses",
    b"cas_hits",
    b"cas_badval",
    b"touch_hits",
    b"touch_misses",
    b"store_too_large",
)


def _stats(reply: bytes) -> dict[bytes, bytes]:
    lines = reply.split(b"\r\n")
    return {
        parts[1]: parts[2] for parts in (line.split(b" ", 2) for line in lines) if len(parts) == 3
    }


def test_stats_counters_count_the_same(servers: Servers):
    stats = b"stats\r\n"
    session: list[Step] = [
        FLUSH,
        Pause(),
        b"stats reset\r\n",
        Pause(),
        b"set a 0 0 1\r\n1\r\nget a b\r\ngets a\r\ndelete b\r\ndelete a\r\nincr a 1\r\n"
        b"set a 0 0 1\r\n1\r\nincr a 1\r\ndecr a 1\r\ndecr x 1\r\ntouch a 0\r\ntouch x 0\r\n"
        b"gat 0 a b\r\ncas b 0 0 1 1\r\n1\r\ncas a 0 0 1 1\r\n1\r\nset e 0 -1 1\r\n1\r\nget e\r\n"
        b"set big 0 0 2000000\r\n" + b"x" * 2000002 + b"set c 0 0 1\r\n1x\r\n",
        Pause(),
        stats,
    ]
    theirs, ours, ours_mk = both(servers, session)
    mc, us = _stats(theirs), _stats(ours)
    assert {k: mc[k] for k in _COUNTERS} == {k: us[k] for k in _COUNTERS}
    assert {k: _stats(ours_mk)[k] for k in _COUNTERS} == {k: us[k] for k in _COUNTERS}
    assert mc[b"cmd_get"] == b"4"  # the session did what this test thinks it did
    # memcached's flush_all only marks items dead: they stay in curr_items until
    # its LRU crawler or a later access unlinks them, so earlier tests' keys make
    # its count drift. Ours unlinks at once; only "a" is alive here.
    assert us[b"curr_items"] == b"1"
    assert set(us) <= set(mc), f"names memcached does not have: {set(us) - set(mc)}"
    assert theirs.endswith(b"END\r\n") and ours.endswith(b"END\r\n")


def test_stats_settings_agree_on_what_both_have(servers: Servers):
    theirs, ours, _ = both(servers, [b"verbosity 1\r\nstats settings\r\nverbosity 0\r\n"])
    mc, us = _stats(theirs), _stats(ours)
    assert set(us) <= set(mc)
    shared = (b"maxbytes", b"item_size_max", b"verbosity", b"cas_enabled", b"evictions")
    assert {k: us[k] for k in shared} == {k: mc[k] for k in shared}
    assert {k: us[k] for k in (b"tcpport", b"udpport")} == {
        b"tcpport": str(OURS_PORT).encode(),
        b"udpport": b"0",
    }


# -- the documented differences, both sides checked (these run last: they part the states) --


def test_difference_version_string(servers: Servers):
    theirs, ours, ours_mk = both(servers, [b"version\r\n"])
    assert re.fullmatch(rb"VERSION 1\.6\.\d+\r\n", theirs)
    assert ours == ours_mk == b"VERSION 1.5.0-ustack\r\n"


def test_difference_stats_values_and_names(servers: Servers):
    theirs, ours, ours_mk = both(servers, [b"stats\r\nstats items\r\nstats cachedump 1 1\r\n"])
    assert theirs.count(b"STAT ") > _stats(ours).__len__() > 30
    assert ours.endswith(b"END\r\nEND\r\nERROR\r\n")
    assert set(_stats(ours_mk)) == set(_stats(ours)) and ours_mk.endswith(b"END\r\nERROR\r\n")


def test_difference_meta_commands(servers: Servers):
    theirs, ours, ours_mk = both(servers, [b"mn\r\nmg nokey v\r\n"])
    assert theirs == b"MN\r\nEN\r\n"
    assert ours == ours_mk == b"ERROR\r\nERROR\r\n"


def test_difference_control_characters_in_keys(servers: Servers):
    theirs, ours, ours_mk = both(servers, [FLUSH, b"set a\tb 0 0 1\r\nx\r\nget a\tb\r\n"])
    assert theirs == b"OK\r\nSTORED\r\nVALUE a\tb 0 1\r\nx\r\nEND\r\n"
    assert ours == (
        b"OK\r\nCLIENT_ERROR bad command line format\r\nERROR\r\n"
        b"CLIENT_ERROR bad command line format\r\n"
    )
    assert ours_mk == theirs  # --keys memcached: no difference


def test_difference_control_characters_in_keys_memcached_mode_same_bytes(servers: Servers):
    # Every control character in keys of every keyed command, memaslap's binary
    # counter, a CR inside a key, a NUL that ends the line, 250 and 251 bytes; in
    # one read, then as separate reads around a streamed get line past 2 KiB.
    streamed = [b"get ", *[step for _ in range(4) for step in (Pause(0.01), b"k\x01 " * 300)]]
    steps: list[Step] = [
        FLUSH,
        CONTROL_KEY_SESSION,
        Pause(),
        b"".join(b"set k%c 0 0 1\r\n%c\r\n" % (c, 48 + c % 10) for c in [*range(1, 32), 127]),
        b"get " + b" ".join(b"k%c" % c for c in [*range(1, 10), *range(11, 32), 127]) + b"\r\n",
        Pause(),
        b"gets k\x01 k\x1f\r\nappend k\x01 0 0 1\r\n!\r\nprepend k\x7f 0 0 1\r\n!\r\n",
        b"add k\x02 0 0 1\r\n2\r\nreplace k\x03 0 0 1\r\n3\r\ngats 100 k\x01 k\x7f k\x03\r\n",
        Pause(),
        *streamed,
        b"k\x7f\r\nversion\r\n",
    ]
    theirs, ours, ours_mk = both(servers, steps)
    assert theirs.startswith(b"OK\r\n" + CONTROL_KEY_MEMCACHED_REPLY[:39])  # before a cas id
    assert theirs.count(b"VALUE k\x01 0 ") > 1200  # the streamed get found its keys
    assert_same(theirs, ours_mk)
    assert ours != theirs and b"CLIENT_ERROR bad command line format" in ours
