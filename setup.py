"""Build hook: setuptools needs this file only to compile the cffi binding (see native/build_snp.py)."""

from setuptools import setup

setup(cffi_modules=["native/build_snp.py:ffibuilder"])
