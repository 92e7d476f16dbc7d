"""
Tests for L{pyamp_fds.fdio}: real sockets, real descriptors, real kernel limits.
"""

import errno
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
from array import array

import pytest

from pyamp_fds import fdio
from pyamp_fds.errors import DescriptorsTruncated
from tests.fdcheck import identity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.usefixtures("noLeaks")


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def files(tmp_path):
    """
    A factory of distinct open files, all closed when the test ends.
    """
    opened = []

    def make(count):
        fds = [
            os.open(tmp_path / ("file-%d" % (len(opened) + i)), os.O_CREAT | os.O_RDWR)
            for i in range(count)
        ]
        opened.extend(fds)
        return fds

    yield make
    for fd in opened:
        os.close(fd)


def isOpen(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def assertSameFiles(sent, received):
    assert [identity(fd) for fd in received] == [identity(fd) for fd in sent]


def assertNothingPending(sock):
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(1)
    finally:
        sock.setblocking(True)


def runChild(role, *passFds):
    """
    Run C{role} of L{tests.children.fdio} in a fresh interpreter with
    C{passFds} inherited, and return what it printed as JSON.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-m", "tests.children.fdio", role] + [str(fd) for fd in passFds],
        cwd=ROOT,
        pass_fds=passFds,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    return json.loads(result.stdout)


class TestSendReceive:
    def test_oneDescriptor(self, pair, files):
        """
        One descriptor travels with the data and refers to the same file.
        """
        a, b = pair
        [fd] = files(1)
        assert fdio.send_with_fds(a, b"hello", [fd]) == (5, 1)
        data, received, flags = fdio.recv_with_fds(b, 100)
        assert data == b"hello"
        assertSameFiles([fd], received)
        fdio.close_all(received)

    def test_mostDescriptors(self, pair, files):
        """
        L{fdio.MAX_FDS_PER_MESSAGE} (253) descriptors travel in one message,
        in order.
        """
        a, b = pair
        sent = files(fdio.MAX_FDS_PER_MESSAGE)
        assert fdio.send_with_fds(a, b"x", sent) == (1, 253)
        data, received, flags = fdio.recv_with_fds(b, 100)
        assert data == b"x"
        assertSameFiles(sent, received)
        fdio.close_all(received)

    def test_tooManyDescriptors(self, pair, files):
        """
        254 descriptors are refused with C{ValueError} before anything is sent.
        """
        a, b = pair
        with pytest.raises(ValueError, match="253"):
            fdio.send_with_fds(a, b"x", files(254))
        assertNothingPending(b)

    def test_descriptorsNeedData(self, pair, files):
        """
        Descriptors with no byte to travel with are refused with C{ValueError}.
        """
        a, b = pair
        [fd] = files(1)
        with pytest.raises(ValueError, match="byte"):
            fdio.send_with_fds(a, b"", [fd])
        with pytest.raises(ValueError, match="byte"):
            fdio.send_with_fds(a, [b"", bytearray()], [fd])
        assertNothingPending(b)

    def test_noDescriptors(self, pair):
        """
        Data alone is sent and received, with no descriptors.
        """
        a, b = pair
        assert fdio.send_with_fds(a, b"plain") == (5, 0)
        assert fdio.recv_with_fds(b, 100)[:2] == (b"plain", [])

    def test_iovec(self, pair, files):
        """
        A sequence of bytes-like objects is sent as one message, in order.
        """
        a, b = pair
        [fd] = files(1)
        pieces = [b"ab", bytearray(b"cd"), memoryview(b"--ef")[2:], b""]
        assert fdio.send_with_fds(a, pieces, [fd]) == (6, 1)
        data, received, flags = fdio.recv_with_fds(b, 100)
        assert data == b"abcdef"
        assertSameFiles([fd], received)
        fdio.close_all(received)

    def test_fileObjects(self, pair, tmp_path):
        """
        Sockets and descriptors may be given as objects with C{fileno()}.
        """
        a, b = pair
        with open(tmp_path / "f", "wb") as f:
            fdio.send_with_fds(a.fileno(), b"x", [f])
            data, received, flags = fdio.recv_with_fds(b.fileno(), 10)
            assertSameFiles([f.fileno()], received)
        fdio.close_all(received)

    def test_receiveInto(self, pair, files):
        """
        L{fdio.recv_into_with_fds} fills the caller's buffer.
        """
        a, b = pair
        sent = files(3)
        fdio.send_with_fds(a, b"into", sent)
        buf = bytearray(16)
        count, received, flags = fdio.recv_into_with_fds(b, buf)
        assert (count, bytes(buf[:count])) == (4, b"into")
        assertSameFiles(sent, received)
        fdio.close_all(received)

    def test_closeOnExec(self, pair, files):
        """
        Received descriptors are close-on-exec.
        """
        a, b = pair
        sent = files(2)
        for fd in sent:
            os.set_inheritable(fd, True)
        fdio.send_with_fds(a, b"x", sent)
        data, received, flags = fdio.recv_with_fds(b, 10)
        assert len(received) == 2
        for fd in received:
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        fdio.close_all(received)

    def test_endOfStream(self, pair):
        """
        A peer that has closed gives empty data.
        """
        a, b = pair
        a.close()
        assert fdio.recv_with_fds(b, 100)[:2] == (b"", [])

    def test_credentialsBesideDescriptors(self, pair, files):
        """
        A credentials control message (C{SO_PASSCRED}) beside the descriptors
        does not truncate them and is ignored.
        """
        a, b = pair
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sent = files(3)
        fdio.send_with_fds(a, b"cred", sent)
        data, received, flags = fdio.recv_with_fds(b, 100, max_fds=3)
        assert data == b"cred"
        assertSameFiles(sent, received)
        assert not flags & socket.MSG_CTRUNC
        fdio.close_all(received)


class TestDuplicateAll:
    def test_duplicates(self, files):
        """
        Every descriptor is duplicated, in order, close-on-exec, and the
        duplicates refer to the same files.
        """
        originals = files(300)
        duplicates = fdio.duplicate_all(originals)
        try:
            assertSameFiles(originals, duplicates)
            assert all(
                fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in duplicates
            )
        finally:
            fdio.close_all(duplicates)
        assert fdio.duplicate_all([]) == []

    def test_allOrNone(self, files):
        """
        A descriptor that cannot be duplicated raises its C{OSError}, and
        none of the duplicates made before it is left open.
        """
        first, last = files(2)
        with pytest.raises(OSError) as caught:
            fdio.duplicate_all([first, -1, last])
        assert caught.value.errno == errno.EBADF


class TestDuplicateArray:
    def test_duplicates(self, files):
        """
        L{fdio.duplicate_array} duplicates every descriptor, in order,
        close-on-exec, into an C{array('i')} that L{fdio.close_all} closes
        as it is.
        """
        originals = files(300)
        duplicates = fdio.duplicate_array(fdio.int_array(originals))
        try:
            assert isinstance(duplicates, array) and duplicates.typecode == "i"
            assertSameFiles(originals, duplicates)
            assert all(
                fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in duplicates
            )
        finally:
            fdio.close_all(duplicates)
        assert not any(map(isOpen, duplicates))
        assert fdio.duplicate_array([]) == array("i")

    def test_allOrNone(self, files):
        """
        A descriptor that cannot be duplicated raises its C{OSError}, and
        none of the duplicates made before it is left open.
        """
        first, last = files(2)
        with pytest.raises(OSError) as caught:
            fdio.duplicate_array([first, -1, last])
        assert caught.value.errno == errno.EBADF


class TestIntArray:
    def test_ints(self):
        """
        L{fdio.int_array} packs ints into an C{array('i')}, in order, and
        returns an C{array('i')} as it is.
        """
        packed = fdio.int_array([3, 0, 7] * 100)
        assert packed.typecode == "i"
        assert packed.tolist() == [3, 0, 7] * 100
        assert fdio.int_array(packed) is packed
        assert fdio.int_array(()) == array("i")

    def test_notInts(self, pair):
        """
        Anything but ints (an object with C{fileno()}, a number out of
        C{int}'s range) is refused with C{struct.error}.
        """
        with pytest.raises(struct.error):
            fdio.int_array([0, pair[0]])
        with pytest.raises(struct.error):
            fdio.int_array([2**40])


class TestFailures:
    def test_truncatedByRoom(self, pair, files):
        """
        More descriptors than the receiver has room for: every descriptor that
        arrived is closed and L{DescriptorsTruncated} carries the data.
        """
        a, b = pair
        fdio.send_with_fds(a, b"cut", files(10))
        with pytest.raises(DescriptorsTruncated) as caught:
            fdio.recv_with_fds(b, 100, max_fds=3)
        assert caught.value.data == b"cut"

    def test_truncatedWithCredentials(self, pair, files):
        """
        With credentials passing on, the room left for a credentials message
        does not let more than C{max_fds} descriptors through.
        """
        a, b = pair
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        fdio.send_with_fds(a, b"cut", files(10))
        with pytest.raises(DescriptorsTruncated):
            fdio.recv_with_fds(b, 100, max_fds=3)

    def test_truncatedAtDescriptorLimit(self, pair, files):
        """
        A receiver at C{RLIMIT_NOFILE} gets C{MSG_CTRUNC} from the kernel: it
        raises L{DescriptorsTruncated} and keeps none of the descriptors.
        """
        a, b = pair
        fdio.send_with_fds(a, b"limit", files(10))
        report = runChild("truncated", b.fileno())
        assert report["outcome"] == "limit"
        assert report["after"] == report["before"]

    def test_receiverClosesTruncated(self, pair, files):
        """
        A L{fdio.Receiver} closes the descriptors of a truncated receive
        before raising L{DescriptorsTruncated}, by default.
        """
        a, b = pair
        fdio.send_with_fds(a, b"cut", files(10))
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(DescriptorsTruncated) as caught:
            fdio.Receiver(100).receive(b.fileno(), 3)
        assert caught.value.data == b"cut"
        assert len(caught.value.descriptors) == 0
        assert len(os.listdir("/proc/self/fd")) == before

    def test_receiverHandsBackTruncated(self, pair, files):
        """
        A L{fdio.Receiver} made with C{closeTruncated=False} hands the
        descriptors of a truncated receive to the caller, open and in order,
        in L{DescriptorsTruncated.descriptors}: the caller chooses where to
        close them.  Room for fewer than a whole message is exact: as many
        arrive as there was room for, and the kernel drops the rest.
        """
        a, b = pair
        sent = files(10)
        fdio.send_with_fds(a, b"cut", sent)
        with pytest.raises(DescriptorsTruncated) as caught:
            fdio.Receiver(100, closeTruncated=False).receive(b.fileno(), 3)
        arrived = list(caught.value.descriptors)
        try:
            assert caught.value.data == b"cut"
            assertSameFiles(sent[:3], arrived)
        finally:
            fdio.close_all(arrived)

    def test_exactRoomWithCredentials(self, pair, files):
        """
        With credentials passing on, the credentials take room of their own:
        still exactly the room asked for arrives.
        """
        a, b = pair
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sent = files(10)
        fdio.send_with_fds(a, b"cut", sent)
        with pytest.raises(DescriptorsTruncated) as caught:
            fdio.Receiver(100, closeTruncated=False).receive(b.fileno(), 5)
        arrived = list(caught.value.descriptors)
        try:
            assertSameFiles(sent[:5], arrived)
        finally:
            fdio.close_all(arrived)

    def test_wouldBlock(self, pair, files):
        """
        A full non-blocking socket raises C{BlockingIOError}, and descriptors
        offered then were not sent.
        """
        a, b = pair
        a.setblocking(False)
        chunk = b"x" * 65536
        with pytest.raises(BlockingIOError):
            while True:
                fdio.send_with_fds(a, chunk)
        with pytest.raises(BlockingIOError):
            fdio.send_with_fds(a, b"y", files(1))
        b.setblocking(False)
        received = []
        try:
            while True:
                data, fds, flags = fdio.recv_with_fds(b, 1 << 20)
                received.extend(fds)
        except BlockingIOError:
            pass
        assert received == []

    def test_peerClosed(self):
        """
        Sending to a peer that has gone raises C{BrokenPipeError} and raises
        no C{SIGPIPE}, even where C{SIGPIPE} would kill the process.
        """
        assert runChild("peerClosed") == "EPIPE"

    def test_badSocket(self, tmp_path):
        """
        A descriptor that is not a socket raises C{OSError} with its errno.
        """
        with open(tmp_path / "f", "wb") as f:
            with pytest.raises(OSError) as caught:
                fdio.send_with_fds(f, b"x")
        assert caught.value.errno == 88  # ENOTSOCK

    def test_badMaxFds(self, pair):
        """
        C{max_fds} outside 0..253 is a C{ValueError}.
        """
        a, b = pair
        with pytest.raises(ValueError):
            fdio.recv_with_fds(b, 10, max_fds=254)
        with pytest.raises(ValueError):
            fdio.recv_with_fds(b, 10, max_fds=-1)
