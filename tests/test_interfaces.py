"""
Tests for L{pyamp_fds.interfaces}: the transports, the protocols and the
test fakes provide the contract the protocols rely on.
"""

from twisted.internet.interfaces import IUNIXTransport
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyClass, verifyObject

import pyamp_fds
from pyamp_fds.interfaces import IBatchingTransport, IFileDescriptorsReceiver
from pyamp_fds.transport import Client, Server
from tests.reactorhelpers import ReactorTestCase
from tests import unixsim
from tests.test_properties import FakeBatchingTransport, FakeStream


class ContractTests(TestCase):
    """
    Who provides which interface.
    """

    def test_transportClasses(self):
        """
        Both transport classes declare and implement L{IBatchingTransport}.
        """
        for cls in (Server, Client):
            self.assertTrue(verifyClass(IBatchingTransport, cls))

    def test_fakeTransport(self):
        """
        The tests' fake batching transport provides the same contract, so the
        protocols treat it as they treat the real one.
        """
        fake = FakeBatchingTransport(FakeStream(lambda low, high: low))
        self.assertTrue(verifyObject(IBatchingTransport, fake))

    def test_inMemoryTransports(self):
        """
        The in-memory transports of L{tests.unixsim} provide the contracts of
        the transports they stand for: Twisted's C{IUNIXTransport}, and
        L{IBatchingTransport}.
        """
        proto = pyamp_fds.AMP()
        self.assertTrue(verifyObject(IUNIXTransport, unixsim.FakeUNIXTransport(proto, True)))
        self.assertFalse(IBatchingTransport.providedBy(unixsim.FakeUNIXTransport(proto, True)))
        self.assertTrue(
            verifyObject(IBatchingTransport, unixsim.FakeBatchingTransport(proto, True))
        )

    def test_protocols(self):
        """
        L{pyamp_fds.AMP} and L{pyamp_fds.BinaryBoxProtocol} take many
        descriptors at once.
        """
        self.assertTrue(verifyObject(IFileDescriptorsReceiver, pyamp_fds.AMP()))
        self.assertTrue(
            verifyObject(IFileDescriptorsReceiver, pyamp_fds.BinaryBoxProtocol(pyamp_fds.AMP()))
        )


class ConnectedContractTests(ReactorTestCase):
    """
    Real connections provide the contract.
    """

    def test_connectedTransport(self):
        """
        A real connected transport provides L{IBatchingTransport}, and its
        protocol L{IFileDescriptorsReceiver}.
        """
        server, client = self.connect(pyamp_fds.AMP(), pyamp_fds.AMP())
        for proto in (server, client):
            self.assertTrue(verifyObject(IBatchingTransport, proto.transport))
            self.assertTrue(verifyObject(IFileDescriptorsReceiver, proto))
