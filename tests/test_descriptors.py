"""
Tests for L{pyamp_fds.descriptors}: the table of received descriptors,
without sockets.
"""

import os

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
