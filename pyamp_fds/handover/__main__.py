# -*- test-case-name: tests.test_handover -*-
"""
Ask a running server about its handover socket::

    python -m pyamp_fds.handover PATH list    # its ports, process id and state
    python -m pyamp_fds.handover PATH drain   # stop it, without a successor
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import Factory

from pyamp_fds.endpoints import UNIXClientEndpoint
from pyamp_fds.handover.commands import Drain, List
from pyamp_fds.protocol import AMP


@defer.inlineCallbacks
def main(reactor: Any, path: str, command: str) -> Generator[defer.Deferred[Any], Any, None]:
    proto = yield UNIXClientEndpoint(reactor, path).connect(  # type: ignore[no-untyped-call]
        Factory.forProtocol(AMP)
    )
    try:
        if command == "list":
            answer = yield proto.callRemote(List)
            print("pid %d %s" % (answer["pid"], answer["state"]))
            for port in answer["ports"]:
                print("%s %s %s" % (port["name"], port["kind"], port["address"]))
        else:
            answer = yield proto.callRemote(Drain)
            print("draining %d connections" % (answer["connections"],))
    finally:
        proto.transport.loseConnection()


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pyamp_fds.handover", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="the handover socket")
    parser.add_argument("command", choices=["list", "drain"])
    args = parser.parse_args(argv)
    task.react(main, [args.path, args.command])


if __name__ == "__main__":
    run(sys.argv[1:])
