"""Helpers for TCP tests with the Linux kernel as the peer of a ustack process.

- `PeerProcess`: runs tests/tcp_peer.py (one ustack TCP endpoint) in its own
  interpreter, waits for its READY line and parses its final JSON report.
- `kernel_client` / `kernel_listener`: kernel TCP sockets made inside the
  topology's client namespace (198.18.0.1, the kernel end of the TAP).
- `kernel_exchange`: drives one kernel socket through a whole transfer
  (send a stream, echo, or only read) with a selector, half-closing when its
  output is done, and hashes what it received.
- `route_kernel_ns` and `impair`: the kernel peer in the baseline namespace
  N-k, routed through N, and nftables rules in N that drop TCP segments at
  random in both directions (the machine's kernel has no netem).
- `narrow_kernel_link` and `kernel_server`: a veth of smaller MTU between N
  and N-k, so that N's kernel answers ustack's DF datagrams with ICMP
  fragmentation needed (RFC 1191), and a kernel listener in N-k.

TCP_PEER_SCRIPT in the environment replaces tests/tcp_peer.py (for a
wrapper that traces the connection while debugging).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from tests.kernel import ns_socket
from tests.tcp_peer import payload_chunks, payload_sha256
from ustack import netns
from ustack.topology import TAP_IFNAME, VETH_CLIENT, VETH_KERNEL, Topology

__all__ = [
    "TO_KERNEL",
    "TO_USTACK",
    "KernelResult",
    "PeerProcess",
    "impair",
    "kernel_accept",
    "kernel_client",
    "kernel_exchange",
    "kernel_listener",
    "kernel_server",
    "narrow_kernel_link",
    "payload_chunks",
    "payload_sha256",
    "route_kernel_ns",
    "soak_bytes",
]

GSO_MAX_SEGS_DEFAULT = 65535
"""Linux's GSO_MAX_SEGS, what a new device starts with."""
TO_USTACK = "kernel-to-ustack"
TO_KERNEL = "ustack-to-kernel"
PEER_SCRIPT = Path(os.environ.get("TCP_PEER_SCRIPT", Path(__file__).with_name("tcp_peer.py")))
REPO = PEER_SCRIPT.parent.parent


class PeerProcess:
    """``with PeerProcess(topo, "server-sink", port=5001) as peer: ...; report = peer.finish()``.

    Extra keyword arguments become options of tcp_peer.py (``bytes=N`` ->
    ``--bytes N``, ``offload=True`` -> ``--offload``).  Leaving the block
    kills the process if it still runs.
    """

    def __init__(
        self,
        topo: Topology,
        mode: str,
        *,
        port: int,
        ready_timeout: float = 20.0,
        **options: object,
    ) -> None:
        self.argv = [
            sys.executable,
            str(PEER_SCRIPT),
            "--name",
            topo.name,
            "--mode",
            mode,
            "--port",
            str(port),
        ]
        for key, value in options.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            self.argv += [flag] if value is True else [flag, str(value)]
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""
        self.stdout = ""
        self.stderr = ""
        self.returncode: int | None = None

    def __enter__(self) -> PeerProcess:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                if line.startswith("READY"):
                    self.ready_line = line.strip()
                    return self
                if not line:
                    break
        self.kill()
        raise AssertionError(f"tcp_peer did not become ready: {self.stdout}{self.stderr}")

    def wait(self, timeout: float) -> int:
        """Wait for the process to end; returns its status (kills it after `timeout`)."""
        assert self.proc is not None
        if self.returncode is None:
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"tcp_peer still running after {timeout:.0f} s: {self.stderr}"
                ) from None
            self.stdout += out
            self.stderr += err
            self.returncode = self.proc.returncode
        return self.returncode

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for a successful end and return the JSON report."""
        rc = self.wait(timeout)
        if rc != 0:
            raise AssertionError(f"tcp_peer failed ({rc}): {self.stderr.strip()}")
        lines = [ln for ln in self.stdout.splitlines() if ln.startswith("{")]
        assert lines, f"tcp_peer printed no report: {self.stdout!r}"
        report: dict[str, Any] = json.loads(lines[-1])
        return report

    def kill(self) -> None:
        proc = self.proc
        if proc is None or self.returncode is not None:
            return
        proc.kill()  # our own child, by its Popen handle
        out, err = proc.communicate()
        self.stdout += out
        self.stderr += err
        self.returncode = proc.returncode

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- the kernel side ---------------------------------------------------------


def kernel_client(
    topo: Topology, port: int, timeout: float = 10.0, *, ns: str | None = None
) -> socket.socket:
    """A kernel TCP socket in namespace `ns` (the client one by default), connected to ustack."""
    sock = ns_socket(ns or topo.client_ns, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((topo.ustack_addr, port))
    except BaseException:
        sock.close()
        raise
    return sock


def kernel_listener(topo: Topology, port: int) -> socket.socket:
    """A kernel TCP listener on the client namespace's TAP address (198.18.0.1)."""
    sock = ns_socket(topo.client_ns, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((topo.client_addr, port))
    sock.listen(4)
    return sock


def kernel_accept(listener: socket.socket, timeout: float) -> socket.socket:
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    return conn


@dataclass
class KernelResult:
    """What the kernel socket saw during `kernel_exchange`."""

    bytes_in: int = 0
    bytes_out: int = 0
    sha_in: Any = field(default_factory=hashlib.sha256)
    sha_out: Any = field(default_factory=hashlib.sha256)
    eof_after_s: float | None = None
    shut_after_s: float | None = None
    elapsed_s: float = 0.0

    @property
    def sha256_in(self) -> str:
        return str(self.sha_in.hexdigest())

    @property
    def sha256_out(self) -> str:
        return str(self.sha_out.hexdigest())


def kernel_exchange(
    sock: socket.socket,
    send: Iterable[bytes] | None = None,
    *,
    echo: bool = False,
    timeout: float = 60.0,
) -> KernelResult:
    """Run one kernel socket until the peer's EOF and our own half-close.

    `send` is a stream to write; `echo` writes back whatever arrives.  The
    write side is shut (FIN) as soon as the output is done: the stream
    exhausted, or for an echo the peer's EOF seen and everything echoed.
    With nothing to send at all, the FIN goes only after the peer's EOF,
    so the peer closes first.  The socket is closed at the end.  Raises
    AssertionError after `timeout` seconds.
    """
    res = KernelResult()
    start = time.monotonic()
    sock.setblocking(False)
    source: Iterator[bytes] | None = iter(send) if send is not None else None
    pending = memoryview(b"")
    echo_buf = bytearray()
    eof = False
    shut = False
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    try:
        while not (eof and shut):
            now = time.monotonic()
            if now - start > timeout:
                raise AssertionError(
                    f"kernel side timed out after {timeout:.0f} s: in {res.bytes_in} "
                    f"out {res.bytes_out} eof {eof} shut {shut}"
                )
            # Output: fill `pending` and write until the socket takes no more.
            while not shut:
                if not pending:
                    if source is not None:
                        nxt = next(source, None)
                        if nxt is not None:
                            pending = memoryview(nxt)
                        else:
                            source = None
                    elif echo and echo_buf:
                        pending = memoryview(bytes(echo_buf))
                        echo_buf.clear()
                if not pending:
                    break
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    break
                res.sha_out.update(pending[:n])
                res.bytes_out += n
                pending = pending[n:]
                if pending:
                    break
            if not shut:
                out_done = not pending and source is None and not echo_buf
                if echo:
                    out_done = out_done and eof
                elif send is None:
                    out_done = eof
                if out_done:
                    sock.shutdown(socket.SHUT_WR)
                    shut = True
                    res.shut_after_s = time.monotonic() - start
            want = selectors.EVENT_READ if not eof else 0
            if pending and not shut:
                want |= selectors.EVENT_WRITE
            if not want:
                continue
            # Echo backs up: stop reading while a lot waits to go out.
            if echo and len(echo_buf) + len(pending) > 4 << 20:
                want &= ~selectors.EVENT_READ
            sel.modify(sock, want)
            events = sel.select(0.5)
            if not any(mask & selectors.EVENT_READ for _, mask in events):
                continue
            while True:
                try:
                    n = sock.recv_into(view)
                except BlockingIOError:
                    break
                if n == 0:
                    eof = True
                    res.eof_after_s = time.monotonic() - start
                    break
                chunk = view[:n]
                res.sha_in.update(chunk)
                res.bytes_in += n
                if echo:
                    echo_buf += chunk
                    if len(echo_buf) > 4 << 20:
                        break
    finally:
        sel.close()
        sock.close()
    res.elapsed_s = time.monotonic() - start
    return res


# -- a routed kernel peer and impairment ------------------------------------------


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10, check=True)


def route_kernel_ns(topo: Topology) -> None:
    """Make the kernel baseline namespace (N-k, 198.19.0.2) reach ustack through N.

    N forwards between its veth and the TAP; N-k gets a route to the TAP's
    subnet via 198.18.0.1's namespace, and ustack is given 198.18.0.1 as its
    gateway (tcp_peer.py --gateway).  Everything stays inside the
    topology's two namespaces.
    """
    _ip("netns", "exec", topo.client_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    _ip("-n", topo.kernel_ns, "route", "replace", "198.18.0.0/24", "via", topo.veth_client_addr)


def set_gso_max_segs(ns: str, ifname: str, segs: int) -> None:
    """Bound the segments per GSO packet the kernel builds for `ifname` (new sockets)."""
    _ip("-n", ns, "link", "set", "dev", ifname, "gso_max_segs", str(segs))


def nft_ruleset(permille: int) -> str:
    """An `inet impair` table that drops forwarded TCP at random, `permille`/1000 each way.

    The hook is prerouting in N: what arrives from the veth (the kernel in
    N-k sending to ustack) and from the TAP (ustack sending to the kernel).
    Both senders' transmissions have succeeded by then, so a drop is a loss
    on the wire.  (A drop in the output hook of the sending kernel would not
    be: the kernel's TCP sees the local error and sends the segment again
    as if it had never left, so the receiver never sees a hole.)
    """
    if not 0 < permille < 1000:
        raise ValueError(f"drop rate must be 1..999 per mille, got {permille}")
    drop = f"meta l4proto tcp numgen random mod 1000 < {permille} counter drop"
    seen = "meta l4proto tcp counter"
    return (
        "table inet impair {\n"
        "  chain pre {\n"
        "    type filter hook prerouting priority 0; policy accept;\n"
        f'    iifname "{VETH_CLIENT}" {seen} comment "seen-{TO_USTACK}"\n'
        f'    iifname "{TAP_IFNAME}" {seen} comment "seen-{TO_KERNEL}"\n'
        f'    iifname "{VETH_CLIENT}" {drop} comment "{TO_USTACK}"\n'
        f'    iifname "{TAP_IFNAME}" {drop} comment "{TO_KERNEL}"\n'
        "  }\n"
        "}\n"
    )


def nft_drops(ns: str) -> dict[str, int]:
    """Packet counters of the `inet impair` table in `ns`, by rule comment.

    TO_USTACK and TO_KERNEL: packets dropped each way; ``seen-`` + either:
    TCP packets that reached the rules that way.
    """
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "impair"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    out: dict[str, int] = {}
    for item in json.loads(res.stdout)["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                out[rule["comment"]] = int(expr["counter"]["packets"])
    return out


@contextmanager
def impair(topo: Topology, permille: int, *, per_segment: bool = True) -> Iterator[dict[str, int]]:
    """Drop TCP at random between the kernel in N-k and ustack while the block runs.

    Needs `route_kernel_ns`.  Netfilter sees a packet before GSO cuts it
    into segments, so a dropped packet may be a whole 64 KB burst.  With
    `per_segment` the kernel's veth gets gso_max_segs 1 for the block: its
    TCP then builds one segment per packet and the rate is per segment, as
    on a lossy wire (ustack without offloads sends single segments anyway).
    Yields a dict that is filled, on leaving the block, with the packets
    dropped each way (keys TO_USTACK and TO_KERNEL) and seen each way
    (``seen-`` + the same).
    """
    ns = topo.client_ns
    if per_segment:
        set_gso_max_segs(topo.kernel_ns, VETH_KERNEL, 1)
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=nft_ruleset(permille),
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    drops: dict[str, int] = {}
    try:
        yield drops
    finally:
        drops.update(nft_drops(ns))
        _ip("netns", "exec", ns, "nft", "delete", "table", "inet", "impair")
        if per_segment:
            set_gso_max_segs(topo.kernel_ns, VETH_KERNEL, GSO_MAX_SEGS_DEFAULT)


def soak_bytes(default: int) -> int:
    """Bytes per transfer: `default`, or SOAK_BYTES from the environment."""
    return int(os.environ.get("SOAK_BYTES", default))


# -- a narrow hop between N and N-k (path MTU discovery) --------------------------


def narrow_kernel_link(topo: Topology, mtu: int, *, advmss: int) -> None:
    """Give both ends of the veth between N and N-k an MTU of `mtu`: a narrow hop.

    Needs `route_kernel_ns` first (its route in N-k is replaced here).  N's
    kernel then forwards ustack's datagrams larger than `mtu` only without
    DF; with DF it drops them and answers ICMP fragmentation needed, next-hop
    MTU `mtu` (RFC 1191; Linux's ip_forward).  The kernel in N-k would derive
    its MSS from its own narrow link and spare ustack the trouble, so its
    route to ustack's subnet gets `advmss`: it announces the MSS of a wider
    link, as a server on a LAN wider than a tunnel further along does.  ICMP
    rate limiting in N is switched off (net.ipv4.icmp_ratelimit = 0;
    Linux exempts fragmentation needed from it anyway, icmpv4_mask_allow).
    """
    for ns, ifname in ((topo.client_ns, VETH_CLIENT), (topo.kernel_ns, VETH_KERNEL)):
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=mtu)
    with IPRoute(netns=topo.kernel_ns) as ipr:
        ipr.route(
            "replace",
            dst="198.18.0.0/24",
            gateway=topo.veth_client_addr,
            oif=ipr.link_lookup(ifname=VETH_KERNEL)[0],
            metrics={"advmss": advmss},
        )
    with netns.inside(topo.client_ns), open("/proc/sys/net/ipv4/icmp_ratelimit", "w") as f:
        f.write("0")


def kernel_server(topo: Topology, port: int) -> socket.socket:
    """A kernel TCP listener on the baseline namespace's address (198.19.0.2)."""
    sock = ns_socket(topo.kernel_ns, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((topo.kernel_addr, port))
    sock.listen(4)
    return sock
