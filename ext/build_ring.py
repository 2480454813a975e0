"""cffi build script (API mode) for ustack._ring, the TAP poll-mode ring."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cdef import make_ffi

ffibuilder = make_ffi("ustack._ring", "ring.h", "ring.c", "-O2")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
