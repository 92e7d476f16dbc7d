# Every target installs what it needs: a fresh clone needs only python3, gcc and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NATIVE_SOURCES := $(wildcard csrc/*.c csrc/*.h csrc/*.cdef) csrc/build_native.py
CWARN := -std=gnu99 -Wall -Wextra -Werror
SANITIZERS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
BENCH_ARGS ?=
SOAK_ARGS ?=
FUZZ_SECONDS ?= 60

.PHONY: all test matrix bench soak sanitize fuzz lint clean

all: $(INSTALLED)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(INSTALLED): $(PY) pyproject.toml setup.py $(NATIVE_SOURCES)
	$(PY) -m pip install -q -e '.[test,bench]'
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

bench: $(INSTALLED) benchmarks/c_fdloop benchmarks/c_rpcloop bench-tools
	$(PY) benchmarks/run.py $(BENCH_ARGS)

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

# Pyflakes' checks over the Python, and the C under -Wall -Wextra -Werror.
lint: $(INSTALLED)
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check --no-cache --select F,E9 pyamp_fds tests benchmarks twisted
	for c in csrc/*.c tests/c/*.c fuzz/*.c; do \
		$(CC) -fsyntax-only $(CWARN) -Icsrc -Itests/c $$c || exit 1; done

clean:
	rm -rf $(VENV) $(SANITIZE_VENV) build *.egg-info pyamp_fds/_native.* pyamp_fds/__pycache__ \
		tests/c/build fuzz/build benchmarks/c_fdloop benchmarks/c_rpcloop benchmarks/results .pytest_cache .hypothesis
