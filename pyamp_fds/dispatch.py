# -*- test-case-name: tests.test_dispatch,tests.test_protocol -*-
"""
L{pyamp_fds.AMP}'s fast paths: commands served, calls made and answers
parsed with each command's plan (L{pyamp_fds.plans}), without Twisted's
C{Deferred} chain where the outcome is the same without it; everything else
through Twisted's own chain.

Whatever path a box takes, its descriptors are settled the same way: a box
that fails to serialize or to be queued takes back what was queued for it
(L{pyamp_fds.exchange.DescriptorExchange.takeBackUnboxed}), and a box that
fails to parse closes what it claimed
(L{pyamp_fds.descriptors.ReceivedDescriptors.releaseBox}).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from pyamp_fds import _twisted
from pyamp_fds.codec import MAX_VALUE_LENGTH
from pyamp_fds.credentials import describePeer
from pyamp_fds.errors import DescriptorBudgetExhausted
from pyamp_fds.plans import SettlingCommand, _plans, newBox, planFor

if TYPE_CHECKING:
    from pyamp_fds._twisted import AMPHooks
    from pyamp_fds.plans import _ArgumentSpec, _CommandPlan
    from pyamp_fds.protocol import _Framing

    # To the type checker, FastDispatch is what it is mixed into ahead of:
    # pyamp_fds.AMP's framing, Twisted's hooks and amp.AMP.
    class _DispatchBase(_Framing, AMPHooks, amp.AMP):
        pass

else:
    _DispatchBase = object

__all__ = ["FastDispatch"]

_log = Logger()

_stockLocateResponder = amp.AMP.locateResponder


# Twisted leaves AMP's commands and dispatcher unannotated: the lines that
# reach them carry a "type: ignore" naming the check that cannot see through
# them.
class FastDispatch(_DispatchBase):
    """
    Command, answer and error boxes, and C{callRemote}, for L{pyamp_fds.AMP}.
    Mixed in ahead of the framing and of Twisted's
    L{twisted.protocols.amp.AMP}.
    """

    _prepared: Deferred[Any] | None = None

    # Answers refused for want of descriptor budget (_answerRefused).
    _answersRefused = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The plans of calls waiting for an answer, by tag.
        self._waitingPlans: dict[bytes, _CommandPlan] = {}
        # What commandBoxReceived found for each command name served:
        # the command, its responder and its plan (the class's responders
        # are fixed when it is made).
        self._serving: dict[bytes, tuple[type[amp.Command], Callable[..., Any], _CommandPlan]] = {}

    # Serving

    def commandBoxReceived(self, box: amp.AmpBox) -> Deferred[Any] | None:
        """
        A command box arrived: parse, call the responder and answer, inline
        when the responder is found the standard way and answers at once.
        """
        entry = None
        if self.locator is self and type(self).locateResponder is _stockLocateResponder:
            name = box[amp.COMMAND]
            entry = self._serving.get(name)
            if entry is None:
                found = self.responderFor(name)
                if found is not None:
                    entry = self._serving[name] = (*found, planFor(found[0]))
        if entry is None:
            return self.stockCommandReceived(box)
        command, responderFunc, plan = entry
        try:
            if plan.arguments is not None:
                kw = plan.arguments.toObjects(box, self)
            else:
                kw = command.parseArguments(box, self)
        except BaseException:
            failure = fail()
            self.receivedDescriptors.releaseBox()
            return self._answerByTwisted(box, failure)
        # What the arguments claimed is the responder's now.
        self.receivedDescriptors.boxDispatched()
        try:
            result = responderFunc(self, **kw)
        except BaseException:
            result = fail()
        if plan.emptyAnswer and type(result) is dict:
            # Twisted's makeResponse for a response with no values: an empty
            # box, whatever the dict holds.
            ask = box.get(amp.ASK)
            if ask is not None:
                tagged = amp.AmpBox.__new__(amp.AmpBox)
                tagged[amp.ANSWER] = ask
                self._answer(tagged, type(ask) is bytes and len(ask) <= MAX_VALUE_LENGTH)
            return None
        if not isinstance(result, Deferred):
            try:
                if plan.response is not None:
                    answer = _newResponseBox(command)
                    if not isinstance(answer, Deferred):
                        answer = self.serializing(plan.response.toStrings, result, answer, self)
                else:
                    answer = self.serializing(command.makeResponse, result, self)
            except BaseException as e:
                ask = box.get(amp.ASK)
                if isinstance(e, DescriptorBudgetExhausted) and ask is not None:
                    self._answerRefused(ask, e)
                    return None
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
                    chain = self._settledResponder(
                        lambda **kw: answer, SettlingCommand(command, parsed=True)
                    )
                    return self._answerByTwisted(box, chain(box))
                ask = box.get(amp.ASK)
                if ask is not None:
                    answer[amp.ANSWER] = ask
                    self._answer(answer, False)
                return None
        chain = self._settledResponder(lambda **kw: result, SettlingCommand(command, parsed=True))
        return self._answerByTwisted(box, chain(box))

    def _answerRefused(self, ask: bytes, error: DescriptorBudgetExhausted) -> None:
        """
        An answer's descriptors could not be queued: the peer does not read
        what it is sent, or the process's budget is spent.  The peer gets
        what Twisted sends for an answer that fails (an unknown error, and
        the connection closed after it); the log gets one line for the
        first such answer of the connection and one for the rest when it
        closes, rather than a traceback each: one read of a peer that never
        reads can hold thousands of requests.
        """
        refusal = amp.QuitBox()
        refusal[amp.ERROR] = ask
        refusal[amp.ERROR_CODE] = amp.UNKNOWN_ERROR_CODE
        refusal[amp.ERROR_DESCRIPTION] = b"Unknown Error"
        self._answer(refusal, False)
        self._answersRefused += 1
        if self._answersRefused == 1:
            _log.error(
                "{protocol}: an answer to {peer} was refused: {error}; closing the connection",
                protocol=self.__class__.__name__,
                peer=describePeer(self.transport),
                error=error,
            )

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._answersRefused > 1:
            _log.error(
                "{protocol}: {count} more answers to {peer} were refused for want of "
                "descriptor budget before the connection closed",
                protocol=self.__class__.__name__,
                peer=describePeer(self.transport),
                count=self._answersRefused - 1,
            )
        super().connectionLost(reason)

    def _answer(self, answer: amp.AmpBox, checked: bool) -> None:
        # What Twisted's responder chain does with an answer box made here.
        try:
            if self.boxSender is self and type(answer) is amp.AmpBox:
                # What safeEmit does, for a plain box made here
                # (other boxes act when sent: protocol switches).
                try:
                    self._sendOwnBox(answer, None, checked)
                except (amp.ProtocolSwitched, ConnectionLost):
                    pass
            else:
                self.safeEmit(answer)
        except BaseException:
            self.unhandledError(Failure())

    def _answerByTwisted(self, box: amp.AmpBox, deferred: Deferred[Any]) -> Deferred[Any] | None:
        self._prepared = deferred
        try:
            return self.stockCommandReceived(box)
        finally:
            self._prepared = None

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[Any]:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            return prepared
        locator = self.locator
        if locator is not self:
            # A separate locator's own wrapper would parse the arguments and
            # make the response with the locator, where no descriptor can be
            # claimed or sent: wrap its responder here, with this protocol.
            entry = _twisted.locatorResponderFor(locator, box[amp.COMMAND])
            if entry is not None:
                command, responderFunc = entry
                responder = self.wrapResponder(MethodType(responderFunc, locator), command)
                return maybeDeferred(responder, box)
        return super().dispatchCommand(box)  # type: ignore[no-any-return, no-untyped-call]

    def wrapResponder(
        self, aCallable: Callable[..., Any], command: Any
    ) -> Callable[[amp.AmpBox], Any]:
        """
        Twisted's responder wrapper (parse, call, serialize), with the box's
        descriptors settled: what a failed parse claimed is closed, and what
        a failed serialization queued is taken back.
        """
        return self._settledResponder(aCallable, SettlingCommand(command))

    def _settledResponder(
        self, aCallable: Callable[..., Any], command: Any
    ) -> Callable[[amp.AmpBox], Any]:
        table = self.receivedDescriptors

        def responder(**kw: Any) -> Any:
            # Parsed: what the arguments claimed is the responder's now.
            table.boxDispatched()
            return aCallable(**kw)

        doit = self.stockWrapResponder(responder, command)

        def parseOrRelease(box: amp.AmpBox) -> Any:
            try:
                return doit(box)
            except BaseException:
                table.releaseBox()
                raise

        return parseOrRelease

    # Calling

    def callRemote(
        self, commandType: type[amp.Command], *a: Any, **kw: Any
    ) -> Deferred[Any] | None:
        plan = _plans.get(commandType) or planFor(commandType)
        if a or not plan.directCall:
            return self._callByTwisted(commandType, a, kw)
        # directCall is only set for a command with an argument spec.
        spec: _ArgumentSpec = plan.arguments  # type: ignore[assignment]
        if kw.keys() != spec.allowed:
            forgotten = [name for name in spec.required if name not in kw]
            if forgotten:
                return fail(
                    amp.InvalidSignature(
                        # The same message as Twisted's own, bytes name and all.
                        "forgot {} for {}".format(", ".join(forgotten), commandType.commandName)  # type: ignore[str-bytes-safe]
                    )
                )
            for name in kw:
                if name not in spec.allowed:
                    raise amp.InvalidSignature(f"{name} is not a valid argument")
        boxType: type[amp.AmpBox] = commandType.commandType  # type: ignore[assignment]
        box = amp.AmpBox.__new__(amp.AmpBox) if boxType is amp.AmpBox else newBox(boxType)
        try:
            spec.toStrings(kw, box, self)
        except BaseException:
            self.takeBackUnboxed()
            raise
        requiresAnswer = commandType.requiresAnswer
        failed = self.failedAllOutgoing()
        if self.boxSender is not self or type(box) is not amp.AmpBox:
            d = self.stockSendBoxCommand(commandType.commandName, box, requiresAnswer)
            if requiresAnswer and failed is None:
                self._waitingPlans[box[amp.ASK]] = plan
            return d
        # What stockSendBoxCommand does, for a box made here.
        if failed is not None:
            return fail(failed) if requiresAnswer else None
        box[amp.COMMAND] = commandType.commandName
        if not requiresAnswer:
            self._sendOwnBox(box, None, plan.callChecked)
            return None
        tag = box[amp.ASK] = self.newTag()
        self._sendOwnBox(box, None, plan.callChecked)
        self._waitingPlans[tag] = plan
        return self.waitForAnswer(tag)  # type: ignore[no-any-return]

    def _callByTwisted(
        self, commandType: type[amp.Command], a: tuple[Any, ...], kw: dict[str, Any]
    ) -> Deferred[Any] | None:
        """
        C{callRemote} through Twisted's own chain (commands that override
        its steps), with the box's descriptors settled on both sides: what
        a failed call queued is taken back, and what a failed parse of its
        answer claimed is closed.
        """
        d = self.serializing(super().callRemote, commandType, *a, **kw)
        if d is not None:
            d.addBoth(self._answerSettled)
        return d  # type: ignore[no-any-return]

    def _answerSettled(self, result: Any) -> Any:
        # Runs right after the command's own parseResponse and before the
        # caller's callbacks, while the answer box is being dispatched.
        if isinstance(result, Failure):
            self.receivedDescriptors.releaseBox()
        else:
            self.receivedDescriptors.boxDispatched()
        return result

    def answerBoxReceived(self, box: amp.AmpBox) -> None:
        """
        An answer box arrived: parse it with the call's plan before its
        L{twisted.internet.defer.Deferred} fires.
        """
        plan = self._waitingPlans.pop(box[amp.ANSWER], None)
        if plan is None:
            return self.stockAnswerReceived(box)
        question = self.takeWaiting(box[amp.ANSWER])
        try:
            result = {} if plan.emptyResponse else plan.parseResponse(box, self)
        except BaseException:
            failure = Failure()
            self.receivedDescriptors.releaseBox()
            question.addErrback(self.unhandledError)
            question.errback(failure)
            return
        if not plan.emptyResponse:
            # (An empty response claims nothing.)
            self.receivedDescriptors.boxDispatched()
        question.callback(result)
        # Twisted adds unhandledError last before firing; where the chain
        # ran to its end, the outcome is the same when it is added after
        # (it only acts on a failure), and costs nothing when all went well.
        if question.paused or isinstance(question.result, Failure):
            question.addErrback(self.unhandledError)

    def errorBoxReceived(self, box: amp.AmpBox) -> None:
        """
        An error box arrived: fail the call with the command's own error.
        """
        plan = self._waitingPlans.pop(box[amp.ERROR], None)
        if plan is None:
            return self.stockErrorReceived(box)
        # Twisted's own, with the conversion its callRemote chains in front.
        question = self.takeWaiting(box[amp.ERROR])
        question.addErrback(self.unhandledError)
        code = box[amp.ERROR_CODE]
        description = box[amp.ERROR_DESCRIPTION].decode("utf-8", "replace")
        error: Exception
        if code in amp.PROTOCOL_ERRORS:
            error = amp.PROTOCOL_ERRORS[code](code, description)
        else:
            error = plan.remoteError(amp.RemoteAmpError(code, description))
        question.errback(Failure(error))

    def failAllOutgoing(self, reason: Failure) -> None:
        self._waitingPlans.clear()
        super().failAllOutgoing(reason)  # type: ignore[no-untyped-call]


def _newResponseBox(command: type[amp.Command]) -> amp.AmpBox | Deferred[Any]:
    """
    An empty response box for C{command}; or, as C{Command.makeResponse}
    gives when the command's C{responseType} cannot be made, a failed
    L{twisted.internet.defer.Deferred} with why.
    """
    try:
        return newBox(command.responseType)
    except BaseException:
        return fail()
