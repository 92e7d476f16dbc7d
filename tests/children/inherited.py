"""
Print, as a JSON object, what each descriptor this process has open refers
to, by number: run with C{close_fds=False}, what it inherited::

    python -m tests.children.inherited
"""

import json
import os


def main():
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[name] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            # The descriptor listdir itself used, closed by now.
            pass
    print(json.dumps(found))


if __name__ == "__main__":
    main()
