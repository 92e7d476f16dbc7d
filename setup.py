import setuptools
from setuptools import setup

# The license is an SPDX expression (PEP 639), which setuptools understands
# from 77 on; an older one, reached by building without isolation, fails at
# metadata validation with a message that does not say why.
if int(setuptools.__version__.split(".")[0]) < 77:
    raise SystemExit(
        "pyamp_fds needs setuptools>=77 to build (found %s): upgrade it, or let "
        "pip build with isolation" % setuptools.__version__
    )

setup(
    cffi_modules=["csrc/build_native.py:ffi"],
    # cffi builds the extension against the stable ABI (_native.abi3.so): one
    # wheel serves every CPython from the oldest the project supports.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
