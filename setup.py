"""Build hook: setuptools compiles the C layer in ext/ through cffi."""

from setuptools import setup

setup(cffi_modules=["ext/build_ring.py:ffibuilder", "ext/build_csum.py:ffibuilder"])
