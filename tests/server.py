"""Run `ustack serve ...` as a child process for a test and read its counters."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import time
from types import TracebackType

from ustack.topology import Topology

_COUNTER = re.compile(r"^\s{4}(\S+)\s+(-?[\d.]+)$")


class ServerProcess:
    """`with ServerProcess(topo, "udp-echo") as srv:`; srv.counters after exit."""

    def __init__(self, topo: Topology, app: str, *args: str, ready_timeout: float = 20) -> None:
        self.argv = [sys.executable, "-m", "ustack", "serve", app, "--name", topo.name, *args]
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""
        self.output = ""
        self.counters: dict[str, float] = {}
        self.returncode: int | None = None

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                if "ready" in line:
                    self.ready_line = line
                    return self
                if not line:
                    break
        self.stop()
        raise AssertionError(f"server did not start: {self.output}")

    def stop(self) -> None:
        if self.proc is None or self.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.returncode = self.proc.returncode
        self.output = out + err
        for line in out.splitlines():
            m = _COUNTER.match(line)
            if m:
                self.counters[m.group(1)] = float(m.group(2))

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def counter(self, name: str) -> int:
        return int(self.counters.get(name, 0))
