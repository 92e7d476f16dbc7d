# -*- test-case-name: tests.test_credentials -*-
"""
Who is at the other end of a UNIX socket, and a listening port that admits
only some users or groups.
"""

import socket
import struct
from collections import namedtuple

from twisted.internet import unix
from twisted.logger import Logger

from pyamp_fds import _twisted

__all__ = ["PeerCredentials", "readPeerCredentials", "Port"]

_log = Logger()


class PeerCredentials(namedtuple("PeerCredentials", "pid uid gid")):
    """
    The process at the other end of a UNIX socket connection, as the kernel
    recorded it (C{SO_PEERCRED}) when that process connected, listened, or
    made the socket pair: its process id, effective user id and effective
    group id (not its supplementary groups).
    """


# struct ucred: pid_t (signed), uid_t and gid_t (unsigned: a uid of 2**31
# or more must read as itself).
_UCRED = struct.Struct("iII")


def readPeerCredentials(skt):
    """
    The L{PeerCredentials} of a connected C{AF_UNIX} socket's peer.

    @raise OSError: they cannot be read (e.g. the socket is not connected).
    """
    return PeerCredentials._make(
        _UCRED.unpack(skt.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    )


def _credentialsOrNone(skt):
    try:
        return readPeerCredentials(skt)
    except OSError:
        return None


class Port(unix.Port):
    """
    A listening UNIX socket whose connections are
    L{pyamp_fds.transport.Server}s, optionally admitting only some users or
    groups.

    A connection from a peer that is not admitted is closed as soon as it is
    accepted, before any protocol is built for it or anything is read from
    it, and logged with the peer's credentials.

    @ivar allowedUIDs: the user ids admitted, or L{None}.
    @ivar allowedGIDs: the group ids admitted, or L{None}.  When both are
        given, a peer is admitted if its user id is in C{allowedUIDs} or its
        group id is in C{allowedGIDs}; when neither is, every peer the socket
        file's mode lets in is admitted.  The group is the peer's effective
        group: supplementary groups are not seen.
    """

    def __init__(
        self,
        fileName,
        factory,
        backlog=50,
        mode=0o666,
        reactor=None,
        wantPID=0,
        allowedUIDs=None,
        allowedGIDs=None,
    ):
        # Imported here: the transport module reads credentials from this one.
        from pyamp_fds.transport import Server

        self.transport = Server
        unix.Port.__init__(self, fileName, factory, backlog, mode, reactor, wantPID)
        self.allowedUIDs = None if allowedUIDs is None else frozenset(allowedUIDs)
        self.allowedGIDs = None if allowedGIDs is None else frozenset(allowedGIDs)

    def admits(self, credentials):
        """
        Whether a peer with these L{PeerCredentials} may connect.
        """
        uids, gids = self.allowedUIDs, self.allowedGIDs
        if uids is None and gids is None:
            return True
        return (uids is not None and credentials.uid in uids) or (
            gids is not None and credentials.gid in gids
        )

    def doRead(self):
        if self.allowedUIDs is None and self.allowedGIDs is None:
            return super().doRead()
        _twisted.acceptAdmitted(self, _credentialsOrNone, self.admits, self._refused)

    def _refused(self, credentials, logger):
        logger.warn(
            "{port}: refused a connection from {credentials}: not an allowed user or group",
            port=self,
            credentials=credentials,
        )
