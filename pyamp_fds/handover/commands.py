# -*- test-case-name: tests.test_handover -*-
"""
The commands of the handover socket, and the errors they answer with.

A new process sends them to the one it replaces: L{List} what it lends,
L{Take} some of it, then L{Ready} once it serves what it took.  L{Drain}
asks a process to stop without a successor.
"""

from __future__ import annotations

from twisted.protocols import amp

from pyamp_fds.arguments import Descriptor, DescriptorList

__all__ = [
    "HandoverError",
    "UnknownPort",
    "HandoverBusy",
    "NotTaking",
    "List",
    "Take",
    "Ready",
    "Drain",
]


class HandoverError(Exception):
    """
    A handover could not be done; the message says why.
    """


class UnknownPort(HandoverError):
    """
    L{Take} named a port the process does not serve.
    """


class HandoverBusy(HandoverError):
    """
    The process is already handing its ports over to another (only one may
    take them at a time), or has handed them over, or is stopping.
    """


class NotTaking(HandoverError):
    """
    L{Ready} came from a connection that took nothing.
    """


_BUSY: dict[type[Exception], bytes] = {HandoverBusy: b"HANDOVER_BUSY"}

#: What describes a port: its name, C{"tcp"}, C{"unix"} or C{"udp"}, the
#: socket's address family and type, and its address (C{"host:port"},
#: C{"[host]:port"} for IPv6, or the UNIX socket's path).
PORT = [
    (b"name", amp.Unicode()),
    (b"kind", amp.Unicode()),
    (b"family", amp.Integer()),
    (b"type", amp.Integer()),
    (b"address", amp.Unicode()),
]


class List(amp.Command):
    """
    The ports the process serves and could lend, its process id and its
    state (C{"serving"}, C{"lending"} while another process takes over,
    C{"draining"}, C{"drained"}).
    """

    commandName = b"handover-list"
    arguments: list[tuple[bytes, amp.Argument]] = []  # type: ignore[misc]
    response = [(b"ports", amp.AmpList(PORT)), (b"pid", amp.Integer()), (b"state", amp.Unicode())]


class Take(amp.Command):
    """
    Lend the named ports: a duplicate of each listening socket, in the order
    of C{ports}, and one of the handover socket itself.  The lender keeps
    serving with its own until L{Ready}; if the taker goes before that, the
    lender has lost nothing.
    """

    commandName = b"handover-take"
    arguments = [(b"names", amp.ListOf(amp.Unicode()))]
    response = [
        (b"ports", amp.AmpList(PORT)),
        (b"descriptors", DescriptorList()),
        (b"handover", Descriptor()),
    ]
    errors = {UnknownPort: b"UNKNOWN_PORT", **_BUSY}


class Ready(amp.Command):
    """
    The taker serves what it took: the lender stops accepting on every port
    and on the handover socket, and drains the connections it has, whose
    count it answers with.  When they are done (or the lender's drain
    timeout has passed) it closes this connection and calls its own
    C{onDrained}.
    """

    commandName = b"handover-ready"
    arguments: list[tuple[bytes, amp.Argument]] = []  # type: ignore[misc]
    response = [(b"connections", amp.Integer())]
    errors = {NotTaking: b"NOT_TAKING", **_BUSY}


class Drain(amp.Command):
    """
    Stop without a successor: stop accepting, close the ports, and drain the
    connections (whose count is the answer), as on L{Ready}.
    """

    commandName = b"handover-drain"
    arguments: list[tuple[bytes, amp.Argument]] = []  # type: ignore[misc]
    response = [(b"connections", amp.Integer())]
    errors = dict(_BUSY)
