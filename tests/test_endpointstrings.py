"""
Tests for the C{fdunix:} endpoint strings: the parsers in
L{pyamp_fds.endpoints}, found by Twisted through the plugin in
C{twisted/plugins/pyamp_fds_endpoints.py}.
"""

import os
import shutil
import stat
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.protocols import amp

import pyamp_fds
from pyamp_fds.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from pyamp_fds.interfaces import IBatchingTransport
from tests.reactorhelpers import ReactorTestCase, watchLost


class Take(amp.Command):
    arguments = [(b"fd", pyamp_fds.Descriptor())]
    response = [(b"inode", amp.Integer())]


class Taker(pyamp_fds.AMP):
    @Take.responder
    def take(self, fd):
        inode = os.fstat(fd).st_ino
        os.close(fd)
        return {"inode": inode}


# Values int() takes but an option must not.
NOT_DECIMAL = ["+5", "-5", "1_0", " 5", "5 ", "\t5", "5\n", "\u0661\u0662", "\uff15", "0x10", "5.0", ""]


class ServerStringTests(ReactorTestCase):
    """
    C{serverFromString(reactor, "fdunix:...")}.
    """

    def test_everyKeyword(self):
        """
        Every keyword of Twisted's C{unix:} is understood, and the allow-lists.
        """
        endpoint = serverFromString(
            reactor,
            "fdunix:address=/run/broker.sock:backlog=7:mode=640:lockfile=1:"
            "allowedUIDs=1000,1001:allowedGIDs=100",
        )
        self.assertIsInstance(endpoint, UNIXServerEndpoint)
        self.assertEqual(endpoint.address, "/run/broker.sock")
        self.assertEqual(endpoint.backlog, 7)
        self.assertEqual(endpoint.mode, 0o640)
        self.assertIs(endpoint.wantPID, True)
        self.assertEqual(endpoint.allowedUIDs, [1000, 1001])
        self.assertEqual(endpoint.allowedGIDs, [100])

    def test_defaults(self):
        """
        The address may come first without its name; the mode is C{0o600}
        unless given, no lock file is used, and every peer is admitted.
        """
        endpoint = serverFromString(reactor, "fdunix:/run/broker.sock")
        self.assertIsInstance(endpoint, UNIXServerEndpoint)
        self.assertEqual(endpoint.address, "/run/broker.sock")
        self.assertEqual(endpoint.backlog, 50)
        self.assertEqual(endpoint.mode, 0o600)
        self.assertIs(endpoint.wantPID, False)
        self.assertIsNone(endpoint.allowedUIDs)
        self.assertIsNone(endpoint.allowedGIDs)

    def test_connectionsPerUser(self):
        """
        C{connectionsPerUser} is a decimal number of at least 1; without
        it, the port's default holds.
        """
        endpoint = serverFromString(reactor, "fdunix:/run/b.sock:connectionsPerUser=3")
        self.assertEqual(endpoint.connectionsPerUser, 3)
        self.assertIsNone(serverFromString(reactor, "fdunix:/run/b.sock").connectionsPerUser)
        for value in NOT_DECIMAL + ["0"]:
            self.assertRaises(
                ValueError, serverFromString, reactor,
                "fdunix:/run/b.sock:connectionsPerUser=" + value,
            )

    def test_wantPID(self):
        """
        C{wantPID} is taken as well as C{lockfile}.
        """
        endpoint = serverFromString(reactor, "fdunix:/run/broker.sock:wantPID=1")
        self.assertIs(endpoint.wantPID, True)

    def test_escapedColon(self):
        """
        A colon in the path is escaped, as for Twisted's C{unix:}.
        """
        endpoint = serverFromString(reactor, r"fdunix:/run/a\:b.sock:mode=600")
        self.assertEqual(endpoint.address, "/run/a:b.sock")

    def test_emptyAllowList(self):
        """
        An empty allow-list is refused rather than taken to admit nobody.
        """
        self.assertRaises(ValueError, serverFromString, reactor, "fdunix:/run/b.sock:allowedUIDs=")
        self.assertRaises(ValueError, serverFromString, reactor, "fdunix:/run/b.sock:allowedGIDs=,")

    def test_badValues(self):
        """
        A mode that is not octal, or an id that is not a number, is refused.
        """
        self.assertRaises(ValueError, serverFromString, reactor, "fdunix:/run/b.sock:mode=9")
        self.assertRaises(ValueError, serverFromString, reactor, "fdunix:/run/b.sock:allowedUIDs=root")

    def test_unknownKeyword(self):
        """
        A keyword Twisted's C{unix:} does not know is refused.
        """
        self.assertRaises(TypeError, serverFromString, reactor, "fdunix:/run/b.sock:colour=blue")

    def test_decimalOnly(self):
        """
        Numbers are ASCII digits only: C{int()} would also take a sign,
        underscores, surrounding whitespace and other scripts' digits.
        """
        for keyword in ("backlog", "allowedUIDs", "allowedGIDs"):
            for value in NOT_DECIMAL:
                self.assertRaises(
                    ValueError, serverFromString, reactor,
                    "fdunix:/run/b.sock:%s=%s" % (keyword, value),
                )
        for value in NOT_DECIMAL + ["1,+2", "1, 2", "1,,2", "1,"]:
            self.assertRaises(
                ValueError, serverFromString, reactor, "fdunix:/run/b.sock:allowedUIDs=" + value
            )
        for value in ("2", "01", "+1", " 1", "\u0661"):
            for keyword in ("lockfile", "wantPID"):
                self.assertRaises(
                    ValueError, serverFromString, reactor,
                    "fdunix:/run/b.sock:%s=%s" % (keyword, value),
                )

    def test_mode(self):
        """
        The mode is octal digits only, at most C{777}.
        """
        for value in NOT_DECIMAL + ["8", "1000", "4777", "0o600"]:
            self.assertRaises(
                ValueError, serverFromString, reactor, "fdunix:/run/b.sock:mode=" + value
            )
        self.assertEqual(serverFromString(reactor, "fdunix:/run/b.sock:mode=0777").mode, 0o777)
        self.assertEqual(serverFromString(reactor, "fdunix:/run/b.sock:mode=0").mode, 0)

    def test_idRange(self):
        """
        An id is at most 2**32 - 2: 2**32 - 1 is C{(uid_t)-1}, which names
        nobody.
        """
        endpoint = serverFromString(reactor, "fdunix:/run/b.sock:allowedUIDs=%d" % (2**32 - 2,))
        self.assertEqual(endpoint.allowedUIDs, [2**32 - 2])
        for value in (2**32 - 1, 2**32):
            self.assertRaises(
                ValueError, serverFromString, reactor, "fdunix:/run/b.sock:allowedGIDs=%d" % value
            )

    def test_lockfileAndAlias(self):
        """
        C{lockfile} and C{wantPID} are the same option: both at once is an
        error rather than one silently winning.
        """
        self.assertRaises(
            ValueError, serverFromString, reactor, "fdunix:/run/b.sock:lockfile=1:wantPID=0"
        )

    def test_bytes(self):
        """
        A description given as bytes is read as one given as text.
        """
        endpoint = serverFromString(reactor, b"fdunix:/run/b.sock:mode=640:allowedUIDs=5")
        self.assertEqual(endpoint.mode, 0o640)
        self.assertEqual(endpoint.allowedUIDs, [5])
        self.assertRaises(
            ValueError, serverFromString, reactor, "fdunix:/run/b.sock:backlog=\u0661".encode()
        )

    def test_abstract(self):
        """
        An address in the abstract namespace is taken as it is; with no
        allow-list, the port it listens on admits only this process's user
        (see L{tests.test_credentials.AbstractNamespaceTests}).
        """
        endpoint = serverFromString(reactor, "fdunix:\0pyamp_fds-name")
        self.assertEqual(endpoint.address, "\0pyamp_fds-name")


class ClientStringTests(ReactorTestCase):
    """
    C{clientFromString(reactor, "fdunix:...")}.
    """

    def test_everyKeyword(self):
        """
        C{path}, C{timeout} and C{lockfile} are understood.
        """
        endpoint = clientFromString(reactor, "fdunix:path=/run/broker.sock:timeout=9:lockfile=1")
        self.assertIsInstance(endpoint, UNIXClientEndpoint)
        self.assertEqual(endpoint.path, "/run/broker.sock")
        self.assertEqual(endpoint.timeout, 9)
        self.assertIs(endpoint.checkPID, True)

    def test_defaults(self):
        """
        The path may come first without its name; the timeout is 30 seconds
        and no lock file is checked.
        """
        endpoint = clientFromString(reactor, "fdunix:/run/broker.sock")
        self.assertIsInstance(endpoint, UNIXClientEndpoint)
        self.assertEqual(endpoint.path, "/run/broker.sock")
        self.assertEqual(endpoint.timeout, 30)
        self.assertIs(endpoint.checkPID, False)

    def test_checkPID(self):
        """
        C{checkPID} is taken as well as C{lockfile}.
        """
        endpoint = clientFromString(reactor, "fdunix:/run/broker.sock:checkPID=1")
        self.assertIs(endpoint.checkPID, True)

    def test_unknownKeyword(self):
        """
        A keyword Twisted's C{unix:} does not know is refused.
        """
        self.assertRaises(TypeError, clientFromString, reactor, "fdunix:/run/b.sock:mode=600")

    def test_decimalOnly(self):
        """
        The timeout is ASCII digits only, and the lock file flag C{0} or C{1}.
        """
        for value in NOT_DECIMAL:
            self.assertRaises(
                ValueError, clientFromString, reactor, "fdunix:/run/b.sock:timeout=" + value
            )
        for value in ("2", "01", "+1", " 1", "\u0661"):
            for keyword in ("lockfile", "checkPID"):
                self.assertRaises(
                    ValueError, clientFromString, reactor,
                    "fdunix:/run/b.sock:%s=%s" % (keyword, value),
                )

    def test_lockfileAndAlias(self):
        """
        C{lockfile} and C{checkPID} both at once is an error.
        """
        self.assertRaises(
            ValueError, clientFromString, reactor, "fdunix:/run/b.sock:lockfile=0:checkPID=1"
        )


class RealTests(ReactorTestCase):
    """
    Endpoints from strings, listening and connecting for real.
    """

    @defer.inlineCallbacks
    def test_exchangeDescriptor(self):
        """
        A server and a client made from strings connect over pyamp_fds's
        transports and pass a descriptor; the socket file has the mode
        given, and the lock file is made and removed.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "broker.sock")
        built = []

        def build(addr):
            proto = Taker()
            built.append(proto)
            self._lost.append(watchLost(proto))
            return proto

        factory = protocol.Factory()
        factory.buildProtocol = build
        server = serverFromString(
            reactor,
            "fdunix:%s:mode=640:backlog=5:lockfile=1:allowedUIDs=%d" % (path, os.getuid()),
        )
        port = yield server.listen(factory)
        self.addCleanup(port.stopListening)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertTrue(os.path.lexists(path + ".lock"))

        client = yield clientFromString(reactor, "fdunix:path=%s:timeout=5" % (path,)).connect(
            protocol.Factory.forProtocol(pyamp_fds.AMP)
        )
        self._lost.append(watchLost(client))
        self.addCleanup(self._disconnect, client)
        self.assertTrue(IBatchingTransport.providedBy(client.transport))
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            result = yield client.callRemote(Take, fd=fd)
            self.assertEqual(result["inode"], os.fstat(fd).st_ino)
        finally:
            os.close(fd)
        [proto] = built
        self.assertTrue(IBatchingTransport.providedBy(proto.transport))

        yield self._disconnect(client)
        yield port.stopListening()
        self.assertFalse(os.path.lexists(path + ".lock"))
