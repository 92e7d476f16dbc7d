# -*- test-case-name: tests.test_hostile -*-
"""
Closing descriptors a peer sent, away from the reactor thread.

Closing can block: a socket with C{SO_LINGER} whose data cannot leave
blocks until the linger time runs out, a file on FUSE until its server
answers.  A peer could leave such a descriptor unclaimed and disconnect, and
every other connection would wait.  Descriptors we close on a peer's behalf
are closed by one background thread instead; they count in the descriptor
budget until they are closed.

Handing them over costs the caller no lock and no wait: a peer that makes
the process close descriptors hundreds of times a second (connecting,
sending, being closed) would otherwise hold the reactor thread that long,
at every hand-over, waiting for the closer thread to run.  Only refused
descriptors are waited for, a moment (L{PATIENCE}): a protocol that takes
none has them closed when the call returns, as in Twisted (whose own tests
expect it), unless the close blocks.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyamp_fds.fdio import close_all

if TYPE_CHECKING:
    from typing import Protocol

    from pyamp_fds.budget import DescriptorBudget

    class _Counts(Protocol):
        """
        What descriptors handed to the closer count in until closed: a
        L{pyamp_fds.budget.DescriptorBudget}, or its
        L{connectionSockets<pyamp_fds.budget.DescriptorBudget.connectionSockets>}.
        """

        def closing(self, count: int) -> None: ...

        def closed(self, count: int) -> None: ...

__all__ = ["closeLater", "discard", "waitUntilClosed"]

#: How long L{discard} waits for the close before going on without it.
PATIENCE = 0.01

# What to close, in order: (descriptors, budget, an Event set once closed,
# or None).  Appending and popping a deque need no lock of ours.
_pending: collections.deque[
    tuple[Sequence[int], _Counts | None, threading.Event | None]
] = collections.deque()
# Held while the closer thread may sleep: released to wake it.  A lock of the
# thread module, not a Condition, so that waking takes no Python-level lock
# the closer thread could be holding.
_wake = threading.Lock()
_wake.acquire()
_idle = False
_thread: threading.Thread | None = None
_threadLock = threading.Lock()


def _forked() -> None:
    # A child made by fork() has none of its parent's threads: what is
    # pending (its own copies of the descriptors) goes to a closer of its
    # own, started when next needed.
    global _wake, _idle, _thread, _threadLock
    _wake = threading.Lock()
    _wake.acquire()
    _idle = False
    _thread = None
    _threadLock = threading.Lock()


os.register_at_fork(after_in_child=_forked)


def _run() -> None:
    global _idle
    while True:
        while _pending:
            fds, budget, done = _pending.popleft()
            try:
                if fds:
                    close_all(fds)
                    if budget is not None:
                        budget.closed(len(fds))
            finally:
                if done is not None:
                    done.set()
        _idle = True
        # Anything handed over after the loop above, and before _idle was
        # set, was handed over without waking this thread: look again.
        if _pending:
            _idle = False
            continue
        _wake.acquire()


def _handOver(
    fds: Sequence[int], budget: _Counts | None, done: threading.Event | None
) -> None:
    global _thread, _idle
    if budget is not None:
        budget.closing(len(fds))
    if _thread is None:
        with _threadLock:
            if _thread is None:
                _thread = threading.Thread(target=_run, name="pyamp_fds closer", daemon=True)
                _thread.start()
    _pending.append((fds, budget, done))
    if _idle:
        _idle = False
        try:
            _wake.release()
        except RuntimeError:
            # Another thread woke it first.
            pass


def closeLater(
    fds: Sequence[int], budget: _Counts | None = None, patience: float = 0.0
) -> None:
    """
    Close C{fds} (a sequence of ints) in the background.

    @param budget: a L{pyamp_fds.budget.DescriptorBudget} they count in until
        closed (or its C{connectionSockets}, for server connections'
        sockets), or C{None}.
    @param patience: how long to wait for the close, at most (by default,
        not at all).
    """
    if not len(fds):
        return
    fds = list(fds)
    if patience <= 0:
        _handOver(fds, budget, None)
        return
    done = threading.Event()
    _handOver(fds, budget, done)
    done.wait(patience)


def discard(
    fds: Sequence[int], budget: DescriptorBudget | None, patience: float = PATIENCE
) -> None:
    """
    Close descriptors a peer sent that nobody will hold (refused, or
    arrived after the connection failed), as held ones are closed: in the
    background, counted in C{budget} until closed; at once without one.

    @param patience: how long to wait for the close, at most: by default
        L{PATIENCE}, so that refused descriptors are closed when this
        returns, as in Twisted.
    """
    if budget is None:
        close_all(fds)
        return
    budget.take(len(fds))
    closeLater(fds, budget, patience)


def waitUntilClosed() -> None:
    """
    Block until everything given to L{closeLater} so far is closed: for
    tests and orderly shutdown.
    """
    if _thread is None and not _pending:
        return
    done = threading.Event()
    # Closed in order: once this empty one is done, so is everything before.
    _handOver((), None, done)
    done.wait()
