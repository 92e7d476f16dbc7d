# -*- test-case-name: tests.test_twisted_private -*-
"""
Every private name of Twisted that pyamp_fds uses, each with why.

Twisted's AMP and UNIX transports have no public hooks for what pyamp_fds
replaces (framing, the descriptor exchange, the write path, the accept
loop), so the package reaches into them here and nowhere else.  The rest of
the package calls this module's functions, or inherits its hook classes,
which route Twisted's private hooks to methods with the package's own names.
C{tests/test_twisted_private.py} fails when any of these names disappears or
changes the shape relied on.
"""

from twisted.internet import tcp
from twisted.protocols import amp
from twisted.python import log

__all__ = [
    "BoxProtocolHooks",
    "AMPHooks",
    "TransportHooks",
    "ConnectorHooks",
    "wireNameToPythonIdentifier",
    "overridesDoCommand",
    "nextSendingOrdinal",
    "sendStockDescriptor",
    "claimStockDescriptor",
    "hasBufferedOutput",
    "bufferedOutput",
    "logDescriptorsRefused",
    "adoptConnectedSocket",
    "acceptAdmitted",
]


# Command argument names become responder keywords this way (a public
# behaviour of Command, done by a private function): the fast argument path
# must name them exactly as Twisted does.
wireNameToPythonIdentifier = amp._wireNameToPythonIdentifier


def overridesDoCommand(command):
    """
    Whether a command class overrides C{Command._doCommand}, the private
    step C{callRemote} goes through (C{StartTLS} and
    C{ProtocolSwitchCommand} do): such commands keep Twisted's own path.
    """
    return command._doCommand is not amp.Command._doCommand


def nextSendingOrdinal(proto):
    """
    The next ordinal of a stock L{amp.BinaryBoxProtocol}, which numbers the
    descriptors it sends with this private counter.
    """
    return proto._sendingDescriptorCounter()


def sendStockDescriptor(proto, descriptor):
    """
    Send a descriptor the way a stock protocol's own L{amp.Descriptor}
    does, through its private C{_sendFileDescriptor}.
    """
    return proto._sendFileDescriptor(descriptor)


def claimStockDescriptor(proto, ordinal):
    """
    Claim a received descriptor from a stock protocol, as its own
    L{amp.Descriptor} does, through its private C{_getDescriptor}.
    """
    return proto._getDescriptor(ordinal)


class BoxProtocolHooks:
    """
    L{amp.BinaryBoxProtocol}'s private state and hooks, with the package's
    names.  Mixed in ahead of it.
    """

    def _switchTo(self, newProto, clientFactory=None):
        # ProtocolSwitchCommand switches through this private method.
        return self.switchProtocol(newProto, clientFactory)

    def _startTLS(self, certificate, verifyAuthorities):
        # StartTLS's box starts TLS through this private method; the boxes
        # queued before it must be written first.
        self.flushBoxes()
        return super()._startTLS(certificate, verifyAuthorities)

    def _sendFileDescriptor(self, descriptor):
        # Stock amp.Descriptor arguments send through this private method.
        return self.sendDescriptor(descriptor, False)

    def useDescriptorTable(self, table):
        """
        Make stock L{amp.Descriptor} arguments claim from C{table}: they
        call the private C{_getDescriptor} that Twisted's exchanger set.
        """
        self._getDescriptor = table.claim

    def dataArrived(self):
        """
        What Twisted's C{dataReceived} does before parsing: any data after
        starting TLS means the peer accepted the certificate.
        """
        if self._justStartedTLS:
            self._justStartedTLS = False

    def checkCanSend(self):
        """
        Raise as Twisted's C{sendBox} does when no box may be sent, and say
        whether the box must wait for TLS to start.

        @return: the list boxes wait in while TLS starts, or L{None}.
        @raise amp.ProtocolSwitched: the connection has switched protocols.
        """
        if self._locked:
            raise amp.ProtocolSwitched(
                "This connection has switched: no AMP traffic allowed."
            )
        return self._startingTLSBuffer


class AMPHooks:
    """
    L{amp.AMP}'s (L{amp.BoxDispatcher}'s) private hooks and state, with the
    package's names.  Mixed in ahead of it.
    """

    # The dispatcher routes each box by its kind through these three.
    def _commandReceived(self, box):
        return self.commandBoxReceived(box)

    def _answerReceived(self, box):
        return self.answerBoxReceived(box)

    def _errorReceived(self, box):
        return self.errorBoxReceived(box)

    def _wrapWithSerialization(self, aCallable, command):
        # Responders found by locateResponder are wrapped by this: the
        # package wraps the wrapper to settle descriptors on failure.
        return self.wrapResponder(aCallable, command)

    def stockCommandReceived(self, box):
        """
        Twisted's own handling of a command box.
        """
        return super()._commandReceived(box)

    def stockAnswerReceived(self, box):
        """
        Twisted's own handling of an answer box.
        """
        return super()._answerReceived(box)

    def stockErrorReceived(self, box):
        """
        Twisted's own handling of an error box.
        """
        return super()._errorReceived(box)

    def stockWrapResponder(self, aCallable, command):
        """
        Twisted's own responder wrapper: parse, call, serialize.
        """
        return super()._wrapWithSerialization(aCallable, command)

    def stockSendBoxCommand(self, command, box, requiresAnswer):
        """
        Twisted's own sending of a command box (tags, waiting Deferreds).
        """
        return self._sendBoxCommand(command, box, requiresAnswer)

    def safeEmit(self, box):
        """
        Twisted's C{_safeEmit}: send an answer box, ignoring a connection
        that switched or went away meanwhile.
        """
        return self._safeEmit(box)

    def responderFor(self, name):
        """
        The C{(command, responder)} registered on this class for a command
        name (the metaclass's private C{_commandDispatch}), or L{None}.
        """
        return self._commandDispatch.get(name)

    def failedAllOutgoing(self):
        """
        The reason every call fails now that the connection is gone, or
        L{None} (Twisted's private C{_failAllReason}).
        """
        return self._failAllReason

    def newTag(self):
        """
        The next question tag (Twisted's private C{_nextTag}).
        """
        return self._nextTag()

    def waitForAnswer(self, tag):
        """
        A L{Deferred} for the answer to question C{tag}, in Twisted's
        private table of outstanding requests.
        """
        from twisted.internet.defer import Deferred

        d = self._outstandingRequests[tag] = Deferred()
        return d

    def takeWaiting(self, tag):
        """
        Remove and return the L{Deferred} waiting for the answer to C{tag}.
        """
        return self._outstandingRequests.pop(tag)


class TransportHooks:
    """
    The private parts of Twisted's C{FileDescriptor} write path and
    C{tcp.Connection} read path that a batching transport takes part in.
    Mixed in ahead of Twisted's transport.
    """

    def _isSendBufferFull(self):
        # Producers are paused when this says the buffer is full: queued
        # descriptors count too, so a slow reader pauses the sender.
        return self.sendBufferFull() or super()._isSendBufferFull()

    def pauseProducerIfFull(self):
        """
        Pause a streaming producer if the buffer is now full.
        """
        self._maybePauseProducer()

    def deliverData(self, data):
        """
        Hand received bytes to the protocol as C{tcp.Connection.doRead}
        does (it also treats an empty read as the end of the stream).
        """
        return self._dataReceived(data)


class ConnectorHooks:
    """
    C{base.BaseConnector}'s private hook for the transport a connector
    makes.  Mixed in ahead of it.
    """

    def _makeTransport(self):
        return self.makeTransport()


def hasBufferedOutput(transport):
    """
    Whether Twisted's write buffer of C{transport} holds bytes not yet sent
    (its private C{_tempDataLen}, and C{dataBuffer} past C{offset}).
    """
    return bool(transport._tempDataLen or len(transport.dataBuffer) > transport.offset)


def bufferedOutput(transport):
    """
    How many bytes Twisted's write buffer of C{transport} holds, not yet
    sent.
    """
    return transport._tempDataLen + len(transport.dataBuffer) - transport.offset


def logDescriptorsRefused(transport, protocol, count):
    """
    Log that C{count} descriptors reached C{protocol}, which is not an
    C{IFileDescriptorReceiver}, and were closed: with Twisted's own event
    (its format and fields, the protocol named by the private
    C{_getLogPrefix}), which its users and tests watch for; one per read, as
    Twisted logs one per message of descriptors.
    """
    log.msg(
        format=(
            "%(protocolName)s (on %(hostAddress)r) does not "
            "provide IFileDescriptorReceiver; closing file "
            "descriptor received (from %(peerAddress)r)."
        ),
        hostAddress=transport.getHost(),
        peerAddress=transport.getPeer(),
        protocolName=transport._getLogPrefix(protocol),
        count=count,
    )


def adoptConnectedSocket(transportType, fileno, factory, reactor):
    """
    Make a transport of C{transportType} (a C{unix.Server} subclass) over an
    already connected socket, as C{reactor.adoptStreamConnection} does with
    the private C{Server._fromConnectedSocket}.
    """
    return transportType._fromConnectedSocket(fileno, factory, reactor)


#: The names C{tcp.Port.doRead} refers to, in the Twisted versions whose
#: loop L{acceptAdmitted} copies: a change here means the copy must be
#: looked at again.
ACCEPT_LOOP_NAMES = frozenset(
    [
        "BaseException", "NI_NUMERICHOST", "NI_NUMERICSERV", "_BuffersLogs", "_accept",
        "_buildAddr", "_logger", "_reservedFD", "buildProtocol", "close", "deferr",
        "enumerate", "factory", "getnameinfo", "len", "list", "log", "makeConnection",
        "max", "namespace", "numberAccepts", "observer", "platformType", "range",
        "reactor", "sessionno", "socket", "transport", "tuple",
    ]
)


def acceptAdmitted(port, credentialsOf, admits, refused):
    """
    C{tcp.Port.doRead}, with each peer checked before its protocol is
    built: Twisted has no hook between C{accept()} and C{buildProtocol()}
    that sees the socket.  A copy of Twisted's loop (its private
    C{_accept}, C{_BuffersLogs} and C{_reservedFD}); the shape test in
    C{tests/test_twisted_private.py} fails when the original changes.

    @param credentialsOf: called with an accepted socket; returns its
        peer's credentials, or L{None} if they cannot be read.
    @param admits: called with credentials; whether the peer may connect.
    @param refused: called with the refused credentials and the logger.
    """
    try:
        with tcp._BuffersLogs(port._logger.namespace, port._logger.observer) as logger:
            accepted = 0
            clients = tcp._accept(logger, range(port.numberAccepts), port.socket, tcp._reservedFD)
            for accepted, (skt, addr) in enumerate(clients, 1):
                credentials = credentialsOf(skt)
                if credentials is None or not admits(credentials):
                    skt.close()
                    refused(credentials, logger)
                    continue
                protocol = port.factory.buildProtocol(port._buildAddr(addr))
                if protocol is None:
                    skt.close()
                    continue
                session = port.sessionno
                port.sessionno = session + 1
                transport = port.transport(skt, protocol, addr, port, session, port.reactor)
                transport.peerCredentialsRead(credentials)
                protocol.makeConnection(transport)
        if accepted == port.numberAccepts:
            port.numberAccepts += 20
        else:
            port.numberAccepts = max(1, accepted)
    except BaseException:
        log.deferr()
