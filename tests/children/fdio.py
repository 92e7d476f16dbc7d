"""
Checks of L{pyamp_fds.fdio} that need a process of their own; each prints
its outcome as JSON::

    python -m tests.children.fdio truncated SOCKET_FD
    python -m tests.children.fdio peerClosed
"""

import json
import os
import resource
import signal
import socket
import sys

from pyamp_fds import fdio
from pyamp_fds.errors import DescriptorsTruncated


def opened():
    """
    The descriptors this process has open, by number.
    """
    names = [int(n) for n in os.listdir("/proc/self/fd")]
    # Drop the descriptor listdir used, closed by now.
    return sorted(fd for fd in names if os.path.exists("/proc/self/fd/%d" % fd))


def truncated(sock):
    """
    Receive from C{sock} with room for exactly two more descriptors, and
    report the outcome and the descriptors open before and after.
    """
    before = opened()
    # The limit counts descriptor numbers, and the lowest free ones are used
    # first (descriptors already open above it stay open).
    limit, free = 0, 0
    while free < 2:
        free += limit not in before
        limit += 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        fdio.recv_with_fds(sock, 100)
        outcome = "received"
    except DescriptorsTruncated as e:
        outcome = e.data.decode()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    after = opened()
    return {"outcome": outcome, "before": before, "after": after}


def peerClosed():
    """
    Send with descriptors to a peer that has gone, where C{SIGPIPE} would
    kill the process: report what happened.
    """
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    a, b = socket.socketpair()
    b.close()
    try:
        fdio.send_with_fds(a, b"x", [0])
        return "sent"
    except BrokenPipeError:
        return "EPIPE"
    finally:
        a.close()


def main(argv):
    role = argv[1]
    if role == "truncated":
        outcome = truncated(int(argv[2]))
    elif role == "peerClosed":
        outcome = peerClosed()
    else:
        raise SystemExit("unknown role %r" % (role,))
    print(json.dumps(outcome))


if __name__ == "__main__":
    main(sys.argv)
