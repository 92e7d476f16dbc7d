# -*- test-case-name: tests -*-
"""
pyamp_fds: fast, safe file descriptor passing over Twisted AMP on UNIX sockets.

Change two imports and keep the rest of a Twisted AMP program as it is::

    from pyamp_fds import AMP, Descriptor
    from pyamp_fds.endpoints import UNIXServerEndpoint, UNIXClientEndpoint
"""

from pyamp_fds.codec import BoxDecoder, encode_box, encode_boxes
from pyamp_fds.errors import (
    BoxTooLarge,
    DescriptorBudgetExhausted,
    DescriptorListTooLong,
    DescriptorProtocolError,
    DescriptorsTruncated,
    DescriptorsUnsupported,
    FramingError,
    InvalidDescriptorOrdinal,
    KeyTooLong,
    ReceivedDescriptorListTooLong,
    TooManyUnclaimedDescriptors,
    UnclaimedTooLong,
    UnknownDescriptor,
)
from pyamp_fds.fdio import (
    MAX_FDS_PER_MESSAGE,
    recv_into_with_fds,
    recv_with_fds,
    send_with_fds,
)
from pyamp_fds.arguments import Descriptor, DescriptorList
from pyamp_fds.interfaces import IBatchingTransport, IFileDescriptorsReceiver
from pyamp_fds.outgoing import Ownership
from pyamp_fds.protocol import AMP, BinaryBoxProtocol

__version__ = "0.1.0"

__all__ = [
    "AMP",
    "BinaryBoxProtocol",
    "Descriptor",
    "DescriptorList",
    "IBatchingTransport",
    "IFileDescriptorsReceiver",
    "Ownership",
    "MAX_FDS_PER_MESSAGE",
    "BoxDecoder",
    "BoxTooLarge",
    "DescriptorBudgetExhausted",
    "DescriptorListTooLong",
    "DescriptorProtocolError",
    "DescriptorsTruncated",
    "DescriptorsUnsupported",
    "FramingError",
    "InvalidDescriptorOrdinal",
    "KeyTooLong",
    "ReceivedDescriptorListTooLong",
    "UnclaimedTooLong",
    "TooManyUnclaimedDescriptors",
    "UnknownDescriptor",
    "encode_box",
    "encode_boxes",
    "recv_into_with_fds",
    "recv_with_fds",
    "send_with_fds",
]
