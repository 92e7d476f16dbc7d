# -*- test-case-name: tests -*-
"""
The test suite under every Python the package claims and under the oldest
and the newest Twisted it claims: C{make matrix}, or C{nox} for one cell
(C{nox -s "tests-3.10(twisted='oldest')"}).

The oldest Twisted is read from C{pyproject.toml}, so the minimum tested is
the minimum declared.  Each cell copies the tree into its own directory and
installs it there (building the C extension for that Python and that cffi),
because the tests run the package and its examples from their checkout: a
build in the checkout itself would replace the extension of C{.venv}.
"""

import os
import shutil
import sys

import nox
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
ROOT = os.path.dirname(os.path.abspath(__file__))

nox.options.sessions = ["tests"]
# Under .venv, so that make clean removes the matrix's environments too.
nox.options.envdir = os.path.join(ROOT, ".venv", "nox")
# A missing interpreter is an untested version, not a skipped cell.
nox.options.error_on_missing_interpreters = True

# What a copy of the tree leaves out: environments, build products, caches.
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv*",
    ".nox",
    "build",
    "*.egg-info",
    "__pycache__",
    "_native.*",
    ".hypothesis",
    ".pytest_cache",
    "_trial_temp*",
    "results",
    "c_fdloop",
    "c_rpcloop",
    "dropin.cache",
)


def oldestTwisted(python):
    """
    The oldest Twisted that C{pyproject.toml} allows under C{python}.

    @param python: a version such as C{"3.10"}.
    @return: that minimum, from the requirement's C{>=} clause.
    """
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    environment = {"python_version": python, "python_full_version": python + ".0"}
    for line in dependencies:
        requirement = Requirement(line)
        if requirement.name.lower() != "twisted":
            continue
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        minima = [s.version for s in requirement.specifier if s.operator == ">="]
        if len(minima) != 1:
            raise ValueError(f"no single >= minimum in {line!r}")
        return minima[0]
    raise ValueError(f"pyproject.toml names no Twisted for Python {python}")


@nox.session(python=PYTHONS)
@nox.parametrize("twisted", ["oldest", "newest"])
def tests(session, twisted):
    """
    The tests in a copy of the tree, under the chosen Twisted.

    The copy is installed with its test extra, the C extension built for
    this Python; extra arguments go to pytest.
    """
    tree = os.path.join(session.create_tmp(), "tree")
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(ROOT, tree, ignore=_NOT_COPIED)
    session.chdir(tree)
    if twisted == "oldest":
        # With the pyOpenSSL of its time: Twisted's own test_amp (which the
        # tests run against pyamp_fds) makes a certificate request when
        # imported, with X509Req, which pyOpenSSL 24.3 removed.
        pin = ["twisted[tls]==" + oldestTwisted(session.python), "pyopenssl<24.3"]
    else:
        # A fresh environment: the newest everything that resolves.
        pin = ["--upgrade", "twisted[tls]"]
    session.install("-e", ".[test]", *pin)
    session.run(
        "python",
        "-c",
        "import sys, twisted, cffi, hypothesis, pytest;"
        "print('Python', sys.version.split()[0], '| Twisted', twisted.__version__,"
        " '| cffi', cffi.__version__, '| hypothesis', hypothesis.__version__,"
        " '| pytest', pytest.__version__)",
    )
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)
