# -*- test-case-name: tests.test_hostile -*-
"""
Closing descriptors a peer sent, away from the reactor thread.

Closing can block: a socket with C{SO_LINGER} whose data cannot leave
blocks until the linger time runs out, a file on FUSE until its server
answers.  A peer could leave such a descriptor unclaimed and disconnect, and
every other connection would wait.  Descriptors we close on a peer's behalf
are closed by one background thread instead; they count in the descriptor
budget until they are closed.  The caller waits a moment (L{PATIENCE}) for
the close, so that the usual close, which takes microseconds, is done when
the call returns, as callers (and Twisted's own tests) expect; one that
blocks goes on in the background.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyamp_fds.fdio import close_all

if TYPE_CHECKING:
    from pyamp_fds.budget import DescriptorBudget

__all__ = ["closeLater", "discard", "waitUntilClosed"]

#: How long L{closeLater} waits for the close before going on without it.
PATIENCE = 0.01

_queue: queue.Queue[tuple[list[int], DescriptorBudget | None, threading.Event]] = queue.Queue()
_thread: threading.Thread | None = None
_threadLock = threading.Lock()


def _run() -> None:
    while True:
        fds, budget, done = _queue.get()
        try:
            close_all(fds)
            if budget is not None:
                budget.give(len(fds))
        finally:
            done.set()
            _queue.task_done()


def closeLater(fds: Sequence[int], budget: DescriptorBudget | None = None) -> None:
    """
    Close C{fds} (a sequence of ints) in the background, waiting at most
    L{PATIENCE} for it.

    @param budget: a L{pyamp_fds.budget.DescriptorBudget} they count in until
        closed, or C{None}.
    """
    global _thread
    if not len(fds):
        return
    if _thread is None:
        with _threadLock:
            if _thread is None:
                _thread = threading.Thread(target=_run, name="pyamp_fds closer", daemon=True)
                _thread.start()
    done = threading.Event()
    _queue.put((list(fds), budget, done))
    done.wait(PATIENCE)


def discard(fds: Sequence[int], budget: DescriptorBudget | None) -> None:
    """
    Close descriptors a peer sent that nobody will hold (refused, or
    arrived after the connection failed), as held ones are closed: in the
    background, counted in C{budget} until closed; at once without one.
    """
    if budget is None:
        close_all(fds)
        return
    budget.take(len(fds))
    closeLater(fds, budget)


def waitUntilClosed() -> None:
    """
    Block until everything given to L{closeLater} so far is closed: for
    tests and orderly shutdown.
    """
    _queue.join()
