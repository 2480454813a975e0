"""cffi build script (API mode) for ustack._csum, the Internet checksum."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cdef import make_ffi

ffibuilder = make_ffi("ustack._csum", "checksum.h", "checksum.c", "-O3")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
