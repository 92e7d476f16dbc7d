"""
Builds C{pyamp_fds._native}: the C in this folder, in cffi's API mode.

Each concern has a header, its C, and a declaration-only C{.cdef} beside them.
This script never imports the package, so it runs before the package exists.
"""

import glob
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CONCERNS = ["fdio", "ampbox"]


def _read(name):
    with open(os.path.join(HERE, name)) as f:
        return f.read()


ffi = FFI()
for concern in CONCERNS:
    ffi.cdef(_read(concern + ".cdef"))

ffi.set_source(
    "pyamp_fds._native",
    "\n".join('#include "%s.h"' % concern for concern in CONCERNS),
    sources=[os.path.relpath(p) for p in sorted(glob.glob(os.path.join(HERE, "*.c")))],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-std=gnu99", "-O2", "-Wall", "-Wextra"]
    + os.environ.get("PYAMP_FDS_CFLAGS", "").split(),
    extra_link_args=os.environ.get("PYAMP_FDS_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
