# The README's two commands: `make run` (the embedded default benchmark) and `make test`.
# Each creates .venv and installs what it needs by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := numactl libjemalloc2 openssh-server openssh-client rsync chromium sudo
ARGS ?=

.PHONY: run test lint setup system-deps clean bench ipex-venv ansible-lint molecule

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build on this machine's disk, so the range below resolves to it.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests use (numactl, jemalloc, sshd for loopback hosts, chromium for reports,
# sudo for the tuning tasks' privilege escalation).
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

# `make test` runs both through pytest (tests/test_ansible_molecule.py); these run them alone.
ansible-lint: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint --offline

molecule: $(STAMP)
	@set -e; for role in roles/*/; do \
	  echo "== molecule test: $$role"; \
	  (cd $$role && PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/molecule test -s default); \
	done

bench: $(STAMP)
	$(BIN)/python benchmarks/precisions.py $(ARGS)

# Optional: the IPEX backend (--backend ipex) in its own venv. intel-extension-for-pytorch 2.8.0 (its
# last release; the project is archived) needs torch 2.8, which PyPI has only as the CUDA build
# (~7 GB with its nvidia-* wheels). The package goes in with --no-deps: its own torch range is for
# the main venv. Then: .venv-ipex/bin/dlrm-bench run --backend ipex ...
IPEX_VENV := .venv-ipex
IPEX_STAMP := $(IPEX_VENV)/.installed

$(IPEX_STAMP): pyproject.toml
	$(PYTHON) -m venv $(IPEX_VENV)
	$(IPEX_VENV)/bin/pip install -q --upgrade pip
	$(IPEX_VENV)/bin/pip install -q torch==2.8.0 intel-extension-for-pytorch==2.8.0 \
	  numpy scikit-learn rich pyyaml jinja2
	$(IPEX_VENV)/bin/pip install -q --no-deps -e .
	$(IPEX_VENV)/bin/python -c 'import intel_extension_for_pytorch as ipex, dlrm_bench; print("ipex", ipex.__version__)'
	touch $(IPEX_STAMP)

ipex-venv: $(IPEX_STAMP)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
