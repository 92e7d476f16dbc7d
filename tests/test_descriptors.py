"""
Tests for L{pyamp_fds.descriptors}: the table of received descriptors,
without sockets.
"""

import os
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pyamp_fds.descriptors import ReceivedDescriptors
from pyamp_fds.errors import TooManyUnclaimedDescriptors, UnknownDescriptor
from tests.fdcheck import assertNoNewDescriptors, openDescriptors


class ReceivedDescriptorsTests(SynchronousTestCase):
    """
    Receive, claim, claim a range, settle or release a box, close all.
    """

    def setUp(self):
        self.before = openDescriptors()
        self.violations = []
        self.table = ReceivedDescriptors(self.violations.append)

    def tearDown(self):
        self.table.closeAll()
        assertNoNewDescriptors(self.before)

    def received(self, count):
        fds = []
        for _ in range(count):
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
        self.table.receive(fds, 100)
        return fds

    def test_ordinalsInOrder(self):
        """
        Descriptors are numbered in the order they arrived, across receives.
        """
        first = self.received(2)
        second = self.received(1)
        self.assertEqual(self.table.received, 3)
        self.assertEqual(self.table.claim(2), second[0])
        self.assertEqual(self.table.claimRange(0, 2), first)
        self.assertEqual(self.table.unclaimed, 0)
        self.assertEqual(self.table.claimedByBox, 3)
        self.table.boxDispatched()
        self.assertEqual(self.table.claimedByBox, 0)
        for fd in first + second:
            os.close(fd)

    def test_claimTwice(self):
        """
        Claiming an ordinal twice, or one not received, is a violation that
        is reported and raised.
        """
        [fd] = self.received(1)
        self.table.claim(0)
        self.assertRaises(UnknownDescriptor, self.table.claim, 0)
        self.assertRaises(UnknownDescriptor, self.table.claim, 7)
        self.assertEqual([type(v) for v in self.violations], [UnknownDescriptor] * 2)

    def test_rangeAllOrNone(self):
        """
        A range with one ordinal missing claims nothing.
        """
        self.received(3)
        # The receiver owns this one now.
        self.addCleanup(os.close, self.table.claim(1))
        self.table.boxDispatched()
        self.assertRaises(UnknownDescriptor, self.table.claimRange, 0, 3)
        self.assertEqual(self.table.unclaimed, 2)
        self.assertEqual(self.table.claimedByBox, 0)

    def test_rangeAcrossReceives(self):
        """
        A range may span descriptors of several receives (one given as an
        C{array('i')}, as the transports give them), and claims in the
        middle of what is held leave the rest claimable on either side.
        """
        first = self.received(3)
        pipes = [os.pipe() for _ in range(4)]
        for r, w in pipes:
            os.close(w)
        second = [r for r, w in pipes]
        self.table.receive(array("i", second), 100)
        owned = self.table.claimRange(2, 3)
        self.assertEqual(owned, [first[2]] + second[:2])
        self.assertEqual(self.table.claim(6), second[3])
        self.assertEqual(self.table.oldestUnclaimed, 0)
        self.assertEqual(self.table.claimRange(0, 2), first[:2])
        self.assertEqual(self.table.claim(5), second[2])
        self.assertEqual((self.table.unclaimed, self.table.oldestUnclaimed), (0, 7))
        self.table.boxDispatched()
        for fd in first + second:
            os.close(fd)

    def test_rangeOverHoleNamesIt(self):
        """
        A range over an ordinal already claimed fails naming the first one
        missing, and claims nothing.
        """
        fds = self.received(5)
        self.addCleanup(os.close, self.table.claim(2))
        self.table.boxDispatched()
        with self.assertRaises(UnknownDescriptor) as caught:
            self.table.claimRange(0, 4)
        self.assertIn("descriptor 2 was already claimed", str(caught.exception))
        with self.assertRaises(UnknownDescriptor) as caught:
            self.table.claimRange(3, 3)
        self.assertIn("descriptor 5 has not been received", str(caught.exception))
        self.assertEqual(self.table.unclaimed, 4)
        self.assertEqual(self.table.claimRange(3, 2), fds[3:])
        self.table.boxDispatched()
        for fd in fds[3:]:
            os.close(fd)

    def test_releaseBoxCloses(self):
        """
        A box that failed to parse has what it claimed closed; descriptors
        no box claimed stay.
        """
        fds = self.received(2)
        self.table.claim(0)
        self.table.releaseBox()
        self.assertRaises(OSError, os.fstat, fds[0])
        self.assertEqual(self.table.unclaimed, 1)

    def test_limit(self):
        """
        Holding more unclaimed descriptors than the limit is reported.
        """
        r, w = os.pipe()
        self.table.receive([r, w], 1)
        self.assertEqual([type(v) for v in self.violations], [TooManyUnclaimedDescriptors])

    def test_closeAll(self):
        """
        Closing all closes the unclaimed and those claimed by a box not yet
        dispatched.
        """
        fds = self.received(3)
        self.table.claim(0)
        self.table.closeAll()
        for fd in fds:
            self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual((self.table.unclaimed, self.table.claimedByBox), (0, 0))


class BudgetedTableTests(SynchronousTestCase):
    """
    A table counting its descriptors in a budget.
    """

    def test_countedUntilClosed(self):
        """
        Held descriptors count; claims leave the budget once settled; those
        a failed box claimed count again until the closer has closed them,
        whether or not they were settled, and the count ends at zero.
        """
        from pyamp_fds.budget import DescriptorBudget
        from pyamp_fds.closer import waitUntilClosed

        before = openDescriptors()
        budget = DescriptorBudget(limit=100)
        table = ReceivedDescriptors()
        table.useBudget(budget)
        fds = []
        for _ in range(3):
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
        table.receive(fds, 10)
        self.assertEqual(budget.used, 3)
        table.claim(0)
        table.settle()
        self.assertEqual(budget.used, 2)
        table.claim(1)
        # The box fails after a settle: both claims close, counted till then.
        table.releaseBox()
        waitUntilClosed()
        # The one still held is all that counts.
        self.assertEqual(budget.used, 1)
        table.closeAll()
        waitUntilClosed()
        self.assertEqual(budget.used, 0)
        assertNoNewDescriptors(before)


# Steps of the model test: receive N, claim an ordinal, claim a range, end
# the box (dispatched, or failed so the table closes what it claimed).
_steps = st.one_of(
    st.tuples(st.just("receive"), st.integers(0, 6)),
    st.tuples(st.just("claim"), st.integers(-2, 40)),
    st.tuples(st.just("range"), st.integers(-2, 40), st.integers(0, 6)),
    st.tuples(st.just("dispatched")),
    st.tuples(st.just("failed")),
)


class TableModelTests(SynchronousTestCase):
    """
    The table against a plain model (a dict of ordinal to descriptor), over
    random sequences of receives, claims, range claims and box outcomes:
    each claim gives exactly the descriptor received under that ordinal, or
    fails and takes nothing; every descriptor ends up closed exactly once,
    by the table or by whoever it was handed to.
    """

    @settings(max_examples=150, deadline=None)
    @given(st.lists(_steps, max_size=40))
    def test_matchesModel(self, steps):
        before = openDescriptors()
        table = ReceivedDescriptors(lambda error: None)
        model = {}
        modelFds = {}  # every ordinal's descriptor, claimed or not
        inBox, boxFds = [], []
        owned = []  # handed to a receiver: the test closes them
        for step in steps:
            kind = step[0]
            if kind == "receive":
                fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(step[1])]
                start = table.received
                table.receive(fds, 10**6)
                model.update(zip(range(start, start + len(fds)), fds))
                modelFds.update(zip(range(start, start + len(fds)), fds))
            elif kind == "claim":
                ordinal = step[1]
                if ordinal in model:
                    self.assertEqual(table.claim(ordinal), model.pop(ordinal))
                    inBox.append(ordinal)
                    boxFds.append(modelFds[ordinal])
                else:
                    self.assertRaises(UnknownDescriptor, table.claim, ordinal)
            elif kind == "range":
                start, count = step[1], step[2]
                ordinals = range(start, start + count)
                if all(o in model for o in ordinals):
                    self.assertEqual(table.claimRange(start, count), [model.pop(o) for o in ordinals])
                    inBox.extend(ordinals)
                    boxFds.extend(modelFds[o] for o in ordinals)
                else:
                    self.assertRaises(UnknownDescriptor, table.claimRange, start, count)
            elif kind == "dispatched":
                table.boxDispatched()
                owned.extend(boxFds)
                inBox, boxFds = [], []
            else:
                # The table closes what the failed box claimed.
                table.releaseBox()
                inBox, boxFds = [], []
            self.assertEqual(table.unclaimed, len(model))
            self.assertEqual(table.claimedByBox, len(inBox))
            self.assertEqual(table.oldestUnclaimed, min(model, default=table.received))
        table.closeAll()
        for fd in owned:
            os.close(fd)
        assertNoNewDescriptors(before)
