"""ustack TCP against the Linux kernel, both directions, on a clean link.

Each test builds its own topology; ustack runs in a child process
(tests/tcp_peer.py, driving TcpLayer directly) and the kernel end is an
ordinary socket in the client namespace (198.18.0.1).  Covered: connect
both ways, a bulk exchange both ways at once, half-close from either side
with data still flowing the other way, close from either side (the side
that sends the first FIN ends in TIME-WAIT, the other in CLOSED), an abort
by the kernel (ECONNRESET), a RST from ustack for a closed port, and a
refused connect from ustack reported as ECONNREFUSED.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import time

import pytest

from tests.kernel import snmp_counter
from tests.tcpharness import (
    PeerProcess,
    kernel_accept,
    kernel_client,
    kernel_exchange,
    kernel_listener,
    payload_chunks,
    payload_sha256,
)
from ustack.topology import Topology

pytestmark = pytest.mark.netns

PORT = 5001
NBYTES = 2_000_000
SEED = 11
# A clean TAP link moves 2 MB in well under a second (about 0.1-0.6 s
# measured, setup excluded); 20 s covers a loaded 2-core machine.
BOUND_S = 20.0


def _common(report: dict[str, object], *, state: str) -> None:
    """What every clean run shares: the expected final state and no RST either way."""
    assert report["state"] == state
    assert report["error"] is None
    stats = report["stats"]
    assert isinstance(stats, dict)
    assert stats.get("tcp_out_rsts", 0) == 0
    assert stats.get("drop_internal_error", 0) == 0
    conn = report["conn"]
    assert isinstance(conn, dict)
    assert conn.get("drop_tcp_rst_challenged", 0) == 0


# -- kernel client -> ustack server -----------------------------------------------


def test_kernel_client_sends_then_closes_first_ustack_sink_ends_closed(topology: Topology):
    """Kernel sends 2 MB and its FIN first; ustack reads to EOF, closes, ends CLOSED."""
    with PeerProcess(topology, "server-sink", port=PORT) as peer:
        sock = kernel_client(topology, PORT)
        kr = kernel_exchange(sock, payload_chunks(SEED, NBYTES), timeout=BOUND_S)
        report = peer.finish(timeout=BOUND_S)
    expected = payload_sha256(SEED, NBYTES)
    assert kr.bytes_out == NBYTES and kr.sha256_out == expected
    assert kr.bytes_in == 0 and kr.eof_after_s is not None
    assert kr.shut_after_s is not None and kr.shut_after_s <= kr.eof_after_s
    assert report["bytes_in"] == NBYTES and report["sha256_in"] == expected
    assert report["bytes_out"] == 0
    _common(report, state="CLOSED")
    assert report["stats"]["tcp_passive_opens"] == 1


def test_ustack_server_sends_then_closes_first_ends_time_wait(topology: Topology):
    """ustack sends 2 MB and its FIN first: ustack ends in TIME-WAIT, the kernel reads to EOF."""
    with PeerProcess(topology, "server-source", port=PORT, bytes=NBYTES, seed=SEED) as peer:
        sock = kernel_client(topology, PORT)
        kr = kernel_exchange(sock, None, timeout=BOUND_S)
        report = peer.finish(timeout=BOUND_S)
    expected = payload_sha256(SEED, NBYTES)
    assert kr.bytes_in == NBYTES and kr.sha256_in == expected
    assert kr.bytes_out == 0
    # The kernel's FIN went only after ustack's EOF (kernel_exchange with nothing to send).
    assert kr.eof_after_s is not None and kr.shut_after_s is not None
    assert kr.eof_after_s <= kr.shut_after_s
    assert report["bytes_out"] == NBYTES and report["sha256_out"] == expected
    assert report["bytes_in"] == 0
    _common(report, state="TIME-WAIT")


def test_kernel_half_closes_ustack_keeps_sending_until_done(topology: Topology):
    """The kernel sends a request and its FIN at once; ustack (CLOSE-WAIT) still sends 2 MB."""
    request = b"GET /all-of-it\r\n"
    with PeerProcess(topology, "server-source", port=PORT, bytes=NBYTES, seed=SEED) as peer:
        sock = kernel_client(topology, PORT)
        kr = kernel_exchange(sock, [request], timeout=BOUND_S)
        report = peer.finish(timeout=BOUND_S)
    expected = payload_sha256(SEED, NBYTES)
    assert kr.shut_after_s is not None and kr.eof_after_s is not None
    assert kr.shut_after_s < kr.eof_after_s
    assert kr.bytes_in == NBYTES and kr.sha256_in == expected
    assert report["bytes_in"] == len(request)
    assert report["sha256_in"] == hashlib.sha256(request).hexdigest()
    assert report["bytes_out"] == NBYTES and report["sha256_out"] == expected
    # CLOSED, not TIME-WAIT: the kernel's FIN came first, so ustack sent its
    # 2 MB from CLOSE-WAIT and closed from LAST-ACK.
    _common(report, state="CLOSED")


@pytest.mark.parametrize(
    ("poll", "offload"),
    [("hybrid", False), ("busy", False), ("interrupt", False), ("hybrid", True)],
    ids=["hybrid", "busy", "interrupt", "hybrid-offload"],
)
def test_kernel_client_echo_both_ways_at_once(topology: Topology, poll: str, offload: bool):
    """2 MB each way at once through ustack's echo; the kernel half-closes when its data is out."""
    with PeerProcess(topology, "server-echo", port=PORT, poll=poll, offload=offload) as peer:
        assert f"offload {int(offload)}" in peer.ready_line
        sock = kernel_client(topology, PORT)
        kr = kernel_exchange(sock, payload_chunks(SEED, NBYTES), timeout=BOUND_S)
        report = peer.finish(timeout=BOUND_S)
    expected = payload_sha256(SEED, NBYTES)
    assert kr.bytes_out == NBYTES and kr.sha256_out == expected
    assert kr.bytes_in == NBYTES and kr.sha256_in == expected
    assert report["bytes_in"] == NBYTES and report["sha256_in"] == expected
    assert report["bytes_out"] == NBYTES and report["sha256_out"] == expected
    _common(report, state="CLOSED")
    assert report["offload"] is offload
    if offload:
        # Large segments both ways: far fewer than one segment per 1448 bytes.
        assert report["stats"]["tcp_out_segs"] < NBYTES // 1448 // 2
        assert report["stats"]["tcp_in_segs"] < NBYTES // 1448


def test_kernel_abort_reported_as_connection_reset(topology: Topology):
    """The kernel closes with SO_LINGER 0 (RST): ustack reports ECONNRESET."""
    with PeerProcess(topology, "server-sink", port=PORT) as peer:
        sock = kernel_client(topology, PORT)
        sock.sendall(b"x" * 100_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        rc = peer.wait(timeout=BOUND_S)
    assert rc == 1
    lines = peer.stderr.strip().splitlines()
    assert len(lines) == 1, peer.stderr
    assert lines[0].startswith("error: connection failed: ECONNRESET")


def test_closed_port_answered_with_rst_kernel_refused(topology: Topology):
    """A SYN to a port nobody listens on draws a RST: the kernel's connect is refused."""
    with PeerProcess(topology, "server-sink", port=PORT) as peer:
        before = snmp_counter(topology.client_ns, "Tcp", "AttemptFails")
        with pytest.raises(ConnectionRefusedError):
            kernel_client(topology, PORT + 1)
        assert snmp_counter(topology.client_ns, "Tcp", "AttemptFails") == before + 1
        # A normal connection afterwards, so the peer ends and reports.
        sock = kernel_client(topology, PORT)
        kernel_exchange(sock, [b"done"], timeout=BOUND_S)
        report = peer.finish(timeout=BOUND_S)
    stats = report["stats"]
    assert stats["tcp_no_port"] == 1
    assert stats["tcp_out_rsts"] == 1
    assert stats["tcp_passive_opens"] == 1
    assert report["bytes_in"] == 4


# -- ustack client -> kernel server ---------------------------------------------


def test_ustack_client_receives_kernel_closes_first_ends_closed(topology: Topology):
    """ustack connects; the kernel sends 2 MB and its FIN first; ustack ends CLOSED."""
    listener = kernel_listener(topology, PORT)
    try:
        with PeerProcess(topology, "client-sink", port=PORT) as peer:
            sock = kernel_accept(listener, BOUND_S)
            kr = kernel_exchange(sock, payload_chunks(SEED, NBYTES), timeout=BOUND_S)
            report = peer.finish(timeout=BOUND_S)
    finally:
        listener.close()
    expected = payload_sha256(SEED, NBYTES)
    assert kr.bytes_out == NBYTES and kr.sha256_out == expected
    assert kr.bytes_in == 0
    assert report["bytes_in"] == NBYTES and report["sha256_in"] == expected
    _common(report, state="CLOSED")
    assert report["stats"]["tcp_active_opens"] == 1


def test_ustack_client_sends_closes_first_ends_time_wait(topology: Topology):
    """ustack connects, sends 2 MB and its FIN first: TIME-WAIT; the kernel reads to EOF."""
    listener = kernel_listener(topology, PORT)
    try:
        with PeerProcess(topology, "client-source", port=PORT, bytes=NBYTES, seed=SEED) as peer:
            sock = kernel_accept(listener, BOUND_S)
            kr = kernel_exchange(sock, None, timeout=BOUND_S)
            report = peer.finish(timeout=BOUND_S)
    finally:
        listener.close()
    expected = payload_sha256(SEED, NBYTES)
    assert kr.bytes_in == NBYTES and kr.sha256_in == expected
    assert kr.eof_after_s is not None and kr.shut_after_s is not None
    assert kr.eof_after_s <= kr.shut_after_s
    assert report["bytes_out"] == NBYTES and report["sha256_out"] == expected
    _common(report, state="TIME-WAIT")


def test_ustack_client_half_closes_kernel_echo_keeps_flowing(topology: Topology):
    """ustack sends 2 MB then shutdown_write; the echo still arrives in FIN-WAIT; TIME-WAIT."""
    listener = kernel_listener(topology, PORT)
    try:
        with PeerProcess(topology, "client-echo", port=PORT, bytes=NBYTES, seed=SEED) as peer:
            sock = kernel_accept(listener, BOUND_S)
            kr = kernel_exchange(sock, echo=True, timeout=BOUND_S)
            report = peer.finish(timeout=BOUND_S)
    finally:
        listener.close()
    expected = payload_sha256(SEED, NBYTES)
    assert kr.bytes_in == NBYTES and kr.sha256_in == expected
    assert kr.bytes_out == NBYTES and kr.sha256_out == expected
    # The kernel saw ustack's FIN before it had echoed everything back.
    assert kr.eof_after_s is not None and kr.shut_after_s is not None
    assert kr.eof_after_s <= kr.shut_after_s
    assert report["bytes_out"] == NBYTES and report["sha256_out"] == expected
    assert report["bytes_in"] == NBYTES and report["sha256_in"] == expected
    _common(report, state="TIME-WAIT")


def test_ustack_connect_refused_reported_as_error(topology: Topology):
    """Nothing listens on the kernel's port: its RST makes ustack's connect fail."""
    before = snmp_counter(topology.client_ns, "Tcp", "OutRsts")
    t0 = time.monotonic()
    with PeerProcess(topology, "client-sink", port=PORT) as peer:
        rc = peer.wait(timeout=BOUND_S)
    elapsed = time.monotonic() - t0
    assert rc == 1
    lines = peer.stderr.strip().splitlines()
    assert len(lines) == 1, peer.stderr
    assert lines[0].startswith("error: connection failed: ECONNREFUSED"), lines[0]
    assert "in CLOSED" in lines[0]
    assert snmp_counter(topology.client_ns, "Tcp", "OutRsts") == before + 1
    # Refused at the first SYN: no retransmission (the initial RTO is 1 s).
    assert elapsed < 5.0
