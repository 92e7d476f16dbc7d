# -*- test-case-name: tests -*-
"""
pyamp_fds: fast, safe file descriptor passing over Twisted AMP on UNIX sockets.
"""

from pyamp_fds.codec import BoxDecoder, encode_box, encode_boxes
from pyamp_fds.errors import (
    BoxTooLarge,
    DescriptorsTruncated,
    FramingError,
    KeyTooLong,
)
from pyamp_fds.fdio import (
    MAX_FDS_PER_MESSAGE,
    recv_into_with_fds,
    recv_with_fds,
    send_with_fds,
)

__version__ = "0.1.0"

__all__ = [
    "MAX_FDS_PER_MESSAGE",
    "BoxDecoder",
    "BoxTooLarge",
    "DescriptorsTruncated",
    "FramingError",
    "KeyTooLong",
    "encode_box",
    "encode_boxes",
    "recv_into_with_fds",
    "recv_with_fds",
    "send_with_fds",
]
