"""
AMP's C{StartTLS} over pyamp_fds: the connection is encrypted from the
answer on, and commands, descriptors included, keep working both ways and
with stock peers.
"""

import datetime
import os
import tempfile

import pytest

# Twisted's TLS needs pyOpenSSL (its "tls" extra): without it these tests are
# skipped, and the rest of the suite still runs.
pytest.importorskip("OpenSSL", reason="TLS needs pyOpenSSL (twisted[tls])")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from twisted.internet import defer, endpoints, protocol, reactor, ssl  # noqa: E402
from twisted.protocols import amp  # noqa: E402

import pyamp_fds  # noqa: E402
from pyamp_fds import endpoints as fastEndpoints  # noqa: E402
from tests.fdcheck import identity  # noqa: E402
from tests.reactorhelpers import ReactorTestCase, watchLost  # noqa: E402
from tests.socketdriver import DrivenTestCase  # noqa: E402
from tests.test_protocol import Give, Hello, Take, makeResponder  # noqa: E402


def selfSigned():
    # Made with cryptography itself, not Twisted's KeyPair: older Twisted
    # releases make certificates with pyOpenSSL calls that recent pyOpenSSL
    # releases no longer have.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyamp_fds")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return ssl.PrivateCertificate.loadPEM(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


# The handshake goes through pyOpenSSL's deprecated API too.
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


class WriteHooksBeforeTLSTests(DrivenTestCase):
    """
    Bytes written before C{startTLS} go out as they are, ahead of TLS.
    """

    def test_writeHookBeforeStartTLS(self):
        """
        A write hook added before C{startTLS}, inside the same read, has its
        bytes sent in the clear, as C{write}'s are: they were written before
        TLS started.
        """

        class Starting(protocol.Protocol):
            def dataReceived(self, data):
                self.transport.addWriteHook(lambda: b"plain")
                self.transport.startTLS(CERTIFICATE.options())

        connection = self.connect(Starting())
        connection.peer.sendall(b"go")
        connection.run()
        connection.peer.settimeout(1)
        self.assertEqual(connection.peer.recv(16), b"plain")
