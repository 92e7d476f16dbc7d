# -*- test-case-name: tests.test_broker -*-
"""
Runnable examples of programs built with pyamp_fds.
"""
