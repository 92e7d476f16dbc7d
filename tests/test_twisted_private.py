"""
Tests for L{pyamp_fds._twisted}: every private name of Twisted the package
relies on is still there, with the shape relied on.
"""

import inspect

from twisted.internet import base, tcp, unix
from twisted.internet.abstract import FileDescriptor
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from pyamp_fds import _twisted


def referencedNames(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= referencedNames(const)
    return names


class PrivateNamesTests(SynchronousTestCase):
    """
    The private names exist where L{pyamp_fds._twisted} reaches for them.
    """

    def test_ampHooks(self):
        """
        The AMP methods whose private hooks are routed to the package's
        methods exist, with the arguments passed to them.
        """
        for owner, name, params in [
            (amp.BinaryBoxProtocol, "_switchTo", ["self", "newProto", "clientFactory"]),
            (amp.BinaryBoxProtocol, "_startTLS", ["self", "certificate", "verifyAuthorities"]),
            (amp.BinaryBoxProtocol, "_sendFileDescriptor", ["self", "descriptor"]),
            (amp.BoxDispatcher, "_commandReceived", ["self", "box"]),
            (amp.BoxDispatcher, "_answerReceived", ["self", "box"]),
            (amp.BoxDispatcher, "_errorReceived", ["self", "box"]),
            (amp.BoxDispatcher, "_sendBoxCommand", ["self", "command", "box", "requiresAnswer"]),
            (amp.BoxDispatcher, "_safeEmit", ["self", "aBox"]),
            (amp.BoxDispatcher, "_nextTag", ["self"]),
            (amp.CommandLocator, "_wrapWithSerialization", ["self", "aCallable", "command"]),
            (amp.Command, "_doCommand", ["self", "proto"]),
        ]:
            method = getattr(owner, name)
            self.assertEqual(list(inspect.signature(method).parameters), params, name)
        self.assertTrue(callable(_twisted.wireNameToPythonIdentifier))

    def test_ampRouting(self):
        """
        Twisted's dispatcher routes a box only through its three private
        hooks (which L{pyamp_fds.AMP} goes around), and a class that
        overrides one of them gets its boxes through them again.
        """
        self.assertEqual(
            referencedNames(amp.BoxDispatcher.ampBoxReceived.__code__),
            {"ANSWER", "ERROR", "COMMAND", "_answerReceived", "_errorReceived",
             "_commandReceived", "NoEmptyBoxes"},
        )
        import pyamp_fds

        seen = []

        class Watching(pyamp_fds.AMP):
            def _answerReceived(self, box):
                seen.append(box)

        self.assertIs(Watching.ampBoxReceived, amp.BoxDispatcher.ampBoxReceived)
        self.assertIsNot(pyamp_fds.AMP.ampBoxReceived, amp.BoxDispatcher.ampBoxReceived)
        proto = Watching()
        box = amp.AmpBox({b"_answer": b"1"})
        proto.ampBoxReceived(box)
        self.assertEqual(seen, [box])

    def test_ampState(self):
        """
        The private state the hooks read exists on a fresh protocol.
        """
        proto = amp.AMP()
        for name in ("_locked", "_startingTLSBuffer", "_justStartedTLS", "_failAllReason"):
            self.assertTrue(hasattr(proto, name), name)
        self.assertEqual(proto._outstandingRequests, {})
        self.assertTrue(callable(proto._getDescriptor))
        self.assertTrue(callable(proto._sendingDescriptorCounter))
        self.assertIsInstance(type(proto)._commandDispatch, dict)

    def test_locatorShape(self):
        """
        A L{amp.CommandLocator} subclass registers its responders in the
        metaclass's private C{_commandDispatch}, as C{(command, function)}
        by command name, and Twisted's C{locateResponder} wraps what it finds
        with C{_wrapWithSerialization}: what
        L{_twisted.locatorResponderFor} does in its place.
        """

        class Ping(amp.Command):
            arguments = []
            response = []

        class Locator(amp.CommandLocator):
            @Ping.responder
            def ping(self):
                return {}

        self.assertEqual(Locator._commandDispatch[b"Ping"], (Ping, Locator.ping))
        self.assertEqual(_twisted.locatorResponderFor(Locator(), b"Ping"), (Ping, Locator.ping))
        self.assertIsNone(_twisted.locatorResponderFor(Locator(), b"Pong"))
        self.assertIn(
            "_wrapWithSerialization",
            referencedNames(amp.CommandLocator.locateResponder.__code__),
        )
        self.assertIn("_commandDispatch", referencedNames(amp.CommandLocator.locateResponder.__code__))

    def test_transportHooks(self):
        """
        The write-buffer and read-path privates a batching transport uses.
        """
        for owner, name in [
            (FileDescriptor, "_isSendBufferFull"),
            (FileDescriptor, "_maybePauseProducer"),
            (tcp.Connection, "_dataReceived"),
            (tcp.Connection, "_getLogPrefix"),
            (base.BaseConnector, "_makeTransport"),
        ]:
            self.assertTrue(callable(getattr(owner, name)), name)
        self.assertTrue(callable(unix.Server._fromConnectedSocket))
        # A connection's socket is closed through _closeSocket(orderly).
        self.assertEqual(
            list(inspect.signature(tcp._SocketCloser._closeSocket).parameters),
            ["self", "orderly"],
        )
        self.assertIn("_closeSocket", referencedNames(tcp.Connection.connectionLost.__code__))
        descriptor = FileDescriptor()
        self.assertEqual(
            (descriptor.dataBuffer, descriptor.offset, descriptor._tempDataLen), (b"", 0, 0)
        )
        self.assertIs(descriptor._writeDisconnected, False)
        self.assertIn("_writeDisconnected", referencedNames(FileDescriptor.write.__code__))
        self.assertIs(tcp.Connection._aborting, False)
        self.assertIn("_aborting", referencedNames(tcp.Connection.abortConnection.__code__))

    def test_acceptLoopShape(self):
        """
        C{tcp.Port.doRead}, which L{_twisted.acceptAdmitted} copies, still
        refers to exactly the names it did when the copy was made.
        """
        names = referencedNames(tcp.Port.doRead.__code__)
        self.assertIn(
            names,
            (_twisted.ACCEPT_LOOP_NAMES, _twisted.ACCEPT_LOOP_NAMES_BEFORE_24),
            "tcp.Port.doRead changed: compare it with pyamp_fds._twisted.acceptAdmitted",
        )
        self.assertEqual(
            list(inspect.signature(tcp._accept).parameters),
            ["logger", "accepts", "listener", "reservedFD"],
        )
        self.assertTrue(callable(tcp._BuffersLogs))
        self.assertTrue(callable(tcp._reservedFD.reserve))

    def test_listeningSocketHooks(self):
        """
        The privates L{_twisted.listenOnSocket} and
        L{_twisted.keepSocketListening} set exist on a fresh UNIX port, with
        the values Twisted starts them at, and an adopted TCP port is made
        not to shut its socket down.
        """
        port = unix.Port(b"/nonexistent/socket", None)
        self.assertIsNone(port._preexistingSocket)
        self.assertTrue(port._shouldShutdown)
        self.assertIn("_shouldShutdown = False", inspect.getsource(tcp.Port.startListening))
