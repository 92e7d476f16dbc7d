"""
A twisted.web server restartable through L{pyamp_fds.handover}, for the
restart scenario::

    python -m benchmarks.restart_server HANDOVER_PATH [PORT]

It takes its TCP port (named C{http}) from the process serving the handover
socket, or listens on 127.0.0.1:PORT (0: a free port) if there is none;
prints C{serving PORT} once it serves; and exits 0 when a process that
replaced it has drained it, or on SIGTERM once its connections are done.
"""

import os
import sys

from twisted.internet import defer, task
from twisted.web import resource, server

from pyamp_fds.handover import Handover
from pyamp_fds.handover.web import DrainingHTTPChannel


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain")
        return b"Hello from %d\n" % (os.getpid(),)


@defer.inlineCallbacks
def main(reactor, path, port="0"):
    site = server.Site(Hello(), reactor=reactor)
    site.protocol = DrainingHTTPChannel
    site.log = lambda request: None  # No access log: it would be most of the work.
    handover = Handover(path, reactor=reactor, drainTimeout=10, onDrained=lambda: None)
    handover.listenTCP("http", int(port), site, backlog=1024, interface="127.0.0.1")
    reactor.addSystemEventTrigger("before", "shutdown", handover.stopService)
    ports = yield handover.start()
    os.write(1, b"serving %d\n" % (ports["http"].getHost().port,))
    yield handover.drained


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
