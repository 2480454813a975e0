"""Small helpers shared by the benchmark scripts in tools/."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def progress(msg: str) -> None:
    """A progress line on stderr, so that long runs never look hung."""
    print(msg, file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] (for argparse)."""
    return [int(x) for x in text.split(",") if x.strip()]


def machine_info() -> dict[str, Any]:
    """What a reader needs to know about the machine a figure came from."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
