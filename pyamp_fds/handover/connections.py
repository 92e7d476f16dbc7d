# -*- test-case-name: tests.test_handover -*-
"""
The connections of a L{pyamp_fds.handover.Handover}: on its handover
socket (L{_Lender}), to the process it replaces (L{_Previous}), and the
factory wrapper that tracks a port's connections to drain them; and what a
protocol provides to be drained (L{IDrainable}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import ILoggingContext, IProtocolFactory
from zope.interface import Interface, implementer

from pyamp_fds.handover.commands import Drain, List, Ready, Take
from pyamp_fds.protocol import AMP

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress
    from twisted.internet.protocol import Protocol
    from twisted.python.failure import Failure

    from pyamp_fds.handover.service import Handover

__all__ = ["IDrainable"]


class IDrainable(Interface):
    """
    A connection's protocol that can be asked to finish: when its process
    stops accepting, it ends its connection once what is in progress is
    done (an HTTP server: after the current response, which says
    C{Connection: close}).  Other protocols are left to end by themselves
    until the drain timeout.
    """

    def drain() -> None:
        """
        Accept no more work on this connection; close it once the work in
        progress is done.
        """



def _call(proto: AMP, command: type[Any], **arguments: Any) -> defer.Deferred[Any]:
    answer = proto.callRemote(command, **arguments)
    assert answer is not None  # None only for a command that requires no answer
    return answer


@implementer(IProtocolFactory, ILoggingContext)
class _TrackingFactory:
    """
    A stream port's factory, whose connections the L{Handover} tracks so as
    to drain them.  Not a L{twisted.protocols.policies.WrappingFactory}: the
    protocols keep their own transports, and the data path costs nothing.
    """

    def __init__(self, factory: Any, handover: Handover) -> None:
        self.factory, self.handover = factory, handover

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        proto: Protocol | None = self.factory.buildProtocol(addr)
        if proto is not None:
            self.handover._track(proto)
        return proto

    def logPrefix(self) -> str:
        # The port's log lines name the application's factory, not this.
        if ILoggingContext.providedBy(self.factory):
            return self.factory.logPrefix()
        return type(self.factory).__name__

    def __getattr__(self, name: str) -> Any:
        return getattr(self.factory, name)


class _Lender(AMP):
    """
    A connection to this process's handover socket.
    """

    def __init__(self, handover: Handover) -> None:
        AMP.__init__(self)
        self.handover = handover

    @List.responder
    def listPorts(self) -> dict[str, Any]:
        return self.handover._list()

    @Take.responder
    def take(self, names: list[str]) -> dict[str, Any]:
        return self.handover._lend(self, names)

    @Ready.responder
    def ready(self) -> dict[str, Any]:
        return self.handover._handOver(self)

    @Drain.responder
    def drain(self) -> dict[str, Any]:
        return {"connections": self.handover._drainAlone()}

    def connectionMade(self) -> None:
        AMP.connectionMade(self)  # type: ignore[no-untyped-call]
        self.handover._peers.add(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        AMP.connectionLost(self, reason)
        self.handover._peerLost(self)


class _Previous(AMP):
    """
    This process's connection to the one it replaces.
    """

    def __init__(self) -> None:
        AMP.__init__(self)
        self.gone: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        AMP.connectionLost(self, reason)
        self.gone.callback(None)
