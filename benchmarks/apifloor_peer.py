# -*- test-case-name: tests.test_anchors -*-
"""
The floor of AMP's own API on Twisted, for the end-to-end AMP scenario:
what any implementation of C{callRemote} and responders must do per call,
and nothing else, over pyamp_fds's transport and C framing.

    python benchmarks/apifloor_peer.py CALLS WINDOW [CLIENT SERVER]

The conversation is AMP's, byte for byte: a command box with C{_command},
C{_ask} and the descriptor's ordinal, the descriptor itself as
C{SCM_RIGHTS} (a duplicate queued per call, closed once sent, as
pyamp_fds's default), an answer box with C{_answer}.  The API's objects
are all made: a L{twisted.internet.defer.Deferred} per call, fired with
the parsed response; the responder found by the command's name and called
with keyword arguments parsed by the command's argument list; its dict
made into the answer.  Left out is everything that makes a protocol safe
or general: no descriptor budget, no check of what the peer sends, no
error boxes, no responders that answer later, no taking back what a failed
call queued.  So it is the least an AMP written in Python on Twisted's
reactor can cost:
pyamp_fds's distance from it is the price of those, and its distance from
the hand-written asyncio program is the API's.

CLIENT and SERVER are C{floor} (the default) or C{pyamp_fds}, to show that
the floor speaks AMP's wire: its client answered by a L{pyamp_fds.AMP}
server, and its server answering L{pyamp_fds.AMP}'s calls.

Prints {"descriptors", "seconds", "sendmsg", "recvmsg", "cpu"}, as
C{amp_peer.py}: the C{sendmsg} and C{recvmsg} calls of both processes and
their CPU seconds, each counted from its reactor's start (the client: from
its first call) to its last answer.  Exits non-zero if the server left a
descriptor it received open or did not receive them all.
"""

import json
import os
import resource
import sys
import time

from echo_peer import counted, cpuSeconds, runPair


def floorProtocol():
    """
    The floor's protocol class (imported late: the server is forked before
    any reactor exists).
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.protocols import amp
    from zope.interface import implementer

    import pyamp_fds
    from pyamp_fds.codec import BoxDecoder, encode_boxes
    from pyamp_fds.interfaces import IFileDescriptorsReceiver

    ASK, ANSWER, COMMAND = amp.ASK, amp.ANSWER, amp.COMMAND
    FLUSH_EVERY = pyamp_fds.AMP.flushEvery
    AmpBox = amp.AmpBox
    # An empty AmpBox without its __init__, which only converts str keys.
    newBox = AmpBox.__new__
    # Each command's arguments, worked out once: (wire name, Python name,
    # whether it is a descriptor, the argument).
    arguments = {}

    def argumentsOf(command):
        found = arguments.get(command)
        if found is None:
            found = arguments[command] = [
                (wireName, wireName.decode("ascii"), isinstance(argument, amp.Descriptor),
                 argument)
                for wireName, argument in command.arguments
            ]
        return found

    @implementer(IFileDescriptorsReceiver)
    class FloorAMP(Protocol):
        """
        Both ends of AMP with descriptors, at the least cost the API
        allows.  C{responders} maps a command name to the command and a
        function called with the protocol and the arguments.
        """

        responders = {}

        def connectionMade(self):
            self.decoder = BoxDecoder(amp.AmpBox)
            self.outgoing = []
            self.waiting = {}
            self.tags = 0
            self.sent = 0
            # Descriptors received and not yet claimed, from ordinal first.
            self.received = []
            self.first = 0

        def fileDescriptorReceived(self, descriptor):
            self.received.append(descriptor)

        def fileDescriptorsReceived(self, descriptors):
            self.received.extend(descriptors)

        def queue(self, box):
            # Every box of one turn goes out in one write (and sendmsg).
            self.outgoing.append(box)
            if len(self.outgoing) == 1:
                self.transport.addWriteHook(self.encode)

        def encode(self):
            boxes, self.outgoing = self.outgoing, []
            return encode_boxes(boxes)

        def callRemote(self, command, **kw):
            box = newBox(AmpBox)
            spec = arguments.get(command) or argumentsOf(command)
            for wireName, name, descriptor, argument in spec:
                if descriptor:
                    self.transport.sendFileDescriptor(kw[name])
                    box[wireName] = b"%d" % (self.sent,)
                    self.sent += 1
                else:
                    box[wireName] = argument.toStringProto(kw[name], self)
            self.tags += 1
            tag = box[ASK] = b"%x" % (self.tags,)
            box[COMMAND] = command.commandName
            self.queue(box)
            answer = Deferred()
            # The answer is parsed by its command's response list.
            self.waiting[tag] = (answer, command)
            return answer

        def dataReceived(self, data):
            claimed = 0
            for index, box in enumerate(self.decoder.feed(data)):
                if index % FLUSH_EVERY == FLUSH_EVERY - 1 and self.outgoing:
                    # As pyamp_fds does: the peer starts on the first
                    # answers while later ones are made.
                    self.transport.flushNow()
                tag = box.get(ANSWER)
                if tag is not None:
                    answer, command = self.waiting.pop(tag)
                    response = {}
                    for wireName, argument in command.response:
                        response[wireName.decode("ascii")] = argument.fromStringProto(
                            box[wireName], self)
                    answer.callback(response)
                    continue
                command, responder = self.responders[box[COMMAND]]
                kw = {}
                spec = arguments.get(command) or argumentsOf(command)
                for wireName, name, descriptor, argument in spec:
                    if descriptor:
                        ordinal = int(box[wireName]) - self.first
                        kw[name] = self.received[ordinal]
                        if ordinal >= claimed:
                            claimed = ordinal + 1
                    else:
                        kw[name] = argument.fromStringProto(box[wireName], self)
                result = responder(self, **kw)
                answer = newBox(AmpBox)
                for wireName, argument in command.response:
                    answer[wireName] = argument.toStringProto(
                        result[wireName.decode("ascii")], self)
                answer[ANSWER] = box[ASK]
                self.queue(answer)
            if claimed:
                self.first += claimed
                del self.received[:claimed]

    return FloorAMP


def take(proto, fd):
    os.close(fd)
    return {}


def setUp(kind, server):
    """
    The reactor, the protocol for C{kind} ("floor" or "pyamp_fds") and the
    command, with the responder on the server's.
    """
    from twisted.internet import reactor
    from twisted.protocols import amp

    import pyamp_fds

    class Take(amp.Command):
        arguments = [(b"fd", pyamp_fds.Descriptor())]
        response = []

    if kind == "pyamp_fds":
        base = pyamp_fds.AMP
        if server:
            class Server(pyamp_fds.AMP):
                @Take.responder
                def take(self, fd):
                    return take(self, fd)

            base = Server
        return reactor, base, Take
    base = floorProtocol()
    if server:
        base.responders = {Take.commandName: (Take, take)}
    return reactor, base, Take


def adopt(reactor, sock, proto):
    from twisted.internet import protocol

    from pyamp_fds.endpoints import adoptStreamConnection

    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: proto
    sock.setblocking(False)
    adoptStreamConnection(reactor, sock.fileno(), factory)
    sock.close()


def serve(kind, sock, reportFd):
    reactor, base, Take = setUp(kind, True)
    report = {}
    received = []

    class Server(base):
        def fileDescriptorsReceived(self, descriptors):
            received.append(len(descriptors))
            super().fileDescriptorsReceived(descriptors)

        def connectionLost(self, reason):
            report["cpu"] = cpuSeconds() - report["cpu"]
            report.update(counted(self.transport), received=sum(received))
            if kind == "pyamp_fds":
                super().connectionLost(reason)
            reactor.stop()

    adopt(reactor, sock, Server())
    reactor.callWhenRunning(lambda: report.update(cpu=cpuSeconds()))
    reactor.run()
    os.write(reportFd, json.dumps(report).encode())


def drive(kind, sock, calls, window):
    reactor, base, Take = setUp(kind, False)
    proto = base()
    adopt(reactor, sock, proto)
    fd = os.open(os.devnull, os.O_RDONLY)
    state = {"sent": 0, "answered": 0}
    outcome = {}

    def send():
        state["sent"] += 1
        proto.callRemote(Take, fd=fd).addCallback(answered).addErrback(failed)

    def answered(_):
        state["answered"] += 1
        if state["sent"] < calls:
            send()
        elif state["answered"] == calls:
            outcome["seconds"] = time.perf_counter() - outcome["started"]
            outcome["cpu"] = cpuSeconds() - outcome["cpuStarted"]
            outcome.update(counted(proto.transport))
            proto.transport.loseConnection()
            reactor.callLater(0.05, reactor.stop)

    def failed(failure):
        failure.printTraceback()
        reactor.stop()

    def start():
        outcome["started"] = time.perf_counter()
        outcome["cpuStarted"] = cpuSeconds()
        for _ in range(min(window, calls)):
            send()

    reactor.callWhenRunning(start)
    reactor.run()
    os.close(fd)
    if "seconds" not in outcome:
        raise SystemExit("the client stopped before every call was answered")
    return outcome


def main(calls, window, client="floor", server="floor"):
    # A window of calls holds a descriptor each in the client until sent.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    outcome, served = runPair(lambda sock, reportFd: serve(server, sock, reportFd),
                              lambda sock: drive(client, sock, calls, window))
    if served["received"] != calls:
        raise SystemExit("the server received %d descriptors of %d" % (served["received"], calls))
    print(json.dumps({
        "descriptors": calls,
        "seconds": outcome["seconds"],
        "sendmsg": outcome["sendmsg"] + served["sendmsg"],
        "recvmsg": outcome["recvmsg"] + served["recvmsg"],
        "cpu": outcome["cpu"] + served["cpu"],
    }))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:5])
