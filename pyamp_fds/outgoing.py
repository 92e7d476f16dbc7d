# -*- test-case-name: tests.test_outgoing -*-
"""
The queue of descriptors waiting to be sent on one connection.

Every descriptor queued here is placed in the byte stream: it must travel
with a byte written no later than the box that names it.  The queue hands
out groups of at most C{MAX_FDS_PER_MESSAGE} descriptors for the next
C{sendmsg}, says how many bytes that message may carry so that the next
group still finds a byte of its own box, and settles each descriptor's
ownership when it leaves: sent, withdrawn (the box that named it was not
sent), or dropped with the connection.  No socket is touched here.
"""

from __future__ import annotations

import errno
import os
from array import array
from collections.abc import Sequence
from enum import Enum
from itertools import repeat
from typing import TYPE_CHECKING

from pyamp_fds.errors import DescriptorBudgetExhausted
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE, close_all, duplicate_array, int_array

if TYPE_CHECKING:
    from pyamp_fds.budget import DescriptorBudget

__all__ = ["Ownership", "OutgoingDescriptors"]


class Ownership(Enum):
    """
    Who owns a queued descriptor, and so who closes it.
    """

    #: A duplicate made when it was queued: the queue's own, closed once
    #: sent, withdrawn or dropped.  The caller may close its copy at once.
    DUPLICATE = "duplicate"

    #: The caller's own descriptor, handed over: closed once sent or
    #: dropped with the connection, but given back (left open) if the box
    #: that named it is withdrawn before it was sent.
    HANDED_OVER = "handed over"

    #: The caller's own descriptor, lent: sent as it is and never closed
    #: here (Twisted's rule: the caller keeps it open until it has gone).
    LENT = "lent"


_DUPLICATE = Ownership.DUPLICATE
_HANDED_OVER = Ownership.HANDED_OVER
_LENT = Ownership.LENT

# Each descriptor's ownership as one byte, so that a group's are counted
# and sliced as bytes (memchr and memcpy), not an object at a time.  Chosen
# by identity, not looked up: an Enum member hashes in Python.
_DUPLICATE_CODE = b"\0"
_HANDED_OVER_CODE = b"\1"
_LENT_CODE = b"\2"


def _code(ownership: Ownership) -> bytes:
    if ownership is _DUPLICATE:
        return _DUPLICATE_CODE
    return _LENT_CODE if ownership is _LENT else _HANDED_OVER_CODE


class OutgoingDescriptors:
    """
    Descriptors queued for sending, in order, each with its stream position
    and its L{Ownership}.

    Positions count bytes written to the connection since it was made; a
    descriptor's position is the count when it was queued, so the bytes that
    name it start there or later.
    """

    _budget: DescriptorBudget | None = None

    def __init__(self, budget: DescriptorBudget | None = None) -> None:
        """
        @param budget: a L{pyamp_fds.budget.DescriptorBudget} that counts the
            duplicates this queue makes until they leave it, or C{None}.
        """
        self._budget = budget
        # Three parallel sequences, so that a group leaves with one slice
        # and one del each: the descriptors in an array('i') that goes to C
        # as it is (sent, closed), and the ownerships as bytes (_code),
        # with no per-descriptor Python work unless a group mixes lent
        # descriptors with others.
        self._fds: array[int] = array("i")
        self._positions: list[int] = []
        self._ownerships = bytearray()
        self._lent = 0
        self._left = 0

    def __len__(self) -> int:
        return len(self._fds)

    @property
    def descriptors(self) -> list[int]:
        """
        The descriptors queued, in order (a copy).
        """
        return self._fds.tolist()

    def enqueue(
        self, descriptors: Sequence[int], position: int, ownership: Ownership = _DUPLICATE
    ) -> None:
        """
        Queue descriptors, all or none.

        @param descriptors: a sequence of descriptor numbers (ints), best an
            C{array('i')} (L{pyamp_fds.fdio.int_array}).
        @param position: the stream position the bytes naming them start at
            or after.
        @param ownership: an L{Ownership}; for L{Ownership.DUPLICATE} the
            duplicates (close-on-exec) are made here.
        @raise OSError: a duplicate could not be made
            (L{DescriptorBudgetExhausted<pyamp_fds.errors.DescriptorBudgetExhausted>},
            an C{EMFILE}, when the duplicates would take this connection
            past its share of the descriptor budget, or the budget past its
            limit: a peer that does not read what it is sent cannot make the
            process run out); those already made were closed and nothing was
            queued.
        """
        count = len(descriptors)
        if ownership is _DUPLICATE:
            budget = self._budget
            if budget is not None and not budget.takeForQueue(count, len(self._fds)):
                raise DescriptorBudgetExhausted(
                    errno.EMFILE,
                    "no descriptor budget left for %d more duplicates (%d queued on this "
                    "connection, its share %d; %d held of the process's %d)"
                    % (count, len(self._fds), budget.share, budget.used, budget.limit),
                )
            try:
                fds = duplicate_array(descriptors)
            except BaseException:
                if budget is not None:
                    budget.give(count)
                raise
        else:
            fds = int_array(descriptors)
            if ownership is _LENT:
                self._lent += count
        self._fds.extend(fds)
        self._positions.extend(repeat(position, count))
        self._ownerships += _code(ownership) * count

    def enqueueOne(self, descriptor: int, position: int, ownership: Ownership) -> None:
        """
        L{enqueue} for one descriptor, the common case, without the lists.
        """
        if ownership is _DUPLICATE:
            budget = self._budget
            if budget is not None and not budget.takeForQueue(1, len(self._fds)):
                self.enqueue([descriptor], position, ownership)  # Raises, saying why.
            try:
                # os.dup is F_DUPFD_CLOEXEC at half the cost of fcntl.fcntl.
                descriptor = os.dup(descriptor)
            except BaseException:
                if budget is not None:
                    budget.give(1)
                raise
            code = _DUPLICATE_CODE
        else:
            code = _LENT_CODE if ownership is _LENT else _HANDED_OVER_CODE
        self._fds.append(descriptor)
        if code is _LENT_CODE:
            self._lent += 1
        self._positions.append(position)
        self._ownerships += code

    def mark(self) -> int:
        """
        A mark for L{withdraw}: the end of the queue now.
        """
        return self._left + len(self._fds)

    def withdraw(self, mark: int) -> None:
        """
        Take back every descriptor queued since C{mark}: the box that named
        them will not be sent.  Duplicates are closed; handed-over and lent
        descriptors are the caller's again.

        @raise AssertionError: some of them were sent already (a mark must be
            withdrawn before the bytes after it are flushed).
        """
        index = mark - self._left
        if index < 0:
            raise AssertionError("descriptors queued after this mark have been sent")
        withdrawn = self._fds[index:]
        ownerships = self._ownerships[index:]
        del self._fds[index:], self._positions[index:], self._ownerships[index:]
        self._lent -= ownerships.count(_LENT_CODE)
        duplicates = _only(withdrawn, ownerships, _DUPLICATE_CODE)
        close_all(duplicates)
        if self._budget is not None:
            self._budget.give(len(duplicates))

    def nextGroupArray(self, sentPosition: int) -> tuple[array[int], int | None]:
        """
        The descriptors for the next C{sendmsg}, and how many bytes that
        message may carry.

        @param sentPosition: the stream position of the next byte to send.
        @return: C{(descriptors, limit)}: an C{array('i')} of at most
            C{MAX_FDS_PER_MESSAGE} descriptors (empty if none are queued),
            and the most bytes the message may carry so that the group after
            it still finds a byte of the box that names it (C{None}: no
            limit).
        """
        fds = self._fds
        if len(fds) <= MAX_FDS_PER_MESSAGE:
            return fds[:], None
        return (
            fds[:MAX_FDS_PER_MESSAGE],
            max(1, self._positions[MAX_FDS_PER_MESSAGE] - sentPosition),
        )

    def nextGroup(self, sentPosition: int) -> tuple[list[int], int | None]:
        """
        L{nextGroupArray}, with the descriptors in a list.
        """
        fds, limit = self.nextGroupArray(sentPosition)
        return fds.tolist(), limit

    def sent(self, count: int) -> None:
        """
        The first C{count} descriptors went with a message: they leave the
        queue, and those it owns are closed (never sent again).
        """
        fds: Sequence[int] = self._fds[:count]
        budget = self._budget
        if self._lent or budget is not None:
            ownerships = self._ownerships[:count]
            if budget is not None:
                budget.give(ownerships.count(_DUPLICATE_CODE))
            lent = ownerships.count(_LENT_CODE) if self._lent else 0
            if lent:
                self._lent -= lent
                fds = () if lent == count else _owned(fds, ownerships)
        del self._fds[:count], self._positions[:count], self._ownerships[:count]
        self._left += count
        close_all(fds)

    def drop(self) -> None:
        """
        The connection is gone: close every descriptor the queue owns
        (duplicates and handed-over ones) and empty it.
        """
        owned = _owned(self._fds, self._ownerships) if self._lent else self._fds[:]
        if self._budget is not None:
            self._budget.give(self._ownerships.count(_DUPLICATE_CODE))
        self._left += len(self._fds)
        del self._fds[:], self._positions[:], self._ownerships[:]
        self._lent = 0
        close_all(owned)


def _only(fds: Sequence[int], ownerships: bytearray, code: bytes) -> list[int]:
    # The descriptors of one ownership, in a group that mixes them.
    wanted = code[0]
    return [fd for fd, o in zip(fds, ownerships) if o == wanted]


def _owned(fds: Sequence[int], ownerships: bytearray) -> list[int]:
    # The descriptors this queue closes: all but the lent ones.
    lent = _LENT_CODE[0]
    return [fd for fd, o in zip(fds, ownerships) if o != lent]
