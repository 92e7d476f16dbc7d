import os

import setuptools
from setuptools import Extension, setup

# The license is an SPDX expression (PEP 639), which setuptools understands
# from 77 on; an older one, reached by building without isolation, fails at
# metadata validation with a message that does not say why.
if int(setuptools.__version__.split(".")[0]) < 77:
    raise SystemExit(
        "pyamp_fds needs setuptools>=77 to build (found %s): upgrade it, or let "
        "pip build with isolation" % setuptools.__version__
    )

# pyamp_fds._boxes: AMP boxes as Python objects, to and from the bytes of the
# C core (csrc/python/boxes.c, over csrc/ampbox.c), against the stable ABI.
# PYAMP_FDS_CFLAGS and PYAMP_FDS_LDFLAGS reach it as they reach the cffi
# module (make sanitize builds both with the sanitizers).
boxes = Extension(
    "pyamp_fds._boxes",
    sources=["csrc/python/boxes.c", "csrc/ampbox.c"],
    include_dirs=["csrc"],
    py_limited_api=True,
    extra_compile_args=["-std=gnu99", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"]
    + os.environ.get("PYAMP_FDS_CFLAGS", "").split(),
    extra_link_args=os.environ.get("PYAMP_FDS_LDFLAGS", "").split(),
)

setup(
    cffi_modules=["csrc/build_native.py:ffi"],
    ext_modules=[boxes],
    # cffi builds the extension against the stable ABI (_native.abi3.so): one
    # wheel serves every CPython from the oldest the project supports.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
