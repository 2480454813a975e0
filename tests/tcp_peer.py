"""One ustack TCP endpoint in its own process, for tests with the Linux kernel as the peer.

Run as ``.venv/bin/python tests/tcp_peer.py --name TOPO --mode MODE --port P
[--host IP] [--gateway IP] [--bytes N] [--seed S] [--fault SPEC] [--poll MODE]
[--offload] [--pcap FILE] [--timeout SECONDS]``.  It opens a Context on the TAP of topology TOPO
(ustack at 198.18.0.2), drives `TcpLayer` directly (no socket API) in a
loop over `ctx.wait_until`, prints one ``READY ...`` line once it listens
(server modes) or is about to connect (client modes), and at the end one
JSON line: the SHA-256 and byte counts of what it received and sent, the
elapsed time, the connection's final state and `stats()`, and the stack's
counters.  On failure (refused, reset, timed out, a wrong echo) it prints
one ``error: ...`` line on stderr and exits with status 1.

Modes (the kernel is the client of ``server-*`` and the server of
``client-*``; the kernel side is 198.18.0.1 unless --host says otherwise,
e.g. 198.19.0.2 in the topology's second namespace with --gateway
198.18.0.1):

  server-sink    accept one connection, read to EOF, then close
  server-source  accept one connection, send N bytes, then close (FIN first
                 from ustack); whatever arrives is read and hashed
  server-echo    accept one connection, echo everything until EOF and the
                 echo is sent, then close (the peer half-closes first)
  client-sink    connect, read to EOF, then close (FIN first from the kernel)
  client-source  connect, send N bytes, close, read to EOF
  client-echo    connect, send N bytes and half-close (shutdown_write) while
                 reading the echo to EOF; the echo must equal what was sent

The bytes a source sends are `payload_chunks(seed, N)`: a seeded
pseudo-random stream, so a receiver can hash it and compare digests.  The
process is its own Python interpreter so that its loop does not share a GIL
with the test's kernel sockets.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator

from ustack.dev.fault import FaultDevice
from ustack.loop import Context
from ustack.runtime import close_context, open_context
from ustack.stack.tcp import TcpConnection, TcpListener
from ustack.tcp.tcb import State
from ustack.wire.ipv4 import ip_from_str

CHUNK = 64 * 1024
"""`payload_chunks` draws the stream in blocks of this size (part of its definition)."""
KERNEL_ADDR = "198.18.0.1"
MODES = (
    "server-sink",
    "server-source",
    "server-echo",
    "client-sink",
    "client-source",
    "client-echo",
)
_DONE_STATES = ("CLOSED", "TIME-WAIT")


def payload_chunks(seed: int, nbytes: int) -> Iterator[bytes]:
    """The source stream: `nbytes` seeded pseudo-random bytes, in blocks of CHUNK."""
    rng = random.Random(seed)
    left = nbytes
    while left > 0:
        block = rng.randbytes(CHUNK)
        yield block[:left] if left < CHUNK else block
        left -= CHUNK


def payload_sha256(seed: int, nbytes: int) -> str:
    h = hashlib.sha256()
    for block in payload_chunks(seed, nbytes):
        h.update(block)
    return h.hexdigest()


class PeerError(Exception):
    """The transfer failed; the message is the one-line report."""


class Peer:
    """The application: one connection, driven from `pump()` after every burst."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode: str = args.mode
        self.role, self.kind = self.mode.split("-")
        self.ctx = open_peer_context(args)
        self.tcp = self.ctx.stack.tcp
        self.listener: TcpListener | None = None
        self.conn: TcpConnection | None = None
        self.peer_ip = ip_from_str(args.host)
        self.rbuf = bytearray(256 * 1024)
        self.rview = memoryview(self.rbuf)
        self.sha_in = hashlib.sha256()
        self.sha_out = hashlib.sha256()
        self.bytes_in = 0
        self.bytes_out = 0
        self.source = payload_chunks(args.seed, args.bytes) if self.kind != "sink" else iter(())
        self.pending = memoryview(b"")  # bytes accepted from the source/echo but not yet sent
        self.echo_buf = bytearray()
        self.sent_all = False  # source exhausted or echo input at EOF and flushed
        self.closed = False
        self.start = 0.0
        self.established_at: float | None = None

    # -- driving ------------------------------------------------------------

    def run(self) -> dict[str, object]:
        ctx = self.ctx
        ctx.start()
        if self.role == "server":
            self.listener = self.tcp.listen(self.args.port)
        print(
            f"READY {self.mode} port {self.args.port} pid {os.getpid()} "
            f"offload {int(self.tcp.offload)} fault {self.fault_text()}",
            flush=True,
        )
        self.start = time.monotonic()
        if self.role == "client":
            self.conn = self.tcp.connect(self.peer_ip, self.args.port)
        deadline = self.start + self.args.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"timed out after {self.args.timeout:.0f} s: {self.progress()}")
            if ctx.wait_until(self.pump, min(left, 1.0)):
                break
        elapsed = time.monotonic() - self.start
        conn = self.conn
        assert conn is not None
        if self.mode == "client-echo" and (
            self.bytes_in != self.bytes_out or self.sha_in.digest() != self.sha_out.digest()
        ):
            raise PeerError(f"the echo differs from what was sent: {self.progress()}")
        assert conn.state in (State.CLOSED, State.TIME_WAIT)
        stats = ctx.stack.stats()
        return {
            "ok": True,
            "mode": self.mode,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "sha256_in": self.sha_in.hexdigest(),
            "sha256_out": self.sha_out.hexdigest(),
            "elapsed_s": round(elapsed, 4),
            "transfer_s": round(elapsed - (self.established_at or 0.0), 4),
            "state": str(conn.state),
            "error": conn.error,
            "conn": {k: v for k, v in conn.stats().items() if _jsonable(v)},
            "stats": {k: v for k, v in stats.items() if isinstance(v, int | float)},
            "offload": self.tcp.offload,
            "fault": self.fault_text(),
        }

    def fault_text(self) -> str:
        dev = self.ctx.device
        return str(dev.spec) if isinstance(dev, FaultDevice) else "none"

    def progress(self) -> str:
        conn = self.conn
        state = "no connection" if conn is None else f"{conn.state} {conn.stats()}"
        return f"in {self.bytes_in} out {self.bytes_out} {state}"

    def pump(self) -> bool:
        """Application work after a burst; True once the connection is over."""
        conn = self.conn
        if conn is None:
            assert self.listener is not None
            conn = self.listener.accept()
            if conn is None:
                return False
            self.conn = conn
            self.listener.close()  # one connection per run
        if conn.error is not None:
            # Data that arrived before a reset stays readable, but the run failed.
            code = conn.error
            raise PeerError(
                f"connection failed: {errno.errorcode.get(code, code)} "
                f"({os.strerror(code)}) in {conn.state}; {self.progress()}"
            )
        state = str(conn.state)
        if self.established_at is None and state not in ("SYN-SENT", "SYN-RECEIVED"):
            self.established_at = time.monotonic() - self.start
        if state in ("SYN-SENT", "SYN-RECEIVED"):
            return False
        self.read()
        self.write()
        if not self.closed and self.ready_to_close():
            conn.close()
            self.closed = True
        if self.closed:
            return str(conn.state) in _DONE_STATES
        return False

    def read(self) -> None:
        conn = self.conn
        assert conn is not None
        view = self.rview
        while True:
            if self.kind == "echo" and len(self.echo_buf) >= 1 << 20:
                return  # the echo backs up: stop reading, let the window close
            n = conn.recv_into(view)
            if not n:
                return
            chunk = view[:n]
            self.sha_in.update(chunk)
            self.bytes_in += n
            if self.kind == "echo" and self.role == "server":
                self.echo_buf += chunk

    def write(self) -> None:
        conn = self.conn
        assert conn is not None
        if self.sent_all or self.closed:
            return
        while True:
            if not self.pending:
                nxt = self.next_out()
                if nxt is None:
                    return
                self.pending = memoryview(nxt)
            n = conn.send(self.pending)
            if n:
                self.sha_out.update(self.pending[:n])
                self.bytes_out += n
                self.pending = self.pending[n:]
            if self.pending:
                return  # send buffer full

    def next_out(self) -> bytes | None:
        """The next block to send, or None (and `sent_all` once nothing more will come)."""
        conn = self.conn
        assert conn is not None
        if self.kind == "echo" and self.role == "server":
            if self.echo_buf:
                out = bytes(self.echo_buf)
                self.echo_buf.clear()
                return out
            if conn.eof:
                self.sent_all = True
            return None
        block = next(self.source, None)
        if block is None:
            self.sent_all = True
            if self.kind == "echo":
                conn.shutdown_write()  # client-echo: half-close, keep reading the echo
        return block

    def ready_to_close(self) -> bool:
        conn = self.conn
        assert conn is not None
        if self.kind == "sink":
            return conn.eof
        if self.kind == "source":
            return self.sent_all  # ustack closes first; the kernel reads to EOF
        if self.role == "server":  # echo: the kernel half-closed, the echo is all out
            return self.sent_all and not self.pending and conn.eof
        return conn.eof  # client-echo: all sent (half-closed earlier) and the echo read


def _jsonable(v: object) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def open_peer_context(args: argparse.Namespace) -> Context:
    return open_context(
        name=args.name,
        gateway=args.gateway,
        poll=args.poll,
        pcap=args.pcap,
        fault=args.fault,
        offload=args.offload,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="topology name (netns with the TAP)")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default=KERNEL_ADDR, help="the kernel's address (client modes)")
    p.add_argument("--gateway", default=None, help="router for off-link peers (198.18.0.1)")
    p.add_argument("--bytes", type=int, default=0, help="bytes a source sends")
    p.add_argument("--seed", type=int, default=1, help="seed of the source stream")
    p.add_argument("--fault", default=None, help="FaultSpec text for a FaultDevice")
    p.add_argument("--poll", default="hybrid", choices=("busy", "interrupt", "hybrid"))
    p.add_argument("--offload", action="store_true", help="vnet headers: checksum offload, TSO")
    p.add_argument("--pcap", default=None, help="record the TAP's frames to this file")
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many s")
    args = p.parse_args(argv)
    if args.bytes < 0:
        p.error("--bytes cannot be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peer: Peer | None = None
    try:
        peer = Peer(args)
        report = peer.run()
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if peer is not None:
            close_context(peer.ctx)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
