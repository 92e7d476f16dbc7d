"""
Tests for L{pyamp_fds.budget}: counts, room, waiting readers, and relief.
"""

import threading

from twisted.trial.unittest import SynchronousTestCase

from pyamp_fds.budget import DescriptorBudget
from pyamp_fds.fdio import MAX_FDS_PER_MESSAGE


class Holder:
    """
    A table of descriptors as the budget sees it.
    """

    def __init__(self, unclaimed):
        self.unclaimed = unclaimed
        self.evicted = []

    def evict(self, why):
        self.evicted.append(why)


class DescriptorBudgetTests(SynchronousTestCase):
    """
    L{DescriptorBudget} without connections.
    """

    def test_defaults(self):
        """
        By default the budget is the soft limit less a quarter kept for the
        application, and a connection's share is well below it yet never
        less than a full receive.
        """
        budget = DescriptorBudget(limit=1000)
        self.assertEqual((budget.limit, budget.share), (1000, 500))
        self.assertEqual(DescriptorBudget(limit=100).share, MAX_FDS_PER_MESSAGE)
        self.assertEqual(DescriptorBudget(limit=100000).share, 25000)

    def test_room(self):
        """
        The room for the next receive is a full one while the headroom
        covers it, then what is left, never below zero.
        """
        budget = DescriptorBudget(limit=1000)
        self.assertEqual(budget.room(), MAX_FDS_PER_MESSAGE)
        budget.take(900)
        self.assertEqual(budget.room(), 100)
        budget.take(200)
        self.assertEqual(budget.room(), 0)
        budget.give(1100)
        self.assertEqual(budget.used, 0)

    def test_waitingReaders(self):
        """
        A reader waiting for headroom is resumed once a full receive fits,
        once however often it asked.
        """
        budget = DescriptorBudget(limit=1000)
        resumed = []
        budget.take(900)
        first, second = (lambda: resumed.append(1)), (lambda: resumed.append(2))
        budget.waitForHeadroom(first)
        budget.waitForHeadroom(first)
        budget.waitForHeadroom(second)
        budget.give(100)
        self.assertEqual(resumed, [])
        budget.give(300)
        self.assertEqual(sorted(resumed), [1, 2])
        # Resumed once: later releases call nobody.
        budget.take(400)
        budget.give(400)
        self.assertEqual(sorted(resumed), [1, 2])

    def test_relieveClosesTheLargestHolder(self):
        """
        Short of headroom, the connection holding the most unclaimed
        descriptors is closed, if it holds more than two full receives.
        """
        budget = DescriptorBudget(limit=2048)
        small, large = Holder(10), Holder(1000)
        for holder in (small, large):
            budget.hold(holder)
        budget.take(2000)
        self.assertTrue(budget.relieve())
        self.assertEqual((len(small.evicted), len(large.evicted)), (0, 1))
        self.assertIn("holds the most unclaimed descriptors (1000)", large.evicted[0])

    def test_relieveWaitsForTheCloser(self):
        """
        Nobody is closed while the descriptors already handed to the closer
        would leave room for a full receive once closed; once they are
        closed (from the closer's thread) and the budget is short again,
        the largest holder is.
        """
        budget = DescriptorBudget(limit=2048)
        large = Holder(1000)
        budget.hold(large)
        budget.take(2000)
        budget.closing(1000)
        self.assertFalse(budget.relieve())
        self.assertEqual(large.evicted, [])
        closer = threading.Thread(target=budget.closed, args=(1000,))
        closer.start()
        closer.join()
        self.assertEqual(budget.used, 1000)
        budget.take(1000)
        self.assertTrue(budget.relieve())
        self.assertEqual(len(large.evicted), 1)

    def test_relieveSparesSmallHolders(self):
        """
        Nobody is closed when no connection holds more than two full receives:
        a client pipelining calls holds up to one between reads, and is no hog.
        """
        budget = DescriptorBudget(limit=2048)
        holder = Holder(2 * MAX_FDS_PER_MESSAGE)
        budget.hold(holder)
        self.assertFalse(budget.relieve())
        self.assertEqual(holder.evicted, [])
