# -*- test-case-name: tests.test_broker -*-
"""
The example broker (L{pyamp_fds.examples.broker}) tuned for the broker
benchmark: the same processes, channels, restarts and shutdown, with three
pieces made fast.

    python -m benchmarks.broker_tuned --port 8080 --workers 2

  - L{FastAcceptor} accepts with C{socket._accept} (CPython's private
    C{accept} without the socket object built around each connection, and
    the C{getsockname} that costs): the broker only passes descriptors on.
    Out of descriptors, it stops accepting for a moment instead of retrying
    at once.
  - The workers serve HTTP with L{HTTPConnection}, which reads and writes
    the socket itself, with no Twisted transport and no C{twisted.web}.
  - The broker hands each connection to the worker with the fewest in hand
    (taking turns among equals) rather than to the next one: every few
    milliseconds each worker tells it how many it has closed (L{Finished}),
    one box for many connections.

The same status lines as the example's.  L{benchmarks.reuseport} runs the
same workers' HTTP code without a broker, for comparison.
"""

import errno
import os
import socket
import sys

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.protocols import amp
from zope.interface import implementer

from pyamp_fds.examples import broker as template
from pyamp_fds.examples.broker import Serve

#: A request head longer than this is refused (the connection is closed).
MAX_HEAD = 64 * 1024

#: While more bytes than this wait to be sent on a connection, its requests
#: are not read.
MAX_UNSENT = 1024 * 1024


# Serving HTTP: the same in the workers of the tuned broker and of the
# SO_REUSEPORT baseline.


def makeResponses(body):
    """
    The two answers a worker gives: one that keeps the connection open, and
    one that announces it is closing.
    """
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % (len(body),)
    return head + b"\r\n" + body, head + b"Connection: close\r\n\r\n" + body


def keepsAlive(head):
    """
    Whether the connection stays open after answering the request whose head
    (request line and headers, without the blank line) is C{head}.

    HTTP/1.1 keeps it unless the client says C{Connection: close}, HTTP/1.0
    closes it unless the client says C{Connection: keep-alive}.  This server
    reads no request bodies: a request announcing one is answered, then the
    connection is closed, so that the body is never taken for a request.
    """
    lines = head.split(b"\r\n")
    tokens = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"connection":
            tokens.extend(token.strip() for token in value.lower().split(b","))
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    if lines[0].endswith(b"HTTP/1.1"):
        return b"close" not in tokens
    return b"keep-alive" in tokens


@implementer(IReadDescriptor, IWriteDescriptor)
class HTTPConnection:
    """
    Serves one accepted TCP socket: a fixed response to every request, until
    the client closes the connection or asks for it to be closed.

    Every C{recv} and C{send} passes C{MSG_DONTWAIT}, so the socket is used
    as it was accepted, with no C{fcntl} to make it non-blocking first.
    While more than L{MAX_UNSENT} bytes of answers wait for a client that
    does not read them, no more requests are read.

    @ivar whenClosed: called with no arguments once the socket is closed.
    """

    def __init__(self, reactor, sock, responses, whenClosed=lambda: None):
        self.reactor = reactor
        self.socket = sock
        self.whenClosed = whenClosed
        self._keepAlive, self._closing = responses
        self._received = b""
        self._unsent = bytearray()
        self._closeWhenSent = False
        self._reading = False
        self._writing = False

    def start(self):
        """
        Serve the requests that have arrived already, then wait for more.
        A client that sends its request at once and asks for the connection
        to be closed is served without the reactor.
        """
        self.doRead()
        if self.socket is not None:
            self._watch()

    def fileno(self):
        return self.socket.fileno() if self.socket is not None else -1

    def logPrefix(self):
        return "HTTPConnection"

    def doRead(self):
        try:
            data = self.socket.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.close()
            return None
        if self._closeWhenSent:
            # Whatever follows the request that asked us to close is ignored.
            return None
        received = self._received + data
        answers = []
        start = 0
        while True:
            end = received.find(b"\r\n\r\n", start)
            if end < 0:
                break
            head, start = received[start:end], end + 4
            if keepsAlive(head):
                answers.append(self._keepAlive)
            else:
                answers.append(self._closing)
                self._closeWhenSent = True
                start = len(received)
                break
        self._received = received[start:]
        if len(self._received) > MAX_HEAD:
            self.close()
            return None
        if answers:
            self._unsent += b"".join(answers)
            self._flush()
        return None

    def doWrite(self):
        self._flush()
        return None

    def _flush(self):
        try:
            sent = self.socket.send(self._unsent, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        del self._unsent[:sent]
        if self._closeWhenSent and not self._unsent:
            self.close()
        elif self._reading or self._writing or self._unsent:
            # Registered already, or must be: keep the registrations right.
            # (A connection served whole in start() is never registered.)
            self._watch()

    def _watch(self):
        """
        Read unless too much is waiting to be sent; write while anything is.
        """
        reading = len(self._unsent) <= MAX_UNSENT
        if reading != self._reading:
            self._reading = reading
            if reading:
                self.reactor.addReader(self)
            else:
                self.reactor.removeReader(self)
        writing = bool(self._unsent)
        if writing != self._writing:
            self._writing = writing
            if writing:
                self.reactor.addWriter(self)
            else:
                self.reactor.removeWriter(self)

    def connectionLost(self, reason):
        # The reactor ends every connection this way when it shuts down.
        self.close()

    def close(self):
        """
        Close the socket, once, and call L{whenClosed}.
        """
        if self.socket is None:
            return
        if self._reading:
            self.reactor.removeReader(self)
        if self._writing:
            self.reactor.removeWriter(self)
        self.socket.close()
        self.socket = None
        self.whenClosed()


def tcpSocket(fd):
    """
    A socket object for the accepted TCP connection C{fd}.
    """
    # Naming family, type and protocol spares the getsockopt calls that
    # would ask the socket for them.
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, fd)


def responsesOfThisWorker():
    return makeResponses(b"Hello from worker %d\n" % (os.getpid(),))


# Accepting.


class FastAcceptor(template.Acceptor):
    """
    The example's L{template.Acceptor}, accepting with C{socket._accept}.
    """

    #: After running out of descriptors, stop accepting for this long.
    pauseOnExhaustion = 0.1

    _paused = None

    def doRead(self):
        # socket.accept() without the socket object it builds around each
        # descriptor (and the getsockname() that costs): the broker only
        # passes descriptors on.  Accepted descriptors are close-on-exec.
        accept = self.socket._accept
        accepted = []
        try:
            for _ in range(self.maxPerTurn):
                try:
                    fd, address = accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.ECONNABORTED:
                        continue
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        # The listener stays readable: retrying at once would spin.
                        self._log.warn("accept: {error}; pausing", error=e)
                        self.stopReading()
                        self._paused = self.reactor.callLater(
                            self.pauseOnExhaustion, self.startReading
                        )
                        break
                    raise
                accepted.append(fd)
        finally:
            if accepted:
                self.onConnections(accepted)
        return None

    def connectionLost(self, reason):
        if self._paused is not None and self._paused.active():
            self._paused.cancel()
        template.Acceptor.connectionLost(self, reason)


# Sharing connections out by load.


class Finished(amp.Command):
    """
    Worker to broker: this many of the connections handed over have been
    closed since the last report.
    """

    arguments = [(b"count", amp.Integer())]
    requiresAnswer = False


class TunedWorkerChannel(template.WorkerChannel):
    """
    A worker's end of its channel: serves with L{HTTPConnection}, and
    reports the connections it has closed.

    @ivar reportDelay: how long after closing a connection the worker tells
        the broker, in seconds: every connection closed meanwhile goes in
        the same report.  Reports are a cost to both ends; a broker that
        learns of a closed connection a few milliseconds late still shares
        connections out evenly.
    """

    reportDelay = 0.005

    def __init__(self, reactor):
        template.WorkerChannel.__init__(self, reactor)
        self.responses = responsesOfThisWorker()
        self._closed = 0

    @Serve.responder
    def serve(self, connections):
        for fd in connections:
            connection = HTTPConnection(
                self.reactor, tcpSocket(fd), self.responses, self._connectionClosed
            )
            connection.start()
        return {}

    def _connectionClosed(self):
        self._closed += 1
        if self._closed == 1:
            self.reactor.callLater(self.reportDelay, self._report)

    def _report(self):
        count, self._closed = self._closed, 0
        if self.transport is not None:
            self.callRemote(Finished, count=count)


class TunedBrokerChannel(template.BrokerChannel):
    """
    The broker's end of one worker's channel.

    @ivar load: connections handed over that the worker has not reported
        closed.
    """

    load = 0

    @Finished.responder
    def finished(self, count):
        self.load -= count
        return {}


class TunedBroker(template.Broker):
    """
    The example's broker with L{FastAcceptor}, workers serving with
    L{HTTPConnection}, and connections shared out by load.
    """

    workerModule = __spec__.name
    acceptorClass, channelClass = FastAcceptor, TunedBrokerChannel

    def handOver(self, fds):
        """
        Share the connections C{fds} out among the workers, each to the one
        with the fewest connections in hand at that moment (taking turns
        among equals), then send each worker its share in one command.
        """
        channels = self.channels
        if not channels:
            # No worker to serve them (all are restarting): refuse them.
            for fd in fds:
                os.close(fd)
            return
        loads = [channel.load for channel in channels]
        shares = [[] for _ in channels]
        count = len(channels)
        for fd in fds:
            self.turn = turn = (self.turn + 1) % count
            best = turn
            for i in range(turn + 1, turn + count):
                i %= count
                if loads[i] < loads[best]:
                    best = i
            loads[best] += 1
            shares[best].append(fd)
        for channel, share in zip(channels, shares):
            if share:
                channel.load += len(share)
                channel.callRemote(Serve, connections=share)


def main(argv=None):
    return template.main(argv, brokerClass=TunedBroker, workerChannelClass=TunedWorkerChannel)


if __name__ == "__main__":
    sys.exit(main())
