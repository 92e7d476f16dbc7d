"""
Tests for L{pyamp_fds.dispatch}: whichever path a box takes (the fast one,
or Twisted's own chain for commands that override its steps), a box that
fails to serialize takes nothing and one that fails to parse leaks nothing.
Over in-memory connections (L{tests.unixsim}), pumped by hand.
"""

import os

from twisted.internet import defer
from twisted.protocols import amp

import pyamp_fds
from pyamp_fds.closer import waitUntilClosed
from tests.fdcheck import identity
from tests.unixsim import FakeConnectionTestCase, watchLost


class NotParsed(amp.Argument):
    """
    An argument whose received value never parses.
    """

    def fromString(self, inString):
        raise ValueError("refused %r" % (inString,))


class HandOverThenNumber(amp.Command):
    """
    A handed-over descriptor, then a number; its own C{makeArguments} sends
    calls through Twisted's chain.
    """

    commandName = b"HandOverThenNumber"
    arguments = [(b"fd", pyamp_fds.Descriptor(transfer=True)), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]

    @classmethod
    def makeArguments(cls, objects, proto):
        return super().makeArguments(objects, proto)


class LendThenNumber(amp.Command):
    """
    Lent descriptors, then a number; its own C{__init__} sends calls
    through Twisted's chain.
    """

    commandName = b"LendThenNumber"
    arguments = [(b"fds", pyamp_fds.DescriptorList(duplicate=False)), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


class Give(amp.Command):
    """
    Answers with a descriptor and a number.
    """

    commandName = b"Give"
    arguments = []
    response = [(b"fd", pyamp_fds.Descriptor()), (b"n", amp.Integer())]


class GiveParsedBadly(amp.Command):
    """
    L{Give} as a caller sees it whose answer's number never parses, and
    whose own C{_doCommand}-free path is Twisted's (it overrides
    C{parseResponse}'s partner C{__init__}).
    """

    commandName = b"Give"
    arguments = []
    response = [(b"fd", pyamp_fds.Descriptor()), (b"n", NotParsed())]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


class GiveLater(amp.Command):
    """
    Answers later (a L{Deferred}) with a handed-over descriptor and a
    number.
    """

    commandName = b"GiveLater"
    arguments = [(b"n", amp.Unicode())]
    response = [(b"fd", pyamp_fds.Descriptor(transfer=True)), (b"n", amp.Integer())]


class Responder(pyamp_fds.AMP):
    def __init__(self, fd):
        super().__init__()
        self.fd = fd
        self.calls = 0

    @HandOverThenNumber.responder
    @LendThenNumber.responder
    def counted(self, n, fd=None, fds=()):
        self.calls += 1
        for received in [fd, *fds]:
            if received is not None:
                os.close(received)
        return {"n": n}

    @Give.responder
    def give(self):
        return {"fd": self.fd, "n": 1}

    @GiveLater.responder
    def giveLater(self, n):
        return defer.succeed({"fd": self.fd, "n": n})


class WithDescriptorTestCase(FakeConnectionTestCase):
    """
    An in-memory connection test with C{self.fd}, a descriptor of the
    test's own (C{/dev/null}), closed when it ends.
    """

    def setUp(self):
        super().setUp()
        self.fd = os.open("/dev/null", os.O_RDONLY)
        self.addCleanup(os.close, self.fd)


class SettledOnEveryPathTests(WithDescriptorTestCase):
    """
    Failed boxes settle their descriptors on Twisted's chain too.
    """

    def test_callThroughTwistedTakesNothing(self):
        """
        A call through Twisted's chain whose later argument fails to
        serialize raises and takes nothing: the handed-over or lent
        descriptors are the caller's again, nothing stays queued, no ordinal
        is used, and the peer receives nothing.
        """
        server, client = Responder(self.fd), pyamp_fds.AMP()
        pump = self.connect(server, client)
        with self.assertRaises(TypeError):
            client.callRemote(HandOverThenNumber, fd=self.fd, n="not a number")
        with self.assertRaises(TypeError):
            client.callRemote(LendThenNumber, fds=[self.fd, self.fd], n="not a number")
        self.assertEqual(client.transport.queuedDescriptors, [])
        self.assertEqual(client.descriptorsSent, 0)
        pump.flush()
        os.fstat(self.fd)
        self.assertEqual(server.receivedDescriptors.received, 0)
        # And the next call through the same chain works, from ordinal 0.
        answer = client.callRemote(HandOverThenNumber, fd=os.dup(self.fd), n=3)
        pump.flush()
        self.assertEqual((self.successResultOf(answer), server.calls), ({"n": 3}, 1))
        self.assertEqual(server.receivedDescriptors.received, 1)

    def test_answerParsedByTwistedLeaksNothing(self):
        """
        An answer parsed through Twisted's chain whose later value fails to
        parse fails the call and closes the descriptor it had claimed.
        """
        server, client = Responder(self.fd), pyamp_fds.AMP()
        pump = self.connect(server, client)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            answer = self.caught(client.callRemote(GiveParsedBadly))
            pump.flush()
            self.failureResultOf(answer, ValueError)
        self.assertEqual(client.receivedDescriptors.received, 3)
        self.assertEqual(
            (client.receivedDescriptors.unclaimed, client.receivedDescriptors.claimedByBox), (0, 0)
        )
        # A peer's descriptors are closed in the background.
        waitUntilClosed()
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_deferredAnswerTakesNothing(self):
        """
        A responder's later answer that fails to serialize sends an error
        (Twisted's: an unknown error, and the connection closed) and not the
        handed-over descriptor, which stays open: it was never taken.
        """
        server, client = Responder(self.fd), pyamp_fds.AMP()
        pump = self.connect(server, client)
        inode = identity(self.fd)
        transport = server.transport
        answer = self.caught(client.callRemote(GiveLater, n="not a number"))
        pump.flush()
        self.failureResultOf(answer, amp.UnknownRemoteError)
        self.assertEqual(len(self.flushLoggedErrors(amp.BadLocalReturn)), 1)
        self.assertEqual(transport.queuedDescriptors, [])
        self.assertEqual(server.descriptorsSent, 0)
        pump.flush()
        self.assertEqual(client.receivedDescriptors.received, 0)
        self.assertEqual(identity(self.fd), inode)


class NumberThenHandOver(amp.Command):
    """
    A number, then a handed-over descriptor: nothing can fail after the
    descriptor is queued, so the box is made without a mark to go back to.
    """

    commandName = b"NumberThenHandOver"
    arguments = [(b"n", amp.Integer()), (b"fd", pyamp_fds.Descriptor(transfer=True))]
    response = []


class HandOverThenText(amp.Command):
    """
    A handed-over descriptor, then text that may be too long, on the fast
    path (no step overridden).
    """

    commandName = b"HandOverThenText"
    arguments = [(b"fd", pyamp_fds.Descriptor(transfer=True)), (b"text", amp.String())]
    response = []


class Nothing(amp.Command):
    """
    No arguments and an empty response.
    """

    commandName = b"Nothing"
    arguments = []
    response = []


class PlannedResponder(pyamp_fds.AMP):
    """
    Responders for the commands made and answered from their plans.
    """

    def __init__(self):
        super().__init__()
        self.received = []

    @NumberThenHandOver.responder
    @HandOverThenText.responder
    def take(self, fd, n=None, text=None):
        self.received.append(identity(fd))
        os.close(fd)
        return {}

    @Nothing.responder
    def nothing(self):
        # Not a dict: Twisted's makeResponse cannot copy it.
        return None


class PlannedPathTests(WithDescriptorTestCase):
    """
    Calls made and answered from a command's plan (no step of Twisted's
    overridden) keep Twisted's outcomes, and settle their descriptors.
    """

    def test_failureBeforeTheDescriptorTakesNothing(self):
        """
        An argument ahead of the descriptor that fails to serialize raises
        before anything is queued: the handed-over descriptor is still the
        caller's, no ordinal is used; the next call goes through.
        """
        server, client = PlannedResponder(), pyamp_fds.AMP()
        pump = self.connect(server, client)
        inode = identity(self.fd)
        with self.assertRaises(TypeError):
            client.callRemote(NumberThenHandOver, n="not a number", fd=self.fd)
        self.assertEqual(client.transport.queuedDescriptors, [])
        self.assertEqual(client.descriptorsSent, 0)
        self.assertEqual(identity(self.fd), inode)
        answer = client.callRemote(NumberThenHandOver, n=1, fd=os.dup(self.fd))
        pump.flush()
        self.assertEqual(self.successResultOf(answer), {})
        self.assertEqual(server.received, [inode])

    def test_tooLongAfterTheDescriptorTakesNothing(self):
        """
        Text too long for AMP after the descriptor: C{callRemote} raises
        Twisted's L{amp.TooLong} at once, and the descriptor queued for the
        box is the caller's again.
        """
        server, client = PlannedResponder(), pyamp_fds.AMP()
        pump = self.connect(server, client)
        with self.assertRaises(amp.TooLong):
            client.callRemote(HandOverThenText, fd=self.fd, text=b"x" * 70000)
        self.assertEqual(client.transport.queuedDescriptors, [])
        self.assertEqual(client.descriptorsSent, 0)
        os.fstat(self.fd)
        pump.flush()
        self.assertEqual(server.receivedDescriptors.received, 0)

    def test_emptyResponseNotADict(self):
        """
        A responder for a command with an empty response that returns
        something other than a dict fails as in Twisted: the caller gets an
        unknown error, and L{amp.BadLocalReturn} is logged.
        """
        server, client = PlannedResponder(), pyamp_fds.AMP()
        pump = self.connect(server, client)
        answer = self.caught(client.callRemote(Nothing))
        pump.flush()
        self.failureResultOf(answer, amp.UnknownRemoteError)
        self.assertEqual(len(self.flushLoggedErrors(amp.BadLocalReturn)), 1)

    def test_callerCallbackFailsUnhandled(self):
        """
        A caller's callback that raises, at once or later (a L{Deferred} it
        returned fails), reaches the protocol's C{unhandledError}, as in
        Twisted, which drops the connection.
        """
        for later in (False, True):
            server, client = PlannedResponder(), pyamp_fds.AMP()
            pump = self.connect(server, client)
            lost = watchLost(client)
            inner = defer.Deferred()

            def fails(result):
                if later:
                    return inner
                raise ZeroDivisionError()

            call = client.callRemote(NumberThenHandOver, n=1, fd=os.dup(self.fd))
            call.addCallback(fails)
            pump.flush()
            if later:
                self.assertEqual(lost, [])
                inner.errback(ZeroDivisionError())
            self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
            pump.flush()
            self.assertEqual(len(lost), 1)


class GiveText(amp.Command):
    """
    Answers with a descriptor, then text that may be too long.
    """

    commandName = b"GiveText"
    arguments = [(b"length", amp.Integer())]
    response = [(b"fd", pyamp_fds.Descriptor()), (b"text", amp.String())]


class TextResponder(pyamp_fds.AMP):
    def __init__(self, fd):
        super().__init__()
        self.fd = fd

    @GiveText.responder
    def give(self, length):
        return {"fd": self.fd, "text": b"x" * length}


class TooLongAnswerTests(WithDescriptorTestCase):
    """
    An answer too long for AMP fails as in Twisted, taking back the
    descriptor queued for it.
    """

    def test_tooLongAnswerTakesNothing(self):
        """
        The answer's text is too long once its descriptor was queued: the
        responder's side logs Twisted's L{amp.TooLong} and drops the
        connection, the duplicate queued for the answer is closed, never
        sent, and the caller's call fails.
        """
        server, client = TextResponder(self.fd), pyamp_fds.AMP()
        pump = self.connect(server, client)
        lost = watchLost(server)
        answer = self.caught(client.callRemote(GiveText, length=70000))
        pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(amp.TooLong)), 1)
        self.assertEqual(server.descriptorsSent, 0)
        self.assertEqual(client.receivedDescriptors.received, 0)
        self.assertEqual(len(lost), 1)
        self.failureResultOf(answer)


class TakeThenNumber(amp.Command):
    """
    A descriptor, then a number.
    """

    commandName = b"TakeThenNumber"
    arguments = [(b"fd", pyamp_fds.Descriptor()), (b"n", amp.Integer())]
    response = [(b"n", amp.Integer())]


class TakeThenRefused(amp.Command):
    """
    L{TakeThenNumber} as a responder sees it whose number never parses.
    """

    commandName = b"TakeThenNumber"
    arguments = [(b"fd", pyamp_fds.Descriptor()), (b"n", NotParsed())]
    response = [(b"n", amp.Integer())]


class Locator(amp.CommandLocator):
    """
    Responders on an object of their own, handed to L{pyamp_fds.AMP} as its
    C{locator}: it records the identity of each descriptor taken (closing
    it), and answers with C{fd}.
    """

    def __init__(self, fd=None):
        self.fd = fd
        self.taken = []

    @TakeThenNumber.responder
    def take(self, fd, n):
        self.taken.append(identity(fd))
        os.close(fd)
        return {"n": n}

    @Give.responder
    def give(self):
        return {"fd": self.fd, "n": 1}

    @GiveLater.responder
    def giveLater(self, n):
        # A number, unless the caller asks for a response that cannot be
        # serialized.
        return defer.succeed({"fd": self.fd, "n": int(n) if n.isdigit() else n})


class RefusingLocator(amp.CommandLocator):
    """
    A locator whose L{TakeThenNumber} responder's number never parses.
    """

    def __init__(self):
        self.calls = 0

    @TakeThenRefused.responder
    def take(self, fd, n):
        self.calls += 1
        os.close(fd)
        return {"n": 0}


class OverridingLocator(Locator):
    """
    A L{Locator} that finds its responders its own way (here, only by
    logging the name first and asking Twisted's), so Twisted's own wrapper
    serves them.
    """

    def __init__(self, fd=None):
        super().__init__(fd)
        self.located = []

    def locateResponder(self, name):
        self.located.append(name)
        return super().locateResponder(name)


class SeparateLocatorTests(WithDescriptorTestCase):
    """
    A L{pyamp_fds.AMP} whose locator is a separate
    L{amp.CommandLocator} serves responders that take and return
    descriptors, and settles a failed box's descriptors as for its own
    responders.
    """

    def openFiles(self, count):
        """
        C{count} distinct open descriptors, closed when the test ends.
        """
        fds = []
        for _ in range(count):
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
            self.addCleanup(os.close, r)
        return fds

    def test_argumentTaken(self):
        """
        A responder of a separate locator taking a L{pyamp_fds.Descriptor}
        gets the descriptor sent, and owns it.
        """
        locator = Locator()
        server, client = pyamp_fds.AMP(locator=locator), pyamp_fds.AMP()
        pump = self.connect(server, client)
        fds = self.openFiles(2)
        answers = [client.callRemote(TakeThenNumber, fd=fd, n=i) for i, fd in enumerate(fds)]
        pump.flush()
        self.assertEqual([self.successResultOf(a) for a in answers], [{"n": 0}, {"n": 1}])
        self.assertEqual(locator.taken, [identity(fd) for fd in fds])
        self.assertEqual(server.receivedDescriptors.unclaimed, 0)

    def test_failedArgumentsLeakNothing(self):
        """
        A box for a separate locator's responder whose later argument fails
        to parse fails the call (an unknown error, and the connection
        closed, as in Twisted), the responder is not called, and the
        descriptor its first argument claimed is closed.
        """
        locator = RefusingLocator()
        server, client = pyamp_fds.AMP(locator=locator), pyamp_fds.AMP()
        pump = self.connect(server, client)
        before = len(os.listdir("/proc/self/fd"))
        answer = self.caught(client.callRemote(TakeThenNumber, fd=self.fd, n=1))
        pump.flush()
        self.failureResultOf(answer, amp.UnknownRemoteError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(locator.calls, 0)
        table = server.receivedDescriptors
        self.assertEqual((table.received, table.unclaimed, table.claimedByBox), (1, 0, 0))
        # A peer's descriptors are closed in the background.
        waitUntilClosed()
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_responseCarriesDescriptor(self):
        """
        A separate locator's responder may answer with a descriptor, at
        once (a duplicate is sent) or later, in a L{Deferred} (handed over,
        and closed once sent): the caller gets the same file.
        """
        locator = Locator(self.fd)
        server, client = pyamp_fds.AMP(locator=locator), pyamp_fds.AMP()
        pump = self.connect(server, client)
        first = client.callRemote(Give)
        pump.flush()
        first = self.successResultOf(first)
        self.addCleanup(os.close, first["fd"])
        # Closed once sent: the count of open descriptors when the test
        # ends says so (its number may already name the one received).
        locator.fd = os.dup(self.fd)
        later = client.callRemote(GiveLater, n="2")
        pump.flush()
        later = self.successResultOf(later)
        self.addCleanup(os.close, later["fd"])
        self.assertEqual((first["n"], later["n"]), (1, 2))
        self.assertEqual(identity(first["fd"]), identity(self.fd))
        self.assertEqual(identity(later["fd"]), identity(self.fd))

    def test_failedResponseTakesNothing(self):
        """
        A separate locator's later answer that fails to serialize sends an
        error (Twisted's: an unknown error, and the connection closed) and
        not the handed-over descriptor, which stays open: it was never
        taken.
        """
        server, client = pyamp_fds.AMP(locator=Locator(self.fd)), pyamp_fds.AMP()
        pump = self.connect(server, client)
        inode = identity(self.fd)
        transport = server.transport
        answer = self.caught(client.callRemote(GiveLater, n="not a number"))
        pump.flush()
        self.failureResultOf(answer, amp.UnknownRemoteError)
        self.assertEqual(len(self.flushLoggedErrors(amp.BadLocalReturn)), 1)
        self.assertEqual(transport.queuedDescriptors, [])
        self.assertEqual(server.descriptorsSent, 0)
        pump.flush()
        self.assertEqual(client.receivedDescriptors.received, 0)
        self.assertEqual(identity(self.fd), inode)

    def test_answerParsedLeaksNothing(self):
        """
        A caller whose own locator is separate parses answers as any
        caller does: one whose later value fails to parse fails the call
        and closes the descriptor it had claimed.
        """
        server = Responder(self.fd)
        client = pyamp_fds.AMP(locator=Locator())
        pump = self.connect(server, client)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            answer = self.caught(client.callRemote(GiveParsedBadly))
            pump.flush()
            self.failureResultOf(answer, ValueError)
        table = client.receivedDescriptors
        self.assertEqual((table.received, table.unclaimed, table.claimedByBox), (3, 0, 0))
        waitUntilClosed()
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_overriddenLocateResponder(self):
        """
        A separate locator that overrides C{locateResponder} is asked as in
        Twisted, and Twisted's own wrapper serves its responders: commands
        without descriptors work, and one with a descriptor argument fails
        with L{pyamp_fds.DescriptorsUnsupported}, which says why, and not
        with an C{AttributeError}.
        """
        locator = OverridingLocator(self.fd)
        server, client = pyamp_fds.AMP(locator=locator), pyamp_fds.AMP()
        pump = self.connect(server, client)
        answer = self.caught(client.callRemote(TakeThenNumber, fd=self.fd, n=1))
        pump.flush()
        self.failureResultOf(answer, amp.UnknownRemoteError)
        [error] = self.flushLoggedErrors(pyamp_fds.DescriptorsUnsupported)
        self.assertIn("locateResponder", str(error.value))
        self.assertEqual(locator.located, [b"TakeThenNumber"])
        self.assertEqual(locator.taken, [])


class HandOverThenTextByTwisted(amp.Command):
    """
    L{HandOverThenText} through Twisted's chain (its own C{makeArguments}).
    """

    commandName = b"HandOverThenText"
    arguments = [(b"fd", pyamp_fds.Descriptor(transfer=True)), (b"text", amp.String())]
    response = []

    @classmethod
    def makeArguments(cls, objects, proto):
        return super().makeArguments(objects, proto)


class GiveTextByTwisted(amp.Command):
    """
    L{GiveText} answered through Twisted's chain (its own C{makeResponse}).
    """

    commandName = b"GiveText"
    arguments = [(b"length", amp.Integer())]
    response = [(b"fd", pyamp_fds.Descriptor()), (b"text", amp.String())]

    @classmethod
    def makeResponse(cls, objects, proto):
        return super().makeResponse(objects, proto)


class TwistedTextResponder(pyamp_fds.AMP):
    def __init__(self, fd):
        super().__init__()
        self.fd = fd

    @GiveTextByTwisted.responder
    def give(self, length):
        return {"fd": self.fd, "text": b"x" * length}


class TooLongOnTwistedsChainTests(WithDescriptorTestCase):
    """
    A box too long for AMP takes back its descriptors on Twisted's chain
    too: the box is checked when queued, whichever path made it.
    """

    def test_call(self):
        """
        A call made by Twisted's C{callRemote} whose text is too long
        raises L{amp.TooLong}; the handed-over descriptor is the caller's
        again, nothing stays queued and no ordinal is used.
        """
        server, client = PlannedResponder(), pyamp_fds.AMP()
        pump = self.connect(server, client)
        inode = identity(self.fd)
        with self.assertRaises(amp.TooLong):
            client.callRemote(HandOverThenTextByTwisted, fd=self.fd, text=b"x" * 70000)
        self.assertEqual(client.transport.queuedDescriptors, [])
        self.assertEqual(client.descriptorsSent, 0)
        self.assertEqual(identity(self.fd), inode)
        pump.flush()
        self.assertEqual(server.receivedDescriptors.received, 0)

    def test_answer(self):
        """
        An answer made by Twisted's C{makeResponse} whose text is too long
        fails as in Twisted (L{amp.TooLong} logged, the connection dropped),
        and the duplicate queued for it is never sent.
        """
        server, client = TwistedTextResponder(self.fd), pyamp_fds.AMP()
        pump = self.connect(server, client)
        lost = watchLost(server)
        answer = self.caught(client.callRemote(GiveText, length=70000))
        pump.flush()
        self.assertTrue(self.flushLoggedErrors(amp.TooLong))
        self.assertEqual(server.descriptorsSent, 0)
        self.assertEqual(client.receivedDescriptors.received, 0)
        self.assertEqual(len(lost), 1)
        self.failureResultOf(answer)
