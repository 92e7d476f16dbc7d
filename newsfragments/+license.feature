The distributions ship the MIT license text (``License-File`` in the metadata) and ``py.typed``.
