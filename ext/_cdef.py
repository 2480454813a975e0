"""Shared by the cffi build scripts.

The declarations cffi parses are the block of a header between the cdef
markers, so header and binding cannot drift apart.
"""

import os
from pathlib import Path

from cffi import FFI

EXT_DIR = Path(__file__).resolve().parent


def cdef_block(header: str) -> str:
    text = (EXT_DIR / header).read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start : text.index("/* cdef-end */")]


def make_ffi(module: str, header: str, source: str, opt: str) -> FFI:
    # setuptools wants sources relative to the project root when it can.
    src = os.path.relpath(EXT_DIR / source)
    ffi = FFI()
    ffi.cdef(cdef_block(header))
    ffi.set_source(
        module,
        f'#include "{header}"',
        sources=[src],
        include_dirs=[os.path.relpath(EXT_DIR)],
        extra_compile_args=[opt, "-Wall", "-Wextra", "-Wno-unused-parameter"],
    )
    return ffi
