"""tools/profile_requests.py: py-spy's folded stacks charged to the right layer and function."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).resolve().parent.parent / "tools" / "profile_requests.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("profile_requests", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


prof = _load()

ROOT = "/work/x/ustack"
LIB = "/usr/lib/python3.11"
FOLDED = "\n".join(
    [
        # The innermost ustack frame decides, however deep the stack.
        f"<module> ({ROOT}/__main__.py:3);run ({LIB}/asyncio/base_events.py:600);"
        f"select ({ROOT}/aio/selector.py:80);poll_once ({ROOT}/loop.py:130);"
        f"process ({ROOT}/stack/stack.py:200);input ({ROOT}/stack/tcp.py:380);"
        f"on_segment ({ROOT}/tcp/tcb.py:1500) 7",
        f"run ({LIB}/asyncio/base_events.py:600);rx_burst ({ROOT}/dev/ring.py:90) 3",
        f"run ({LIB}/asyncio/base_events.py:600);data_received ({ROOT}/apps/kv.py:400);"
        f"write ({ROOT}/aio/transports.py:200) 2",
        f"_run_once ({LIB}/asyncio/base_events.py:1900) 4",
        f"select ({LIB}/selectors.py:468) 1",
        "thread_main (threading.py:1000) 2",  # nothing of ustack or asyncio: other
        "garbage line",
        "",
    ]
)


def test_split_stacks_charges_the_innermost_known_frame():
    per, functions = prof.split_stacks(FOLDED)
    assert dict(per) == {"tcp": 7, "dev": 3, "aio": 2, "asyncio": 5, "other": 2}
    assert functions["on_segment (ustack/tcp/tcb.py)"] == 7
    assert functions["rx_burst (ustack/dev/ring.py)"] == 3
    assert functions["write (ustack/aio/transports.py)"] == 2
    assert functions["_run_once (asyncio/base_events.py)"] == 4
    assert functions["select (selectors.py)"] == 1
    assert functions["other"] == 2
    assert sum(functions.values()) == sum(per.values()) == 19


def test_every_layer_has_a_row():
    assert set(prof.LAYERS) == {layer for _, layer in prof._BY_PATH} | {"other"}
