# -*- test-case-name: tests.test_protocol -*-
"""
Twisted's AMP with the framing in C and the descriptor path batched.

L{AMP} and L{BinaryBoxProtocol} are drop-in subclasses of Twisted's: every
command, responder, locator, protocol switch and TLS start works as there.
What changes:

  - Received bytes are cut into boxes by L{pyamp_fds.codec.BoxDecoder}, a
    whole read at once; boxes are then dispatched one by one, exactly as
    Twisted does, stopping at a protocol switch to hand the rest over.
  - Sent boxes are checked at once (Twisted's C{TooLong} and C{TypeError}
    are raised by C{callRemote} itself) and, on a pyamp_fds transport,
    encoded together just before the transport writes.
  - Descriptors are held per connection and checked: a box naming one that
    never arrived, or was already claimed, is a protocol error that closes
    the connection, closes every descriptor it held and fails the calls
    still waiting with a L{DescriptorProtocolError}.
"""

import errno
import os
from types import MethodType

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IUNIXTransport
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from pyamp_fds.codec import (
    DEFAULT_MAX_BOX_SIZE,
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    BoxDecoder,
    encode_box,
    encode_boxes,
)
from pyamp_fds.errors import (
    DescriptorListTooLong,
    DescriptorsUnsupported,
    FramingError,
    InvalidDescriptorOrdinal,
    KeyTooLong,
    TooManyUnclaimedDescriptors,
    UnknownDescriptor,
)
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE, close_all, _fileno
from pyamp_fds.transport import isBatching

__all__ = ["AMP", "BinaryBoxProtocol", "Descriptor", "DescriptorList"]

_log = Logger()



class _Accelerated:
    """
    What L{AMP} and L{BinaryBoxProtocol} add to Twisted's classes.

    @ivar maxUnclaimedDescriptors: how many descriptors the peer may have
        sent that no box has claimed yet; past it, the connection is closed.
        A L{DescriptorList}'s descriptors all arrive before its box, so this
        leaves room for one of the longest by default (4096) and more.
    @ivar maxBoxSize: the largest box accepted from the peer, in bytes.
    """

    maxUnclaimedDescriptors = 8192
    maxBoxSize = DEFAULT_MAX_BOX_SIZE
    #: While dispatching a long run of boxes from one read, send what they
    #: produced every this many boxes: the peer starts on the first answers
    #: while later ones are still being made, so both ends work at once.
    flushEvery = 128

    _decoder = None
    _failReason = None
    _batching = False
    _dispatching = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Twisted's exchanger set this to a plain dict.pop: replace it with
        # the checked claim, for stock amp.Descriptor arguments too.
        self._getDescriptor = self._claimDescriptor
        self._received = 0
        self._sent = 0
        self._claimedInBox = []
        self._outgoing = []

    # Connection

    def makeConnection(self, transport):
        if self._decoder is None:
            # One made by dataReceived before the connection keeps what it holds.
            self._decoder = BoxDecoder(amp.AmpBox, self.maxBoxSize)
        self._batching = isBatching(transport)
        super().makeConnection(transport)

    def connectionLost(self, reason):
        self._closeUnclaimed()
        self._outgoing = []
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._failReason is not None:
            reason = self._failReason
        super().connectionLost(reason)

    # Receiving boxes

    def dataReceived(self, data):
        if self._justStartedTLS:
            self._justStartedTLS = False
        if self.innerProtocol is not None:
            self.innerProtocol.dataReceived(data)
            return
        if self._failReason is not None:
            return
        if self._decoder is None:
            # Not connected (yet): Twisted's parser works then too, as
            # amp.parse and Twisted's own tests use it.
            self._decoder = BoxDecoder(amp.AmpBox, self.maxBoxSize)
        try:
            boxes = self._decoder.feed(data)
            error = None
        except FramingError as e:
            boxes, error = e.boxes, e
        receiver = self.boxReceiver
        every = self.flushEvery if self._batching and len(boxes) > self.flushEvery else 0
        self._dispatching = True
        try:
            for index, box in enumerate(boxes):
                receiver.ampBoxReceived(box)
                # What the box claimed is its responder's (or its caller's) now.
                self._claimedInBox = []
                if every and index % every == every - 1 and self._outgoing:
                    self.transport.flushNow()
                if self.innerProtocol is not None:
                    rest = self._decoder.remainder(index)
                    if rest:
                        self.innerProtocol.dataReceived(rest)
                    return
                if self._failReason is not None:
                    return
        finally:
            self._dispatching = False
        if error is not None:
            self._framingError(error)

    def _framingError(self, error):
        if isinstance(error, KeyTooLong):
            # Twisted's own path: connectionLost reports TooLong.
            self.lengthLimitExceeded(MAX_KEY_LENGTH + 1)
            return
        self._protocolError(error)

    def _protocolError(self, error):
        """
        Close the connection for a fault of the peer's: log it once, close
        every descriptor held, and fail the calls waiting with C{error}.
        """
        if self._failReason is None:
            self._failReason = Failure(error)
            _log.error(
                "{protocol}: {error}; closing the connection to {peer}",
                protocol=self.__class__.__name__,
                error=error,
                peer=self.transport.getPeer() if self.transport is not None else None,
            )
        self._closeUnclaimed()
        if self.transport is not None:
            self.transport.loseConnection()

    def _switchTo(self, newProto, clientFactory=None):
        # The switch box, and every box before it, go before the new
        # protocol's bytes.
        self._flushOutgoing()
        self.innerProtocol = newProto
        self.innerProtocolClientFactory = clientFactory
        newProto.makeConnection(self.transport)
        if not self._dispatching:
            # Outside dispatch (a responder that answered later): what is
            # held for a box not yet complete belongs to the new protocol.
            rest = self._decoder.takePending()
            if rest:
                newProto.dataReceived(rest)

    def _startTLS(self, certificate, verifyAuthorities):
        self._flushOutgoing()
        return super()._startTLS(certificate, verifyAuthorities)

    # Sending boxes

    def sendBox(self, box):
        # A snapshot: later changes to the caller's box must not reach the wire.
        self._sendOwnBox(box, dict)

    def _sendOwnBox(self, box, snapshot=None):
        """
        L{sendBox} for a box nobody else holds, which needs no snapshot.
        """
        if self._locked:
            raise amp.ProtocolSwitched(
                "This connection has switched: no AMP traffic allowed."
            )
        if self.transport is None:
            raise ConnectionLost()
        if self._startingTLSBuffer is not None:
            self._startingTLSBuffer.append(box)
        elif not self._batching:
            self.transport.write(encode_box(box))
        else:
            _checkBox(box)
            self._outgoing.append(box if snapshot is None else snapshot(box))
            if len(self._outgoing) == 1:
                self.transport.addWriteHook(self._encodeOutgoing)

    def _encodeOutgoing(self):
        boxes, self._outgoing = self._outgoing, []
        return encode_boxes(boxes) if boxes else b""

    def _flushOutgoing(self):
        if self._outgoing and self.transport is not None:
            self.transport.write(b"")

    # Descriptors

    def fileDescriptorReceived(self, descriptor):
        # Only Twisted's own transports call this, one at a time, and they
        # receive without MSG_CMSG_CLOEXEC: a child spawned before the box
        # that names it is handled must not inherit it.
        try:
            os.set_inheritable(descriptor, False)
        except OSError as e:
            # Not open here (a fake transport's number, as in Twisted's own
            # tests): recorded as it is, as Twisted records it.
            if e.errno != errno.EBADF:
                raise
        self.fileDescriptorsReceived((descriptor,))

    def fileDescriptorsReceived(self, descriptors):
        """
        Take descriptors in the order they arrived; each gets the next ordinal.
        """
        if self._failReason is not None:
            close_all(descriptors)
            return
        start = self._received
        self._received = start + len(descriptors)
        self._descriptors.update(zip(range(start, self._received), descriptors))
        if len(self._descriptors) > self.maxUnclaimedDescriptors:
            self._protocolError(
                TooManyUnclaimedDescriptors(
                    "%d descriptors received and not claimed by any box (limit %d)"
                    % (len(self._descriptors), self.maxUnclaimedDescriptors)
                )
            )

    def _claimDescriptor(self, ordinal):
        try:
            descriptor = self._descriptors.pop(ordinal)
        except KeyError:
            error = UnknownDescriptor(ordinal, self._received)
            self._protocolError(error)
            raise error from None
        # Until the box is dispatched, a fault in a later argument must not
        # leave this one with nobody.
        self._claimedInBox.append(descriptor)
        return descriptor

    def _dropClaimed(self):
        """
        Close the descriptors the box being dispatched has claimed: its
        arguments failed to parse, so no responder or caller will own them.
        """
        claimed, self._claimedInBox = self._claimedInBox, []
        close_all(claimed)

    def _closeUnclaimed(self):
        held = list(self._descriptors.values()) + self._claimedInBox
        self._descriptors.clear()
        self._claimedInBox = []
        close_all(held)

    def _toStrings(self, spec, objects, box):
        """
        C{spec.toStrings}, taking back the descriptors its arguments queued
        if a later argument fails: the box will not be sent, so neither may
        they (the peer would hold them unclaimed; handed-over ones are ours
        to close), and their ordinals are given again.
        """
        transport = self.transport
        if not self._batching or transport is None:
            return spec.toStrings(objects, box, self)
        sent, mark = self._sent, transport._descriptorMark()
        try:
            return spec.toStrings(objects, box, self)
        except BaseException:
            transport._withdrawDescriptors(mark)
            self._sent = sent
            raise

    def _sendDescriptor(self, descriptor, transfer):
        """
        Queue a descriptor on the transport and return its ordinal.
        """
        transport = self.transport
        if transport is None:
            raise ConnectionLost()
        if self._batching:
            transport.sendFileDescriptor(descriptor, transfer)
        elif IUNIXTransport.providedBy(transport):
            if transfer:
                raise DescriptorsUnsupported(
                    "transfer=True needs a pyamp_fds transport: Twisted's own cannot "
                    "say when a descriptor has been sent"
                )
            transport.sendFileDescriptor(_fileno(descriptor))
        else:
            raise _unsupported(transport)
        ordinal = self._sent
        self._sent += 1
        return ordinal

    def _sendFileDescriptor(self, descriptor):
        # Stock amp.Descriptor arguments come here.
        return self._sendDescriptor(descriptor, False)


def _unsupported(transport):
    return DescriptorsUnsupported(
        "descriptors can only be sent over a UNIX socket transport, not %r" % (transport,)
    )


def _checkBox(box):
    for key, value in box.items():
        if (
            type(key) is not bytes
            or type(value) is not bytes
            or not 0 < len(key) <= MAX_KEY_LENGTH
            or len(value) > MAX_VALUE_LENGTH
        ):
            # The encoder knows the exact error; a bytes-like value is fine.
            encode_box(box)
            return


class BinaryBoxProtocol(_Accelerated, amp.BinaryBoxProtocol):
    """
    L{amp.BinaryBoxProtocol} with the framing in C and checked descriptors.
    """


class _AlreadyParsed:
    """
    A command whose arguments were parsed already: lets Twisted's own
    serialization chain take over from a responder's result.
    """

    def __init__(self, command):
        self._command = command

    def parseArguments(self, box, protocol):
        return {}

    def __getattr__(self, name):
        return getattr(self._command, name)


class _CommandPlan:
    """
    How L{AMP} serves and calls one command type, worked out once: which of
    Twisted's steps the command leaves as they are (those run inline, as
    Twisted runs them) and which it overrides (those are called).

    @ivar arguments: the argument spec, or L{None} if the command overrides
        C{parseArguments}.
    @ivar response: the response spec, or L{None} if the command overrides
        C{makeResponse}.
    @ivar directCall: whether C{callRemote} may skip making an instance of
        the command: its construction, argument checking and sending are
        Twisted's own.
    """

    def __init__(self, command):
        self.command = command
        self.arguments = self.response = None
        if _inherits(command, "parseArguments") and _inherits(command, "makeArguments"):
            self.arguments = _spec(command, "arguments")
        if _inherits(command, "makeResponse") and _inherits(command, "parseResponse"):
            self.response = _spec(command, "response")
        self.directCall = (
            self.arguments is not None
            and command.__init__ is amp.Command.__init__
            and command._doCommand is amp.Command._doCommand
        )

    def parseResponse(self, box, proto):
        if self.response is not None:
            return self.response.toObjects(box, proto)
        return self.command.parseResponse(box, proto)

    def remoteError(self, error):
        """
        What C{Command._doCommand}'s errback makes of a L{amp.RemoteAmpError}:
        the command's own exception for that code.
        """
        errorType = self.command.reverseErrors.get(error.errorCode, amp.UnknownRemoteError)
        return errorType(error.description)


def _newBox(boxType):
    # AmpBox.__init__ only converts str keys: an empty one needs none of it.
    if boxType is amp.AmpBox:
        return amp.AmpBox.__new__(amp.AmpBox)
    return boxType()


def _newResponseBox(command):
    """
    An empty response box for C{command}; or, as C{Command.makeResponse}
    gives when the command's C{responseType} cannot be made, a failed
    L{Deferred} with why.
    """
    try:
        return _newBox(command.responseType)
    except BaseException:
        return fail()


def _inherits(command, name):
    return getattr(command, name).__func__ is getattr(amp.Command, name).__func__


_plans = {}


def _plan(command):
    plan = _plans.get(command)
    if plan is None:
        plan = _plans[command] = _CommandPlan(command)
    return plan


class AMP(_Accelerated, amp.AMP):
    """
    L{amp.AMP} with the framing in C and checked, batched descriptors.

    Commands answered synchronously (a responder that returns a dict) are
    answered without Twisted's C{Deferred} chain; anything else (an
    exception, a L{Deferred}, a result that does not serialize) runs through
    Twisted's own chain from that point, so the outcome is the same.  Calls
    made with C{callRemote} have their answers parsed before their
    L{Deferred} fires, rather than by callbacks in front of the caller's:
    the caller sees the same results and errors.
    """

    _prepared = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The plans of calls waiting for an answer, by tag.
        self._waitingPlans = {}

    # Serving

    def _commandReceived(self, box):
        entry = None
        if self.locator is self and type(self).locateResponder is amp.AMP.locateResponder:
            entry = self._commandDispatch.get(box[amp.COMMAND])
        if entry is None:
            return super()._commandReceived(box)
        command, responderFunc = entry
        plan = _plan(command)
        try:
            if plan.arguments is not None:
                kw = plan.arguments.toObjects(box, self)
            else:
                kw = command.parseArguments(box, self)
        except BaseException:
            failure = fail()
            self._dropClaimed()
            return self._answerByTwisted(box, failure)
        try:
            result = responderFunc(self, **kw)
        except BaseException:
            result = fail()
        if not isinstance(result, Deferred):
            try:
                if plan.response is not None:
                    answer = _newResponseBox(command)
                    if not isinstance(answer, Deferred):
                        answer = self._toStrings(plan.response, result, answer)
                else:
                    answer = command.makeResponse(result, self)
            except BaseException:
                result = fail(
                    amp.BadLocalReturn(
                        "%r returned %r and %r could not serialize it"
                        % (MethodType(responderFunc, self), result, command),
                        Failure(),
                    )
                )
            else:
                if isinstance(answer, Deferred):
                    # Command.makeResponse's way of failing when the response
                    # box cannot be made (StartTLS's, without TLS): that
                    # error is the answer, through Twisted's chain.
                    chain = self._wrapWithSerialization(lambda **kw: answer, _AlreadyParsed(command))
                    return self._answerByTwisted(box, chain(box))
                ask = box.get(amp.ASK)
                if ask is not None:
                    answer[amp.ANSWER] = ask
                    try:
                        if self.boxSender is self and type(answer) is amp.AmpBox:
                            # Twisted's _safeEmit, for a plain box made here
                            # (other boxes act when sent: protocol switches).
                            try:
                                self._sendOwnBox(answer)
                            except (amp.ProtocolSwitched, ConnectionLost):
                                pass
                        else:
                            self._safeEmit(answer)
                    except BaseException:
                        self.unhandledError(Failure())
                return None
        chain = self._wrapWithSerialization(lambda **kw: result, _AlreadyParsed(command))
        return self._answerByTwisted(box, chain(box))

    def _answerByTwisted(self, box, deferred):
        self._prepared = deferred
        try:
            return super()._commandReceived(box)
        finally:
            self._prepared = None

    def dispatchCommand(self, box):
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            return prepared
        return super().dispatchCommand(box)

    def _wrapWithSerialization(self, aCallable, command):
        # Twisted's chain, for responders found by an overridden
        # locateResponder: its doit raises only when the arguments fail to
        # parse (the responder's own failures go into its Deferred), and
        # then the descriptors they claimed have no owner.
        def responder(**kw):
            self._claimedInBox = []
            return aCallable(**kw)

        doit = super()._wrapWithSerialization(responder, command)

        def parseOrDrop(box):
            try:
                return doit(box)
            except BaseException:
                self._dropClaimed()
                raise

        return parseOrDrop

    # Calling

    def callRemote(self, commandType, *a, **kw):
        plan = _plan(commandType)
        if a or not plan.directCall:
            return super().callRemote(commandType, *a, **kw)
        spec = plan.arguments
        forgotten = [name for name in spec.required if name not in kw]
        if forgotten:
            return fail(
                amp.InvalidSignature(
                    "forgot {} for {}".format(", ".join(forgotten), commandType.commandName)
                )
            )
        for name in kw:
            if name not in spec.allowed:
                raise amp.InvalidSignature(f"{name} is not a valid argument")
        box = self._toStrings(spec, kw, _newBox(commandType.commandType))
        requiresAnswer = commandType.requiresAnswer
        if self.boxSender is not self or type(box) is not amp.AmpBox:
            d = self._sendBoxCommand(commandType.commandName, box, requiresAnswer)
            if requiresAnswer and self._failAllReason is None:
                self._waitingPlans[box[amp.ASK]] = plan
            return d
        # Twisted's _sendBoxCommand, for a box made here.
        if self._failAllReason is not None:
            return fail(self._failAllReason) if requiresAnswer else None
        box[amp.COMMAND] = commandType.commandName
        tag = self._nextTag()
        if not requiresAnswer:
            self._sendOwnBox(box)
            return None
        box[amp.ASK] = tag
        self._sendOwnBox(box)
        d = self._outstandingRequests[tag] = Deferred()
        self._waitingPlans[tag] = plan
        return d

    def _answerReceived(self, box):
        plan = self._waitingPlans.pop(box[amp.ANSWER], None)
        if plan is None:
            return super()._answerReceived(box)
        question = self._outstandingRequests.pop(box[amp.ANSWER])
        question.addErrback(self.unhandledError)
        try:
            result = plan.parseResponse(box, self)
        except BaseException:
            failure = Failure()
            self._dropClaimed()
            question.errback(failure)
        else:
            question.callback(result)

    def _errorReceived(self, box):
        plan = self._waitingPlans.pop(box[amp.ERROR], None)
        if plan is None:
            return super()._errorReceived(box)
        # Twisted's own, with the conversion its callRemote chains in front.
        question = self._outstandingRequests.pop(box[amp.ERROR])
        question.addErrback(self.unhandledError)
        code = box[amp.ERROR_CODE]
        description = box[amp.ERROR_DESCRIPTION].decode("utf-8", "replace")
        if code in amp.PROTOCOL_ERRORS:
            error = amp.PROTOCOL_ERRORS[code](code, description)
        else:
            error = plan.remoteError(amp.RemoteAmpError(code, description))
        question.errback(Failure(error))

    def failAllOutgoing(self, reason):
        self._waitingPlans.clear()
        super().failAllOutgoing(reason)


class _ArgumentSpec:
    """
    A command's argument list, with what Twisted works out on every call
    worked out once: each wire name's Python name, and which arguments use
    L{amp.Argument}'s own C{toBox}/C{fromBox} (those are run inline, exactly
    as Twisted runs them; the others through their own methods).
    """

    def __init__(self, arglist):
        self.arglist = arglist
        self.entries = []
        self.required = []
        self.allowed = set()
        for wireName, argument in arglist:
            pythonName = amp._wireNameToPythonIdentifier(wireName)
            self.allowed.add(pythonName)
            if not argument.optional:
                self.required.append(pythonName)
            kind = type(argument)
            plain = (
                kind.toBox is amp.Argument.toBox
                and kind.fromBox is amp.Argument.fromBox
                and kind.retrieve is amp.Argument.retrieve
            )
            self.entries.append((wireName, pythonName, argument, argument.optional, plain))

    def toStrings(self, objects, strings, proto):
        # amp._objectsToStrings, with Argument.toBox inlined.
        objects = dict(objects)
        for wireName, pythonName, argument, optional, plain in self.entries:
            if not plain:
                argument.toBox(wireName, strings, objects, proto)
                continue
            if optional:
                value = objects.pop(pythonName, None)
                if value is None:
                    continue
            else:
                value = objects.pop(pythonName)
            strings[wireName] = argument.toStringProto(value, proto)
        return strings

    def toObjects(self, strings, proto):
        # amp._stringsToObjects, with Argument.fromBox inlined.
        objects = {}
        strings = dict(strings)
        for wireName, pythonName, argument, optional, plain in self.entries:
            if not plain:
                argument.fromBox(wireName, strings, objects, proto)
                continue
            if optional:
                value = strings.pop(wireName, None)
                if value is None:
                    objects[pythonName] = None
                    continue
            else:
                value = strings.pop(wireName)
            objects[pythonName] = argument.fromStringProto(value, proto)
        return objects


_specs = {}


def _spec(commandType, which):
    key = (commandType, which)
    spec = _specs.get(key)
    if spec is None:
        spec = _specs[key] = _ArgumentSpec(getattr(commandType, which))
    return spec


class Descriptor(amp.Descriptor):
    """
    A descriptor argument, on the wire the same as L{amp.Descriptor}.

    On a pyamp_fds transport, ownership is explicit: by default the caller
    may close its descriptor as soon as C{callRemote} (or the responder)
    returns, since a duplicate is sent; with C{transfer=True} the descriptor
    itself is handed over and closed once sent, or when the connection is
    lost first.  A call that raises takes nothing: on a connection already
    lost (L{ConnectionLost}), or when another argument of the same box
    fails, a handed-over descriptor is still the caller's.  On Twisted's own
    transports, Twisted's rule holds (keep it open until it has been sent)
    and C{transfer=True} is refused.

    Values may be ints or objects with C{fileno()}.  Received values are
    ints, owned by the receiver.
    """

    def __init__(self, optional=False, transfer=False):
        amp.Descriptor.__init__(self, optional)
        self.transfer = transfer

    def toStringProto(self, inObject, proto):
        send = getattr(proto, "_sendDescriptor", None)
        if send is not None:
            return b"%d" % (send(inObject, self.transfer),)
        # A stock protocol.
        transport = proto.transport
        if isBatching(transport):
            transport.sendFileDescriptor(inObject, self.transfer)
            return b"%d" % (proto._sendingDescriptorCounter(),)
        if not IUNIXTransport.providedBy(transport):
            raise _unsupported(transport)
        if self.transfer:
            raise DescriptorsUnsupported("transfer=True needs a pyamp_fds transport")
        return b"%d" % (proto._sendFileDescriptor(_fileno(inObject)),)

    def fromStringProto(self, inString, proto):
        if not inString.isdigit():
            error = InvalidDescriptorOrdinal(
                "descriptor argument %r is not a decimal ordinal" % (inString,)
            )
            if isinstance(proto, _Accelerated):
                proto._protocolError(error)
            raise error
        return proto._getDescriptor(int(inString))


class DescriptorList(amp.Argument):
    """
    An argument whose value is a list of descriptors (ints or objects with
    C{fileno()}), empty lists included.  Received values are lists of ints,
    owned by the receiver.

    Ownership is as for L{Descriptor}: by default duplicates are sent and the
    caller may close its own descriptors as soon as C{callRemote} (or the
    responder) returns; with C{transfer=True} the descriptors themselves are
    handed over and closed once sent, or when the connection is lost first.
    With C{duplicate=False}, the descriptors themselves are sent and left
    open, Twisted's own rule: the caller must keep them open until they have
    gone (for a command argument, until the call's L{Deferred} fires).  It
    spares two system calls per descriptor (duplicating and closing), which
    is most of the sender's cost.

    The descriptors of one list are queued together, so their ordinals on
    the connection are consecutive and the box carries only the first and
    the count: C{b"START:COUNT"} in decimal.  The kernel needs one byte of
    data for every C{sendmsg} that carries descriptors, 253 at most, so the
    value is padded with spaces to at least one byte per 253 descriptors:
    however small the rest of the box, every group of descriptors then has a
    byte of its box to travel with, and all of them arrive before the box
    is complete.  The receiver checks the value strictly (it must be exactly
    what this class writes for that start and count); a malformed value, a
    list longer than the receiver's C{maxDescriptors}, or an ordinal not
    received or already claimed closes the connection as L{Descriptor}'s
    faults do, with every descriptor it held.

    Why not C{amp.ListOf(amp.Descriptor())}: C{ListOf} serializes its
    elements with their C{toString}, which is not given the protocol, but a
    descriptor's value is an ordinal only the connection can give (and the
    descriptor must be queued on its transport), so L{amp.Descriptor} works
    only through C{toStringProto}; C{ListOf} can neither number nor send
    descriptors, nor claim them on receipt.

    Sending needs a pyamp_fds transport (L{pyamp_fds.transport.Server} or
    L{pyamp_fds.transport.Client}): Twisted's own sends one byte per
    descriptor and loses the connection when a box has fewer bytes than it
    has descriptors queued, which a list of any length would soon do, so it
    is refused there with L{DescriptorsUnsupported}, before anything is
    queued.  Any protocol receives them, over any UNIX transport.

    A receiving L{AMP} holds at most C{maxUnclaimedDescriptors} descriptors
    that no box has claimed yet, and a list's descriptors all arrive before
    its box: that limit must leave room for the longest list expected.

    @ivar maxDescriptors: the longest list sent or accepted; a longer one is
        refused when sending with L{DescriptorListTooLong} before any
        descriptor is duplicated or queued, and is a protocol error when
        received.
    @ivar transfer: whether sent descriptors are handed over.
    @ivar duplicate: whether duplicates are sent (unless C{transfer}).
    """

    def __init__(self, optional=False, transfer=False, maxDescriptors=4096, duplicate=True):
        amp.Argument.__init__(self, optional)
        if not 0 <= maxDescriptors <= _MAX_LIST_LENGTH:
            raise ValueError(
                "maxDescriptors must be between 0 and %d" % (_MAX_LIST_LENGTH,)
            )
        self.transfer = transfer
        self.duplicate = duplicate
        self.maxDescriptors = maxDescriptors

    def toStringProto(self, inObject, proto):
        descriptors = list(inObject)
        count = len(descriptors)
        if count > self.maxDescriptors:
            raise DescriptorListTooLong(
                "%d descriptors in one DescriptorList, more than its maxDescriptors (%d)"
                % (count, self.maxDescriptors)
            )
        transport = proto.transport
        if transport is None:
            raise ConnectionLost()
        if not isBatching(transport):
            raise DescriptorsUnsupported(
                "DescriptorList needs a pyamp_fds transport to send, not %r" % (transport,)
            )
        if set(map(type, descriptors)) <= _JUST_INTS:
            filenos = descriptors
        else:
            filenos = [_fileno(d) for d in descriptors]
        if self.duplicate or self.transfer:
            transport.sendFileDescriptors(filenos, self.transfer)
        else:
            transport.sendFileDescriptors(filenos, duplicate=False)
        if isinstance(proto, _Accelerated):
            start = proto._sent
            proto._sent = start + count
        else:
            # A stock protocol counts its ordinals one at a time.
            counter = proto._sendingDescriptorCounter
            start = counter() if count else 0
            for _ in range(count - 1):
                counter()
        return _encodeRange(start, count)

    def fromStringProto(self, inString, proto):
        start, count = _decodeRange(inString)
        if start is None:
            error = InvalidDescriptorOrdinal(
                "DescriptorList value %r is not START:COUNT" % (inString[:40],)
            )
        elif count > self.maxDescriptors:
            error = DescriptorListTooLong(
                "the peer sent a DescriptorList of %d descriptors, more than its "
                "maxDescriptors (%d)" % (count, self.maxDescriptors)
            )
        else:
            return _claimRange(proto, start, count)
        if isinstance(proto, _Accelerated):
            proto._protocolError(error)
        raise error


# A value holds at most 65535 bytes, so a padded one can stand for this many.
_MAX_LIST_LENGTH = MAX_FDS_PER_MESSAGE * MAX_VALUE_LENGTH
_JUST_INTS = frozenset([int])


def _encodeRange(start, count):
    value = b"%d:%d" % (start, count)
    short = -(-count // MAX_FDS_PER_MESSAGE) - len(value)
    if short > 0:
        value += b" " * short
    return value


def _decodeRange(value):
    """
    Return C{(start, count)} for a value L{_encodeRange} wrote, or
    C{(None, None)} for anything else.
    """
    value = bytes(value)
    head, colon, tail = value.rstrip(b" ").partition(b":")
    # Bounded lengths: int() of a long digit string is slow, and refused.
    if not (colon and head.isdigit() and tail.isdigit() and len(head) <= 20 and len(tail) <= 10):
        return None, None
    start, count = int(head), int(tail)
    if count > _MAX_LIST_LENGTH or _encodeRange(start, count) != value:
        return None, None
    return start, count


def _claimRange(proto, start, count):
    """
    Claim ordinals C{start} to C{start + count - 1} for one box: all of
    them, or none (a missing one is a protocol error, as for L{Descriptor}).
    """
    ordinals = range(start, start + count)
    if isinstance(proto, _Accelerated):
        held = proto._descriptors
        if not all(map(held.__contains__, ordinals)):
            for ordinal in ordinals:
                if ordinal not in held:
                    # Raises, and closes every descriptor held.
                    proto._claimDescriptor(ordinal)
        descriptors = list(map(held.pop, ordinals))
        proto._claimedInBox.extend(descriptors)
        return descriptors
    # A stock protocol: its own claim raises as for its own Descriptor.
    claimed = []
    try:
        for ordinal in ordinals:
            claimed.append(proto._getDescriptor(ordinal))
    except BaseException:
        close_all(claimed)
        raise
    return claimed
