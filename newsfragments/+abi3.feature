The wheel is tagged ``cp310-abi3`` and repaired as a manylinux wheel by auditwheel (``make wheel``): one wheel serves every supported CPython.
