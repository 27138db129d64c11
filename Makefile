# The README's two commands: `make run` (the embedded default benchmark) and `make test`.
# Each creates .venv and installs what it needs by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := numactl libjemalloc2 openssh-server openssh-client rsync chromium
ARGS ?=

.PHONY: run test lint setup system-deps clean bench ipex-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build on this machine's disk, so the range below resolves to it.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests use (numactl, jemalloc, sshd for loopback hosts, chromium for reports).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root or no apt-get: assuming $(APT_PACKAGES) are present"; fi

run: $(STAMP)
	$(BIN)/ansible-playbook run.yml $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check dlrm_bench tests benchmarks

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/precisions.py $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
