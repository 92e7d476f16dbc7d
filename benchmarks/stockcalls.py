"""
Counting the system calls of Twisted's own UNIX transport, for the peers
that run stock Twisted in the benchmarks (pyamp_fds's transports count
their own).
"""


def countStockCalls():
    """
    Wrap Twisted's C{sendmsg} and C{recvmsg} helpers and its plain socket
    writes (C{send}, which its transport uses for bytes without
    descriptors) so that each call is counted.

    @return: a dict C{{"sendmsg": n, "recvmsg": n, "send": n}}, kept up to
        date.
    """
    from twisted.internet import tcp
    from twisted.python import sendmsg

    counts = {"sendmsg": 0, "recvmsg": 0, "send": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapper

    sendmsg.sendmsg = counting("sendmsg", sendmsg.sendmsg)
    sendmsg.recvmsg = counting("recvmsg", sendmsg.recvmsg)
    tcp.Connection.writeSomeData = counting("send", tcp.Connection.writeSomeData)
    return counts
