"""
Descriptor accounting for tests: every test that touches descriptors checks
that the process has exactly the descriptors it started with.
"""

import os

from pyamp_fds.closer import waitUntilClosed


def openDescriptors():
    """
    The descriptors this process has open, by number, with what each refers to.
    """
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink("/proc/self/fd/" + name)
        except FileNotFoundError:
            # The descriptor listdir itself used, closed by now.
            pass
    return found


class DescriptorLeak(AssertionError):
    pass


def assertNoNewDescriptors(before, after=None):
    """
    Fail if descriptors were opened or closed since C{before} was taken.
    """
    if after is None:
        # What the library closes in the background must be closed first.
        waitUntilClosed()
        after = openDescriptors()
    opened = {fd: what for fd, what in after.items() if before.get(fd) != what}
    closed = {fd: what for fd, what in before.items() if after.get(fd) != what}
    if opened or closed:
        raise DescriptorLeak("descriptors opened: %r; closed: %r" % (opened, closed))


def identity(fd):
    """
    What C{fd} refers to: its device and inode, the same for every
    descriptor of one open file, in this process or another.
    """
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)
