"""
Tests for L{pyamp_fds.outgoing}: the queue of descriptors to send, without
sockets.
"""

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from pyamp_fds.budget import DescriptorBudget
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE, int_array
from pyamp_fds.outgoing import Ownership, OutgoingDescriptors
from tests.fdcheck import assertNoNewDescriptors, identity, openDescriptors


class OutgoingDescriptorsTests(SynchronousTestCase):
    """
    Positions, ownership, groups, marks and withdrawal of L{OutgoingDescriptors}.
    """

    def setUp(self):
        self.before = openDescriptors()
        self.queue = OutgoingDescriptors()
        self.pipes = []

    def tearDown(self):
        for r, w in self.pipes:
            os.close(r)
            os.close(w)
        self.queue.drop()
        assertNoNewDescriptors(self.before)

    def pipe(self):
        r, w = os.pipe()
        self.pipes.append((r, w))
        return r

    def isOpen(self, fd):
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    def test_duplicateQueued(self):
        """
        A duplicate is queued, not the caller's descriptor; the caller's stays
        open, and the duplicate is closed once sent.
        """
        fd = self.pipe()
        self.queue.enqueue([fd], 0, Ownership.DUPLICATE)
        [queued] = self.queue.descriptors
        self.assertNotEqual(queued, fd)
        self.assertEqual(identity(queued), identity(fd))
        self.queue.sent(1)
        self.assertFalse(self.isOpen(queued))
        self.assertTrue(self.isOpen(fd))
        self.assertEqual(len(self.queue), 0)

    def test_handedOverClosedOnceSent(self):
        """
        A handed-over descriptor is queued as it is and closed once sent.
        """
        fd = os.dup(self.pipe())
        self.queue.enqueue([fd], 0, Ownership.HANDED_OVER)
        self.assertEqual(self.queue.descriptors, [fd])
        self.queue.sent(1)
        self.assertFalse(self.isOpen(fd))

    def test_lentNeverClosed(self):
        """
        A lent descriptor is sent as it is and never closed by the queue, not
        when sent and not when dropped.
        """
        fd = self.pipe()
        self.queue.enqueue([fd], 0, Ownership.LENT)
        self.queue.sent(1)
        self.assertTrue(self.isOpen(fd))
        self.queue.enqueue([fd], 5, Ownership.LENT)
        self.queue.drop()
        self.assertTrue(self.isOpen(fd))

    def test_mixedGroupClosesOnlyOwned(self):
        """
        A group mixing ownerships closes the duplicates and handed-over ones
        and leaves the lent ones open.
        """
        lent = self.pipe()
        handed = os.dup(self.pipe())
        self.queue.enqueue([lent], 0, Ownership.LENT)
        self.queue.enqueue([handed], 0, Ownership.HANDED_OVER)
        self.queue.enqueue([lent], 0, Ownership.DUPLICATE)
        duplicate = self.queue.descriptors[2]
        self.queue.sent(3)
        self.assertTrue(self.isOpen(lent))
        self.assertFalse(self.isOpen(handed))
        self.assertFalse(self.isOpen(duplicate))

    def test_withdrawGivesBack(self):
        """
        Withdrawing to a mark closes the duplicates queued since it and
        leaves handed-over and lent descriptors open (the caller's again);
        what was queued before the mark stays.
        """
        first = self.pipe()
        self.queue.enqueue([first], 0, Ownership.DUPLICATE)
        mark = self.queue.mark()
        handed = self.pipe()
        lent = self.pipe()
        self.queue.enqueue([first, first], 3, Ownership.DUPLICATE)
        duplicates = self.queue.descriptors[1:]
        self.queue.enqueue([handed], 3, Ownership.HANDED_OVER)
        self.queue.enqueue([lent], 3, Ownership.LENT)
        self.queue.withdraw(mark)
        self.assertEqual(len(self.queue), 1)
        self.assertFalse(any(map(self.isOpen, duplicates)))
        self.assertTrue(self.isOpen(handed))
        self.assertTrue(self.isOpen(lent))

    def test_withdrawAfterSentRefused(self):
        """
        A mark whose descriptors have already been sent cannot be withdrawn.
        """
        fd = self.pipe()
        mark = self.queue.mark()
        self.queue.enqueue([fd], 0, Ownership.LENT)
        self.queue.sent(1)
        self.assertRaises(AssertionError, self.queue.withdraw, mark)

    def test_marksSurviveSends(self):
        """
        A mark taken after some descriptors were sent still withdraws exactly
        what was queued after it.
        """
        fd = self.pipe()
        self.queue.enqueue([fd, fd], 0, Ownership.LENT)
        self.queue.sent(2)
        self.queue.enqueue([fd], 1, Ownership.LENT)
        mark = self.queue.mark()
        self.queue.enqueue([fd, fd], 2, Ownership.LENT)
        self.queue.withdraw(mark)
        self.assertEqual(self.queue.descriptors, [fd])

    def test_groups(self):
        """
        Groups hold at most L{MAX_FDS_PER_MESSAGE} descriptors; when more are
        queued, the message is limited so the next group still finds a byte
        of the box that names it.
        """
        fd = self.pipe()
        count = MAX_FDS_PER_MESSAGE + 10
        self.queue.enqueue([fd] * MAX_FDS_PER_MESSAGE, 0, Ownership.LENT)
        self.queue.enqueue([fd] * 10, 100, Ownership.LENT)
        self.assertEqual(len(self.queue), count)
        fds, limit = self.queue.nextGroup(40)
        self.assertEqual(len(fds), MAX_FDS_PER_MESSAGE)
        self.assertEqual(limit, 60)
        # Past the next group's position: still at least one byte.
        self.assertEqual(self.queue.nextGroup(150)[1], 1)
        self.queue.sent(len(fds))
        self.assertEqual(self.queue.nextGroup(100), ([fd] * 10, None))

    def test_groupArray(self):
        """
        L{OutgoingDescriptors.nextGroupArray} gives the same group and limit
        as L{OutgoingDescriptors.nextGroup}, as an C{array('i')}.
        """
        fd = self.pipe()
        self.queue.enqueue([fd] * MAX_FDS_PER_MESSAGE, 0, Ownership.LENT)
        self.queue.enqueue(int_array([fd] * 10), 100, Ownership.LENT)
        fds, limit = self.queue.nextGroupArray(40)
        self.assertEqual((fds.typecode, fds.tolist(), limit), ("i", [fd] * MAX_FDS_PER_MESSAGE, 60))
        self.assertEqual(self.queue.nextGroup(40), (fds.tolist(), limit))
        self.queue.sent(len(fds))
        fds, limit = self.queue.nextGroupArray(100)
        self.assertEqual((fds.tolist(), limit), ([fd] * 10, None))

    def test_fullGroupOfDuplicates(self):
        """
        A full group of duplicates (queued from an C{array('i')}) is closed
        once sent, every one of them, and the caller's descriptors stay open.
        """
        fds = [self.pipe() for _ in range(MAX_FDS_PER_MESSAGE // 2 + 1)]
        self.queue.enqueue(int_array(fds * 2)[:MAX_FDS_PER_MESSAGE], 0, Ownership.DUPLICATE)
        duplicates = self.queue.descriptors
        self.assertEqual(len(duplicates), MAX_FDS_PER_MESSAGE)
        self.assertEqual([identity(d) for d in duplicates], [identity(f) for f in (fds * 2)[:MAX_FDS_PER_MESSAGE]])
        self.queue.sent(MAX_FDS_PER_MESSAGE)
        self.assertFalse(any(map(self.isOpen, duplicates)))
        self.assertTrue(all(map(self.isOpen, fds)))

    def test_partlyLentGroup(self):
        """
        A group whose first descriptors are lent and the rest handed over
        closes only the handed-over ones, in whatever part of the group
        is sent.
        """
        lent = self.pipe()
        handed = [os.dup(lent) for _ in range(3)]
        self.queue.enqueue([lent, lent], 0, Ownership.LENT)
        self.queue.enqueue(handed, 0, Ownership.HANDED_OVER)
        self.queue.sent(3)
        self.assertEqual(list(map(self.isOpen, handed)), [False, True, True])
        self.assertTrue(self.isOpen(lent))
        self.queue.sent(2)
        self.assertFalse(any(map(self.isOpen, handed)))
        self.assertTrue(self.isOpen(lent))

    def test_duplicateAllOrNone(self):
        """
        When one duplicate cannot be made, none is queued and none leaks.
        """
        fd = self.pipe()
        bad = max(openDescriptors()) + 100
        self.assertRaises(OSError, self.queue.enqueue, [fd, bad], 0, Ownership.DUPLICATE)
        self.assertEqual(len(self.queue), 0)

    def test_dropClosesOwned(self):
        """
        Dropping the queue (the connection is gone) closes duplicates and
        handed-over descriptors.
        """
        fd = self.pipe()
        handed = os.dup(fd)
        self.queue.enqueue([fd], 0, Ownership.DUPLICATE)
        duplicate = self.queue.descriptors[0]
        self.queue.enqueue([handed], 0, Ownership.HANDED_OVER)
        self.queue.drop()
        self.assertEqual(len(self.queue), 0)
        self.assertFalse(self.isOpen(duplicate))
        self.assertFalse(self.isOpen(handed))
        self.assertTrue(self.isOpen(fd))


class BudgetedQueueTests(SynchronousTestCase):
    """
    An L{OutgoingDescriptors} counting its duplicates in a budget.
    """

    def setUp(self):
        self.before = openDescriptors()
        self.budget = DescriptorBudget(limit=600, share=300)
        self.queue = OutgoingDescriptors(self.budget)
        self.r, self.w = os.pipe()

    def tearDown(self):
        self.queue.drop()
        os.close(self.r)
        os.close(self.w)
        self.assertEqual(self.budget.used, 0)
        assertNoNewDescriptors(self.before)

    def test_counted(self):
        """
        Duplicates count while queued, and no longer once sent or dropped;
        lent and handed-over descriptors are not new and do not count.
        """
        self.queue.enqueue([self.r] * 3, 0, Ownership.DUPLICATE)
        self.queue.enqueue([self.r], 0, Ownership.LENT)
        self.assertEqual(self.budget.used, 3)
        self.queue.sent(2)
        self.assertEqual(self.budget.used, 1)

    def test_shareRefused(self):
        """
        Duplicates that would take the connection past its share are
        refused (C{EMFILE}), none made: a peer that never reads what it is
        sent cannot make the process run out of descriptors.
        """
        self.queue.enqueue([self.r] * 250, 0, Ownership.DUPLICATE)
        with self.assertRaises(OSError) as caught:
            self.queue.enqueue([self.r] * 51, 0, Ownership.DUPLICATE)
        self.assertEqual(caught.exception.errno, errno.EMFILE)
        self.assertEqual((len(self.queue), self.budget.used), (250, 250))

    def test_budgetRefused(self):
        """
        Duplicates the whole budget has no room for are refused too.
        """
        self.budget.take(590)
        self.assertRaises(OSError, self.queue.enqueue, [self.r] * 11, 0, Ownership.DUPLICATE)
        self.queue.enqueue([self.r] * 10, 0, Ownership.DUPLICATE)
        self.queue.drop()
        self.budget.give(590)
