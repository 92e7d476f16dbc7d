from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffi"])
