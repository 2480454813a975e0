"""Where a ustack server's CPU goes per request, by layer: py-spy on a live kv or echo server.

Runs one `ustack bench` case (kv: 90% get / 10% set of 1 KB values, or
64 B echo; 16 connections, depth 1, closed loop) against a server, and
while the load runs samples the server process with py-spy (`record
--format raw`).  py-spy stops the process briefly for each sample (200
a second by default); without stopping it (`--nonblocking`) it reads
stacks while they change, and about a fifth of the samples landed on
the caller of a short call instead of the callee, so the tool pays the
stops.  The requests/s and CPU figures come from the same window and
include their cost: compare requests/s with an unprofiled `ustack bench`
run.  Each sample is charged to the layer of its innermost Python frame
(time inside the C ring is charged to the `dev` frame that called it):

    dev       ustack/dev/        the ring and its C calls (TAP reads, writes, epoll)
    wire      ustack/wire/       header parse/emit, checksums
    stack     ustack/stack/      Ethernet/ARP/IPv4 input and output, TCP demux and output
    tcp       ustack/tcp/        the control block, buffers, RTT, congestion control
    loop      ustack/loop.py     the Context's polling
    aio       ustack/aio/        ustack's selector and transports
    app       ustack/apps/       the kv/echo protocol code (the same on every stack)
    asyncio   asyncio/ selectors the standard event loop around it
    other     anything else (the bench's stats thread, the interpreter's own)

py-spy follows Python frames only, so for a kernel target (uvloop in C,
the kernel's TCP inside system calls) everything lands on the innermost
Python frame, the app's: there the table only says how much is Python.

Per layer: its share of the samples and the CPU microseconds per request
that share stands for (server user + system CPU over the window from
/proc, divided by the replies).  py-spy sees only what runs on the CPU
(idle samples are left out), so the shares split CPU time.

    .venv/bin/python tools/profile_requests.py [--case kv|echo]
        [--targets ustack-hybrid,kernel-uvloop] [--seconds 10] [--rate 200]
        [--placement cross-cpu|same-cpu] [--json FILE] [--folded DIR]

Needs root and py-spy (the bench extra installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine_info, progress

from ustack.bench.scenarios import (
    PLACEMENTS,
    Bench,
    Config,
    build_cases,
    client_sysctls,
    worker_specs,
)
from ustack.bench.targets import BY_NAME, Launch, Server, Workers
from ustack.topology import Topology

TOP = 12  # functions listed per target

LAYERS = ("dev", "wire", "stack", "tcp", "loop", "aio", "app", "asyncio", "other")
_BY_PATH = (
    ("/ustack/dev/", "dev"),
    ("/ustack/wire/", "wire"),
    ("/ustack/stack/", "stack"),
    ("/ustack/tcp/", "tcp"),
    ("/ustack/loop.py", "loop"),
    ("/ustack/aio/", "aio"),
    ("/ustack/apps/", "app"),
    ("/asyncio/", "asyncio"),
    ("/selectors.py", "asyncio"),
)


def layer_of(frame: str) -> str | None:
    """The layer of one py-spy frame, `function (path:line)`; None when it names none."""
    for part, layer in _BY_PATH:
        if part in frame:
            return layer
    return None


def split_stacks(folded: str) -> tuple[Counter[str], Counter[str]]:
    """Samples per layer, and per function, from py-spy's raw (folded) output.

    Lines are `f1;f2;...;fN count`.  A sample goes to the layer of its
    innermost frame that belongs to one, and to that frame's function
    (`name (file)`, file relative to its package); a stack with none (the
    interpreter starting, a helper thread) is `other`.
    """
    per: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        layer, where = "other", "other"
        for frame in reversed(stack.split(";")):
            found = layer_of(frame)
            if found is not None:
                layer, where = found, _function(frame)
                break
        per[layer] += int(count)
        functions[where] += int(count)
    return per, functions


def _function(frame: str) -> str:
    """'flush (/x/ustack/stack/tcp.py:123)' -> 'flush (ustack/stack/tcp.py)'."""
    name, _, loc = frame.partition(" (")
    path = loc.rsplit(":", 1)[0]
    for root in ("/ustack/", "/asyncio/", "/selectors.py"):
        i = path.rfind(root)
        if i >= 0:
            path = path[i + 1 :]
            break
    return f"{name} ({path})"


def profile_one(
    b: Bench, case: Any, target_name: str, pyspy: str, rate: int, workdir: str
) -> dict[str, Any]:
    """One run with py-spy attached over the timed window; figures per layer."""
    cfg = b.cfg
    target = BY_NAME[target_name]
    port = b.next_port()
    addr = b.topo.ustack_addr if target.side == "ustack" else b.topo.kernel_addr
    stats = os.path.join(workdir, f"stats-{port}.json")
    launch = Launch(case.app, b.topo.name, b.topo.kernel_ns, addr, port, stats)
    folded = os.path.join(workdir, f"{target_name}.folded")
    server = Server(target, launch, cfg.server_cpu, b.topo.client_ns, stats)
    workers: Workers | None = None
    try:
        server.wait_ready()
        workers = Workers(worker_specs(b, case, target, port, cfg.client_cpu), cfg.client_cpu)
        workers.wait_ready(timeout=60.0)
        t_timed = time.monotonic_ns() + int(cfg.warmup * 1e9)
        t_end = t_timed + int(cfg.seconds * 1e9)
        workers.go(t_timed, t_end)
        time.sleep(max(0.0, (t_timed - time.monotonic_ns()) / 1e9))
        s0 = server.sample()
        # py-spy runs on the load generator's CPU, never on the server's.
        spy = subprocess.Popen(
            [
                "taskset", "-c", str(cfg.client_cpu), pyspy, "record", "--pid",
                str(server.proc.pid), "--subprocesses", "--full-filenames", "--rate", str(rate),
                "--format", "raw",
                "--duration", str(max(1, int(cfg.seconds))), "--output", folded,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        time.sleep(max(0.0, (t_end - time.monotonic_ns()) / 1e9))
        s1 = server.sample()
        docs = workers.results(timeout=60.0)
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.strip().splitlines()[-1:]}")
    finally:
        if workers is not None:
            workers.end()
        server.stop()
    window = s1.minus(s0)
    ops = sum(int(d["ops"]) for d in docs)
    with open(folded) as f:
        per, functions = split_stacks(f.read())
    samples = sum(per.values())
    cpu_us_per_req = (window.utime_s + window.stime_s) * 1e6 / ops if ops else None
    layers = {}
    for layer in LAYERS:
        share = per[layer] / samples if samples else 0.0
        layers[layer] = {
            "samples": per[layer],
            "share": share,
            "us_per_req": None if cpu_us_per_req is None else share * cpu_us_per_req,
        }
    return {
        "target": target_name,
        "case": case.name,
        "ops": ops,
        "ops_per_s": ops / window.t if window.t else 0.0,
        "cpu_us_per_req": cpu_us_per_req,
        "user_s": window.utime_s,
        "sys_s": window.stime_s,
        "samples": samples,
        "layers": layers,
        "top": [
            {
                "function": fn,
                "share": n / samples,
                "us_per_req": None if cpu_us_per_req is None else n / samples * cpu_us_per_req,
            }
            for fn, n in functions.most_common(TOP)
        ],
    }


def table(results: Sequence[dict[str, Any]]) -> str:
    head = ["layer", *(r["target"] for r in results)]
    rows = [["requests/s", *(f"{r['ops_per_s']:,.0f}" for r in results)]]
    cpu = []
    for r in results:
        total = r["user_s"] + r["sys_s"]
        us = r["cpu_us_per_req"]
        cpu.append("-" if us is None or not total else f"{us:.1f} ({r['user_s'] / total:.0%} usr)")
    rows.append(["CPU us/req (usr+sys)", *cpu])
    for layer in LAYERS:
        cells = []
        for r in results:
            d = r["layers"][layer]
            us = "-" if d["us_per_req"] is None else f"{d['us_per_req']:.1f} us"
            cells.append(f"{d['share']:5.1%}  {us}")
        rows.append([layer, *cells])
    rows.append(["py-spy samples", *(str(r["samples"]) for r in results)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        out.append(
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="profile_requests.py", description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["kv", "echo"], default="kv")
    ap.add_argument("--targets", default="ustack-hybrid,kernel-uvloop")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    ap.add_argument("--placement", choices=sorted(PLACEMENTS), default="cross-cpu")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument(
        "--folded", metavar="DIR", help="keep py-spy's folded stacks here (for flame graphs)"
    )
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in BY_NAME]
    if unknown:
        print(f"profile_requests: error: unknown target(s) {', '.join(unknown)}", file=sys.stderr)
        return 1
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        print(
            "profile_requests: error: py-spy is not installed (pip install py-spy)", file=sys.stderr
        )
        return 1
    if os.geteuid() != 0:
        print("profile_requests: error: needs root (namespaces, TAP, ptrace)", file=sys.stderr)
        return 1
    server_cpu, client_cpu = PLACEMENTS[args.placement]
    cfg = Config(
        placement=args.placement,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        seconds=args.seconds,
        warmup=args.warmup,
        scenarios=["kv" if args.case == "kv" else "echo-rate"],
        targets=targets,
        connections=args.connections,
        depths=[1],
        calibrate=False,
    )
    case = build_cases(replace(cfg))[0]
    topo = Topology(f"ustpr{os.getpid()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="ustack-profile-") as workdir:
        topo.up()
        try:
            client_sysctls(topo)
            b = Bench(topo, cfg, workdir, progress)
            for t in targets:
                progress(f"profiling {case.name} on {t} for {cfg.seconds:g} s")
                results.append(profile_one(b, case, t, pyspy, args.rate, workdir))
                if args.folded:
                    os.makedirs(args.folded, exist_ok=True)
                    shutil.copy(os.path.join(workdir, f"{t}.folded"), args.folded)
        finally:
            topo.down()
    m = machine_info()
    print(
        f"{case.name}, {args.placement} (server CPU {server_cpu}, load generator and py-spy"
        f" CPU {client_cpu}), {cfg.seconds:g} s, {m['cpus']} CPUs, Python {m['python']}\n"
    )
    print(table(results))
    for r in results:
        if r["layers"]["app"]["share"] > 0.99:
            continue  # a kernel target: all in the app's frames (see above)
        print(f"\n{r['target']}: innermost functions with the most samples\n")
        for t in r["top"]:
            us = "" if t["us_per_req"] is None else f"  {t['us_per_req']:5.1f} us"
            print(f"  {t['share']:6.1%}{us}  {t['function']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "case": case.name, "results": results}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
