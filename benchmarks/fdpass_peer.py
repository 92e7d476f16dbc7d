"""
Descriptor passing between two processes in Python, the way c_fdloop.c does
it in C: the parent sends TOTAL descriptors, BATCH per message with one byte
of data; the child receives them, closes each, and answers.

    python benchmarks/fdpass_peer.py (pyamp_fds|stdlib) TOTAL BATCH

Prints {"descriptors": N, "seconds": S} for the time from the first send to
the answer.
"""

import json
import os
import socket
import sys
import time


def main(kind, total, batch):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ackRead, ackWrite = os.pipe()
    pid = os.fork()
    if pid == 0:
        a.close()
        received = 0
        if kind == "pyamp_fds":
            from pyamp_fds.fdio import Receiver, close_all

            receiver = Receiver(4096)
            sock = b.fileno()
            while received < total:
                data, fds = receiver.receive(sock)
                close_all(fds)
                received += len(fds)
        else:
            close = os.close
            while received < total:
                data, fds, flags, addr = socket.recv_fds(b, 4096, 253)
                for fd in fds:
                    close(fd)
                received += len(fds)
        os.write(ackWrite, b"!")
        os._exit(0)
    b.close()
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(batch)]
    sent = 0
    if kind == "pyamp_fds":
        from pyamp_fds.fdio import send_with_fds

        started = time.perf_counter()
        while sent < total:
            n = min(batch, total - sent)
            send_with_fds(a, b"x", fds if n == batch else fds[:n])
            sent += n
    else:
        started = time.perf_counter()
        while sent < total:
            n = min(batch, total - sent)
            socket.send_fds(a, [b"x"], fds if n == batch else fds[:n])
            sent += n
    os.read(ackRead, 1)
    elapsed = time.perf_counter() - started
    os.waitpid(pid, 0)
    print(json.dumps({"descriptors": total, "seconds": elapsed}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
