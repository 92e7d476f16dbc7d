# -*- test-case-name: tests.test_handover -*-
"""
Zero-downtime restarts: a server's listening sockets handed to the process
that replaces it, over pyamp_fds AMP on a UNIX socket, as HAProxy's seamless
reload or Envoy's hot restart do.

Each process declares its ports by name and starts a L{Handover}: it takes
those ports from the process serving the handover socket (or opens them if
there is none), serves them, and only then tells that process, which stops
accepting, lets its connections finish (L{IDrainable} protocols, such as
L{pyamp_fds.handover.web.DrainingHTTPChannel}, are asked to), and exits.
Its sockets never stop listening: connections waiting to be accepted are
accepted by the new process.

From C{twistd}: a L{Handover} is a service, so a C{.tac} file declares its
ports and gives it to the application, and C{twistd -y} started again
replaces the running one.  That, rather than a C{twist} plugin, because a
plugin is found through a C{twisted/plugins/} folder at the top of the
package's tree, and a function in a C{.tac} or C{makeService} needs nothing
but the package.  C{python -m pyamp_fds.handover PATH list|drain} asks a
running server what it serves, or to stop without a successor.
"""

from pyamp_fds.handover.commands import (
    Drain,
    HandoverBusy,
    HandoverError,
    List,
    NotTaking,
    Ready,
    Take,
    UnknownPort,
)
from pyamp_fds.handover.connections import IDrainable
from pyamp_fds.handover.service import Handover

__all__ = [
    "Handover",
    "IDrainable",
    "HandoverError",
    "HandoverBusy",
    "UnknownPort",
    "NotTaking",
    "List",
    "Take",
    "Ready",
    "Drain",
]
