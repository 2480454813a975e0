# ustack: build, test, demo.  Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ustack-setup
DEB_PACKAGES := iproute2 nftables iputils-ping memcached libmemcached-tools
NAME ?= ust-demo

.PHONY: setup deps test lint demo bench soak clean

setup: $(STAMP)

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    if [ "$$(id -u)" != 0 ]; then echo "error: need root to install$$missing" >&2; exit 1; fi; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml setup.py $(wildcard ext/*.c ext/*.h ext/*.py) | deps
	@$(MAKE) --no-print-directory deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) setup.py -q build_ext --inplace
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	if ls tools/*.py >/dev/null 2>&1; then $(VENV)/bin/mypy tools; fi

test: setup lint
	$(VENV)/bin/pytest -q

demo: setup
	$(VENV)/bin/ustack demo --name $(NAME)

bench: setup
	$(PY) tools/bench_ring.py

# 200 MB each way under every impairment of tests/test_tcp_impair.py (long; not for CI).
SOAK_BYTES ?= 200000000
soak: setup
	SOAK_BYTES=$(SOAK_BYTES) $(VENV)/bin/pytest -q -m soak tests/test_tcp_impair.py

clean:
	rm -rf $(VENV) build *.egg-info ustack/*.so ustack/_ring.c ustack/_csum.c .pytest_cache .mypy_cache .ruff_cache
