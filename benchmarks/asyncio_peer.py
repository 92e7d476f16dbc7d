# -*- test-case-name: tests.test_anchors -*-
"""
The AMP scenario's conversation written by hand on asyncio, as a competent
engineer would without Twisted: one descriptor per call, the server closes
it and answers; WINDOW calls in flight.  The same ownership as pyamp_fds's
default: each call sends a duplicate of the caller's descriptor and closes
the duplicate once it has been sent.

    python benchmarks/asyncio_peer.py (asyncio|uvloop) CALLS WINDOW

A non-blocking AF_UNIX stream socket driven by C{add_reader}/C{add_writer};
each message is a 12-byte header (body length, request id, descriptor count)
and a body; every call made in one loop turn is flushed together, up to 253
descriptors a C{sendmsg}; every answer produced by one read goes out in one
C{sendmsg}; the client's calls are futures with callbacks.  The server is
forked before either loop exists.  Prints {"descriptors", "seconds",
"sendmsg", "recvmsg", "cpu"}: system calls and CPU seconds of both
processes, each counted from its loop's start (the client: from its first
call) to its last answer.  Exits non-zero if any descriptor received was
left open or any count differs.
"""

import array
import asyncio
import collections
import json
import os
import resource
import socket
import struct
import sys
import time

HEADER = struct.Struct("<III")
MAX_FDS = 253
READ_SIZE = 65536
CONTROL = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
REQUEST = b"take"


def cpuSeconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Connection:
    """
    Framing and descriptor passing over one socket; L{messageReceived} is
    called with each whole message and the descriptors that came with it.
    """

    def __init__(self, loop, sock):
        self.loop, self.sock = loop, sock
        sock.setblocking(False)
        self.inbox = bytearray()
        self.fds = collections.deque()
        self.outbox = collections.deque()  # [data, fds], fds closed once sent
        self.flushing = self.writing = False
        self.counts = {"sendmsg": 0, "recvmsg": 0}
        loop.add_reader(sock.fileno(), self.readable)

    def write(self, data, fds=()):
        self.outbox.append((data, list(fds)))

    def flushSoon(self):
        if not self.flushing:
            self.flushing = True
            self.loop.call_soon(self.flush)

    def flush(self):
        self.flushing = False
        while self.outbox:
            data, fds = [], []
            while self.outbox and len(fds) + len(self.outbox[0][1]) <= MAX_FDS:
                piece, pieceFds = self.outbox.popleft()
                data.append(piece)
                fds.extend(pieceFds)
            data = b"".join(data)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                self.counts["sendmsg"] += 1
                sent = self.sock.sendmsg([data], ancillary)
            except BlockingIOError:
                self.outbox.appendleft((data, fds))
                break
            # The descriptors went with the first byte sent.
            for fd in fds:
                os.close(fd)
            if sent < len(data):
                self.outbox.appendleft((data[sent:], []))
                break
        wantWrite = bool(self.outbox)
        if wantWrite != self.writing:
            self.writing = wantWrite
            if wantWrite:
                self.loop.add_writer(self.sock.fileno(), self.flush)
            else:
                self.loop.remove_writer(self.sock.fileno())

    def readable(self):
        try:
            self.counts["recvmsg"] += 1
            data, ancdata, flags, _ = self.sock.recvmsg(READ_SIZE, CONTROL, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise RuntimeError("descriptors truncated")
        if not data:
            self.loop.remove_reader(self.sock.fileno())
            self.connectionLost()
            return
        self.inbox += data
        offset = 0
        while len(self.inbox) - offset >= HEADER.size:
            length, ident, count = HEADER.unpack_from(self.inbox, offset)
            end = offset + HEADER.size + length
            if len(self.inbox) < end:
                break
            body = bytes(self.inbox[offset + HEADER.size : end])
            fds = [self.fds.popleft() for _ in range(count)]
            offset = end
            self.messageReceived(ident, body, fds)
        del self.inbox[:offset]
        self.dataProcessed()

    def dataProcessed(self):
        pass

    def connectionLost(self):
        pass


class Server(Connection):
    def __init__(self, loop, sock, done):
        super().__init__(loop, sock)
        self.done, self.received = done, 0

    def messageReceived(self, ident, body, fds):
        assert body == REQUEST and len(fds) == 1
        for fd in fds:
            os.close(fd)
        self.received += len(fds)
        self.write(HEADER.pack(0, ident, 0))

    def dataProcessed(self):
        # Every answer of one read, in one system call.
        self.flush()

    def connectionLost(self):
        self.done.set_result(cpuSeconds())


class Client(Connection):
    def __init__(self, loop, sock):
        super().__init__(loop, sock)
        self.calls, self.nextId = {}, 0

    def call(self, fd):
        self.nextId += 1
        answer = self.calls[self.nextId] = self.loop.create_future()
        self.write(HEADER.pack(len(REQUEST), self.nextId, 1) + REQUEST, [os.dup(fd)])
        self.flushSoon()
        return answer

    def messageReceived(self, ident, body, fds):
        self.calls.pop(ident).set_result(body)


def newLoop(kind):
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(kind, sock, reportFd):
    loop = newLoop(kind)
    done = loop.create_future()
    server = Server(loop, sock, done)
    started = cpuSeconds()
    cpu = loop.run_until_complete(done) - started
    loop.close()
    report = dict(server.counts, cpu=cpu, received=server.received)
    os.write(reportFd, json.dumps(report).encode())


def drive(kind, sock, calls, window):
    loop = newLoop(kind)
    client = Client(loop, sock)
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    finished = loop.create_future()
    state = {"sent": 0, "answered": 0}

    def send():
        state["sent"] += 1
        client.call(fd).add_done_callback(answered)

    def answered(future):
        future.result()
        state["answered"] += 1
        if state["sent"] < calls:
            send()
        elif state["answered"] == calls:
            finished.set_result((time.perf_counter(), cpuSeconds()))

    def start():
        for _ in range(min(window, calls)):
            send()

    began, cpuBegan = time.perf_counter(), cpuSeconds()
    loop.call_soon(start)
    ended, cpuEnded = loop.run_until_complete(finished)
    loop.close()
    os.close(fd)
    if client.calls or client.outbox or client.fds:
        raise RuntimeError("calls left over")
    return dict(client.counts, descriptors=calls, seconds=ended - began, cpu=cpuEnded - cpuBegan)


def openDescriptors():
    """
    This process's open descriptors and what each one is: a descriptor
    received and never closed shows as a new one on C{os.devnull}.
    """
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    return found


def leaked(before):
    return [fd for fd, what in openDescriptors().items()
            if what == os.devnull and before.get(fd) != os.devnull]


def main(kind, calls, window):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reportRead, reportWrite = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reportRead)
        a.close()
        before = openDescriptors()
        serve(kind, b, reportWrite)
        os._exit(3 if leaked(before) else 0)
    os.close(reportWrite)
    b.close()
    before = openDescriptors()
    result = drive(kind, a, calls, window)
    left = leaked(before)
    a.close()
    with os.fdopen(reportRead) as report:
        server = json.loads(report.read())
    _, status = os.waitpid(pid, 0)
    if left or status != 0 or server["received"] != calls:
        sys.exit("descriptors left open or lost: client %d, server exit status %d, %d of %d received"
                 % (len(left), status >> 8, server["received"], calls))
    for key in ("sendmsg", "recvmsg", "cpu"):
        result[key] += server[key]
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
