# -*- test-case-name: tests.test_interfaces -*-
"""
What pyamp_fds's protocols need from a transport that sends descriptors in
batches, and what a protocol offers to receive many descriptors at once.

The protocols know a batching transport by L{IBatchingTransport}, never by
its class: a test fake, or another transport, declares the interface and is
used the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IFileDescriptorReceiver, IUNIXTransport
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from pyamp_fds.outgoing import Ownership

__all__ = ["IBatchingTransport", "IFileDescriptorsReceiver"]


# Interface is named as a base, though IUNIXTransport already extends it, so
# that pydoctor, which cannot see Twisted's classes, knows an interface.
class IBatchingTransport(IUNIXTransport, Interface):
    """
    A UNIX stream transport that queues descriptors with their place in the
    byte stream, sends them in batches with the bytes that name them, and
    lets a protocol encode what it queued just before bytes are written.
    """

    sendmsgCalls = Attribute("How many sendmsg calls the transport has made.")
    recvmsgCalls = Attribute("How many recvmsg calls the transport has made.")

    def sendFileDescriptor(descriptor: FileDescriptorLike, transfer: bool = False) -> None:
        """
        Queue a descriptor to go with the next bytes written.

        @param descriptor: an int, or an object with C{fileno()}.
        @param transfer: if false, a duplicate is queued and the caller may
            close its own at once; if true, the descriptor itself is handed
            over and the transport closes it once sent, or when the
            connection is lost first.
        @raise twisted.internet.error.ConnectionLost: nothing was queued.
        """

    def sendFileDescriptors(descriptors: Sequence[int], ownership: Ownership) -> None:
        """
        Queue several descriptors at once, all or none, after every box
        already sent.

        @param descriptors: a sequence of ints.
        @param ownership: a L{pyamp_fds.outgoing.Ownership}.
        @raise OSError: a duplicate could not be made; nothing was queued.
        @raise twisted.internet.error.ConnectionLost: nothing was queued.
        """

    def descriptorMark() -> int:
        """
        A mark for L{withdrawDescriptors}: where the queue ends now.
        """

    def withdrawDescriptors(mark: int) -> None:
        """
        Take back every descriptor queued since C{mark}: the box that named
        them will not be sent.  Duplicates are closed; handed-over and lent
        descriptors are the caller's again.
        """

    def addWriteHook(hook: Callable[[], bytes]) -> None:
        """
        Call C{hook()} once before the next bytes are written or sent, and
        write the bytes it returns (after any the hook writes itself).  Once
        the connection or its write side is closed, or aborted, C{hook()} is
        called at once and what it returns is dropped, as C{write} drops it.
        """

    def flushNow() -> None:
        """
        Send what has been written so far now, if the socket takes it.
        """


class IFileDescriptorsReceiver(IFileDescriptorReceiver, Interface):
    """
    A protocol that takes the descriptors of one read in one call.
    """

    descriptorsUnclaimed = Attribute(
        "How many descriptors received are held for boxes not yet read: a "
        "transport short of descriptor budget still reads for a protocol "
        "holding some, so that their boxes can claim them."
    )

    def fileDescriptorsReceived(descriptors: Sequence[int]) -> None:
        """
        Descriptors arrived, in order; the protocol owns them now.

        @param descriptors: a sequence of ints.
        """
