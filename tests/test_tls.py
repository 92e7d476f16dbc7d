"""
AMP's C{StartTLS} over pyamp_fds: the connection is encrypted from the
answer on, and commands, descriptors included, keep working both ways and
with stock peers.
"""

import os
import tempfile
import warnings

import pytest

# Twisted's TLS needs pyOpenSSL (its "tls" extra): without it these tests are
# skipped, and the rest of the suite still runs.
pytest.importorskip("OpenSSL", reason="TLS needs pyOpenSSL (twisted[tls])")

from twisted.internet import defer, endpoints, protocol, reactor, ssl  # noqa: E402
from twisted.protocols import amp  # noqa: E402

import pyamp_fds  # noqa: E402
from pyamp_fds import endpoints as fastEndpoints  # noqa: E402
from tests.fdcheck import identity  # noqa: E402
from tests.reactorhelpers import ReactorTestCase, watchLost  # noqa: E402
from tests.test_protocol import Give, Hello, Take, makeResponder  # noqa: E402


def selfSigned():
    # Twisted's certificate helpers still go through pyOpenSSL's deprecated
    # API.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dn = ssl.DN(CN="pyamp_fds")
        key = ssl.KeyPair.generate(size=2048)
        request = key.certificateRequest(dn)
        return key.newCertificate(
            key.signCertificateRequest(dn, request, lambda dn: True, 1, digestAlgorithm="sha256")
        )


# And so does the handshake.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CERTIFICATE = selfSigned()


def makeTLSResponder(base):
    class TLSResponder(makeResponder(base)):
        @amp.StartTLS.responder
        def tlsParameters(self):
            return {"tls_localCertificate": CERTIFICATE, "tls_verifyAuthorities": [CERTIFICATE]}

    return TLSResponder


class StartTLSTests(ReactorTestCase):
    """
    C{StartTLS} works as in Twisted, and descriptors still reach the right
    arguments afterwards.
    """

    @defer.inlineCallbacks
    def listenAndConnect(self, server, client, fastServer, fastClient):
        # TLS needs a client end and a server end: a real connection, not a
        # socketpair (both of whose adopted ends are servers).
        path = os.path.join(tempfile.mkdtemp(), "sock")
        self.addCleanup(os.rmdir, os.path.dirname(path))
        served = defer.Deferred()
        factory = protocol.Factory()

        def buildProtocol(addr):
            reactor.callLater(0, served.callback, None)
            return server

        factory.buildProtocol = buildProtocol
        ends = fastEndpoints if fastServer else endpoints
        port = yield ends.UNIXServerEndpoint(reactor, path).listen(factory)
        self.addCleanup(port.stopListening)
        ends = fastEndpoints if fastClient else endpoints
        for proto in (server, client):
            self._lost.append(watchLost(proto))
        yield ends.UNIXClientEndpoint(reactor, path).connect(
            protocol.Factory.forProtocol(lambda: client)
        )
        yield served
        self.addCleanup(client.transport.loseConnection)

    @defer.inlineCallbacks
    def test_startTLS(self):
        """
        After C{StartTLS} the client has verified the server's certificate,
        and commands go through, between pyamp_fds peers and with a stock
        peer on either side.  Descriptors still reach the right arguments
        wherever a pyamp_fds transport receives them (Twisted's own hands
        them to the TLS layer, which closes them, so a stock receiver gets
        none once TLS has started).
        """
        for fastServer, fastClient in [(True, True), (False, True), (True, False)]:
            server = makeTLSResponder(pyamp_fds.AMP if fastServer else amp.AMP)()
            client = (pyamp_fds.AMP if fastClient else amp.AMP)()
            yield self.listenAndConnect(server, client, fastServer, fastClient)
            yield client.callRemote(
                amp.StartTLS,
                tls_localCertificate=CERTIFICATE,
                tls_verifyAuthorities=[CERTIFICATE],
            )
            result = yield client.callRemote(Hello, text="secret")
            self.assertEqual(result, {"text": "SECRET"})
            self.assertEqual(
                client.transport.getPeerCertificate().digest("sha256"),
                CERTIFICATE.original.digest("sha256"),
            )
            if fastServer:
                fd = os.open(os.devnull, os.O_RDONLY)
                try:
                    expected = identity(fd)
                    answer = yield client.callRemote(Take, fd=fd, n=7)
                finally:
                    os.close(fd)
                self.assertEqual(answer, {"n": 7})
                self.assertEqual(server.taken, [expected])
            if fastServer and fastClient:
                answer = yield client.callRemote(Give)
                try:
                    self.assertEqual(identity(answer["fd"])[1], answer["inode"])
                finally:
                    os.close(answer["fd"])
