# -*- test-case-name: tests.test_handover -*-
"""
An HTTP channel that drains: for C{twisted.web} servers whose process may be
replaced (L{pyamp_fds.handover.Handover})::

    site = server.Site(root)
    site.protocol = DrainingHTTPChannel
"""

from __future__ import annotations

from typing import Any

from twisted.web import http
from zope.interface import implementer

from pyamp_fds.handover.connections import IDrainable

__all__ = ["DrainingHTTPChannel"]


@implementer(IDrainable)
class DrainingHTTPChannel(http.HTTPChannel):
    """
    Asked to drain, a keep-alive connection answers its next request with
    C{Connection: close} and closes once that response is sent, as HTTP
    asks: a client that reads the header opens a new connection for its
    next request, to whichever process accepts it, and loses nothing.

    Closing a connection between requests instead would race with a request
    the client is sending just then, which would be lost.  Only a connection
    idle for L{idleGrace} seconds is closed without a request.
    """

    draining = False
    idleGrace = 1.0
    _requestsSeen = 0
    _idleCall: Any = None

    def drain(self) -> None:
        self.draining = True
        self._watchIdle(self._requestsSeen)

    def _watchIdle(self, seen: int) -> None:
        self._idleCall = self.callLater(  # type: ignore[no-untyped-call]
            self.idleGrace, lambda: self._closeIfIdle(seen)
        )

    def _closeIfIdle(self, seen: int) -> None:
        self._idleCall = None
        if not self.requests and self._requestsSeen == seen:
            self.loseConnection()  # type: ignore[no-untyped-call]
        else:
            self._watchIdle(self._requestsSeen)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        self._requestsSeen += 1
        if self.draining:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return http.HTTPChannel.checkPersistence(self, request, version)  # type: ignore[no-untyped-call, no-any-return]

    def connectionLost(self, reason: Any = None) -> None:
        if self._idleCall is not None:
            self._idleCall.cancel()
            self._idleCall = None
        http.HTTPChannel.connectionLost(self, reason)  # type: ignore[no-untyped-call]
