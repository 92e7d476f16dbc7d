"""
Programs the tests run as child processes (C{python -m tests.children.NAME}),
for what needs a process of its own: a lowered C{RLIMIT_NOFILE}, a user
without privileges, a fresh descriptor table, a default C{SIGPIPE}.
"""
