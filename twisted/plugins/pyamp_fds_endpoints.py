# -*- test-case-name: tests.test_endpointstrings -*-
"""
Twisted plugins for pyamp_fds's endpoint strings: C{fdunix:} gives
L{pyamp_fds.endpoints.UNIXServerEndpoint} and
L{pyamp_fds.endpoints.UNIXClientEndpoint}.

This directory has no C{__init__.py}, on purpose: Twisted finds plugins in
every C{twisted/plugins} directory on C{sys.path}, and installed, this file
joins Twisted's own plugins.
"""

from pyamp_fds.endpoints import UNIXClientParser, UNIXServerParser

fdunixServer = UNIXServerParser()
fdunixClient = UNIXClientParser()
