# Every target installs what it needs: a fresh clone needs only python3, gcc and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NATIVE_SOURCES := $(wildcard csrc/*.c csrc/*.h csrc/*.cdef) csrc/build_native.py
CWARN := -std=gnu99 -Wall -Wextra -Werror
SANITIZERS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
BENCH_ARGS ?=
FUZZ_SECONDS ?= 60

.PHONY: all test bench sanitize fuzz clean

all: $(INSTALLED)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(INSTALLED): $(PY) pyproject.toml setup.py $(NATIVE_SOURCES)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -q

benchmarks/c_fdloop: benchmarks/c_fdloop.c
	$(CC) -O2 $(CWARN) -o $@ $<

bench: $(INSTALLED) benchmarks/c_fdloop
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# The C core's own tests, built with ASan and UBSan, then the Python tests of
# the native layer against a sanitized build of the extension.
tests/c/build/test_native: tests/c/test_native.c $(NATIVE_SOURCES)
	mkdir -p tests/c/build
	$(CC) -g -O1 $(CWARN) $(SANITIZERS) -Icsrc -o $@ tests/c/test_native.c csrc/*.c

sanitize: $(INSTALLED) tests/c/build/test_native
	tests/c/build/test_native
	PYAMP_FDS_CFLAGS="$(SANITIZERS) -g -O1" PYAMP_FDS_LDFLAGS="$(SANITIZERS)" \
		$(PY) -m pip install -q -e .
	ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_fdio.py tests/test_codec.py; \
		status=$$?; rm -f $(INSTALLED); exit $$status

# The box decoder under libFuzzer with ASan and UBSan (clang), for
# FUZZ_SECONDS; see fuzz/run.sh.
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) sh fuzz/run.sh

clean:
	rm -rf $(VENV) build *.egg-info pyamp_fds/_native.* pyamp_fds/__pycache__ \
		tests/c/build fuzz/build benchmarks/c_fdloop benchmarks/results .pytest_cache .hypothesis
