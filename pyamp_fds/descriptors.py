# -*- test-case-name: tests.test_descriptors -*-
"""
The table of descriptors received on one connection.

Descriptors arrive before the boxes that name them, numbered in the order
they arrived.  The table holds them until a box claims them, and is the one
place their ownership moves: to the box being parsed when an argument claims
one, to the box's receiver (responder or caller) once the box has been
dispatched, or back to being closed when the box fails to parse or the
connection goes.

Descriptors arrive in batches and are claimed in runs (a
L{pyamp_fds.DescriptorList} names a run of consecutive ordinals), so the
table holds runs of consecutive unclaimed ordinals, each an C{array('i')}:
receiving and claiming a run copy memory rather than touching every
descriptor in Python.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from pyamp_fds.closer import closeLater
from pyamp_fds.errors import TooManyUnclaimedDescriptors, UnknownDescriptor
from pyamp_fds.fdio import close_all

if TYPE_CHECKING:
    from pyamp_fds.budget import DescriptorBudget
    from pyamp_fds.errors import DescriptorProtocolError

__all__ = ["ReceivedDescriptors"]


def _intArray(descriptors: Sequence[int]) -> array[int]:
    # Descriptors as an array('i'): the receiving transports' batches are one
    # already (Receiver.receive), others are converted.
    if type(descriptors) is array and descriptors.typecode == "i":
        return descriptors
    return array("i", descriptors)


def _ignore(error: DescriptorProtocolError) -> None:
    pass


class ReceivedDescriptors:
    """
    Received descriptors by ordinal, for one connection.
    """

    _budget: DescriptorBudget | None = None

    def __init__(
        self, onViolation: Callable[[DescriptorProtocolError], object] = _ignore
    ) -> None:
        """
        @param onViolation: called with the
            L{pyamp_fds.errors.DescriptorProtocolError} just
            before a claim or a receive raises it, so that the connection can
            be closed for it.
        """
        self._onViolation = onViolation
        # The unclaimed descriptors: runs of consecutive ordinals, the first
        # ordinal of each in _starts (ascending) and its descriptors in the
        # array of the same index in _runs.  Runs never touch (one that ends
        # where the next starts is one run), so the ordinal after a run is
        # never held.
        self._starts: list[int] = []
        self._runs: list[array[int]] = []
        self._unclaimed = 0
        # Claimed since the last settle(): still counted in the budget.
        self._claimed = 0
        self._received = 0
        self._inBox: list[int] = []

    def useBudget(self, budget: DescriptorBudget) -> None:
        """
        Count the descriptors held in C{budget} (a
        L{pyamp_fds.budget.DescriptorBudget}) from now on, and close those
        this table closes in the background (L{pyamp_fds.closer}): they
        are a peer's, and closing one may block.  Without a budget they are
        counted nowhere and closed at once.
        """
        if self._budget is not None:
            self._budget.give(self._unclaimed)
        self._budget = budget
        budget.take(self._unclaimed)
        budget.hold(self)

    @property
    def budget(self) -> DescriptorBudget | None:
        """
        The L{pyamp_fds.budget.DescriptorBudget} counting this table, or
        C{None}.
        """
        return self._budget

    @property
    def received(self) -> int:
        """
        How many descriptors have been received on this connection.
        """
        return self._received

    @property
    def unclaimed(self) -> int:
        """
        How many received descriptors no box has claimed yet.
        """
        return self._unclaimed

    @property
    def oldestUnclaimed(self) -> int:
        """
        The lowest ordinal held unclaimed, or L{received} if none is.
        """
        return self._starts[0] if self._starts else self._received

    @property
    def claimedByBox(self) -> int:
        """
        How many descriptors the box being parsed has claimed so far.
        """
        return len(self._inBox)

    def receive(self, descriptors: Sequence[int], limit: int) -> None:
        """
        Take descriptors in the order they arrived; each gets the next
        ordinal.

        @param limit: the most descriptors that may be held unclaimed;
            holding more is reported as a
            L{pyamp_fds.errors.TooManyUnclaimedDescriptors}
            violation (they stay held until L{closeAll}).
        """
        count = len(descriptors)
        if not count:
            return
        start = self._received
        self._received = start + count
        runs = self._runs
        if runs and self._starts[-1] + len(runs[-1]) == start:
            runs[-1].extend(_intArray(descriptors))
        else:
            self._starts.append(start)
            runs.append(array("i", descriptors))
        self._unclaimed += count
        if self._budget is not None:
            self._budget.take(count)
        if self._unclaimed > limit:
            self._onViolation(
                TooManyUnclaimedDescriptors(
                    "%d descriptors received and not claimed by any box (limit %d)"
                    % (self._unclaimed, limit)
                )
            )

    def claim(self, ordinal: int) -> int:
        """
        Claim a descriptor for the box being parsed.

        @raise UnknownDescriptor: it has not arrived, or was claimed already.
        """
        starts = self._starts
        if starts and starts[0] == ordinal:
            # The oldest held, as boxes claim them in order: the common case.
            run = self._runs[0]
            descriptor = run[0]
            if len(run) == 1:
                del starts[0], self._runs[0]
            else:
                del run[0]
                starts[0] = ordinal + 1
            self._unclaimed -= 1
        else:
            descriptor = self._take(ordinal, 1)[0]
        # Until the box is dispatched, a fault in a later argument must not
        # leave this one with nobody.
        self._inBox.append(descriptor)
        self._claimed += 1
        return descriptor

    def claimRange(self, start: int, count: int) -> list[int]:
        """
        Claim ordinals C{start} to C{start + count - 1} for the box being
        parsed: all of them, or none.

        @return: the descriptors, in order.
        @raise UnknownDescriptor: one of them has not arrived, or was claimed.
        """
        if not count:
            return []
        descriptors = self._take(start, count).tolist()
        self._inBox.extend(descriptors)
        self._claimed += count
        return descriptors

    def _take(self, start: int, count: int) -> array[int]:
        # Ordinals start to start + count - 1 (count > 0) out of the run
        # holding them all, or a violation naming the first one not held.
        starts = self._starts
        index = bisect_right(starts, start) - 1
        if index < 0:
            self._violated(UnknownDescriptor(start, self._received))
        run = self._runs[index]
        first = start - starts[index]
        end = first + count
        if end > len(run):
            # Runs never touch: the ordinal after this run is not held.
            missing = start if first >= len(run) else starts[index] + len(run)
            self._violated(UnknownDescriptor(missing, self._received))
        taken = run[first:end]
        if end == len(run):
            if first:
                del run[first:]
            else:
                del starts[index], self._runs[index]
        elif first:
            starts.insert(index + 1, start + count)
            self._runs.insert(index + 1, run[end:])
            del run[first:]
        else:
            del run[:end]
            starts[index] = start + count
        self._unclaimed -= count
        return taken

    def refuse(self, error: DescriptorProtocolError) -> NoReturn:
        """
        A value naming descriptors is malformed: report C{error} as a
        violation of the rules, and raise it.
        """
        self._violated(error)

    def evict(self, why: str) -> None:
        """
        The descriptor budget is exhausted and this connection holds the
        most: report it as a L{TooManyUnclaimedDescriptors} violation (the
        connection is closed, and what it held released).
        """
        if self._unclaimed:
            self._onViolation(TooManyUnclaimedDescriptors(why))

    def boxDispatched(self) -> None:
        """
        The box being parsed was handed to its receiver: what it claimed is
        the receiver's now.
        """
        if self._inBox:
            self._inBox = []

    def settle(self) -> None:
        """
        Stop counting what boxes claimed (and their receivers now own) in
        the budget: done once per read rather than per descriptor.
        """
        if self._claimed:
            if self._budget is not None:
                self._budget.give(self._claimed)
            self._claimed = 0

    def releaseBox(self) -> None:
        """
        The box being parsed failed: close what it claimed, since no
        responder or caller will own it.
        """
        claimed, self._inBox = self._inBox, []
        self._countAgain(len(claimed))
        self._dispose(claimed)

    def closeAll(self) -> None:
        """
        Close every descriptor held, and those claimed by a box not yet
        dispatched.
        """
        held: list[int] = []
        for run in self._runs:
            held.extend(run)
        held.extend(self._inBox)
        del self._starts[:], self._runs[:]
        self._unclaimed = 0
        self._countAgain(len(self._inBox))
        self._inBox = []
        self.settle()
        self._dispose(held)

    def _countAgain(self, count: int) -> None:
        # Claimed descriptors the table closes after all: they must count in
        # the budget until closed.  Those claimed since the last settle()
        # still do; any settled already are taken again.
        counted = min(count, self._claimed)
        self._claimed -= counted
        if count > counted and self._budget is not None:
            self._budget.take(count - counted)

    def _dispose(self, fds: Sequence[int]) -> None:
        # They are counted in the budget until the closer has closed them.
        if not fds:
            return
        budget = self._budget
        if budget is None:
            close_all(fds)
            return
        closeLater(fds, budget)

    def _violated(self, error: DescriptorProtocolError) -> NoReturn:
        self._onViolation(error)
        raise error
