"""
AMP's C{StartTLS} over pyamp_fds: the connection is encrypted from the
answer on, and commands, descriptors included, keep working both ways and
with stock peers.
"""

import datetime
import os
import tempfile

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.protocols import amp

import pyamp_fds
from pyamp_fds import endpoints as fastEndpoints
from tests.fdcheck import identity
from tests.reactorhelpers import ReactorTestCase, watchLost
from tests.test_protocol import Give, Hello, Take, makeResponder


def selfSigned():
    """
    A self-signed certificate with its key, made with C{cryptography}:
    before 26.10, Twisted's own C{KeyPair} helpers build certificate
    requests with pyOpenSSL's C{X509Req}, which current pyOpenSSL (26.4)
    no longer has.

    @rtype: L{ssl.PrivateCertificate}
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyamp_fds")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return ssl.PrivateCertificate.loadPEM(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


# Twisted's TLS goes through pyOpenSSL's deprecated API.
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
