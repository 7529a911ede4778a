# ipsecd — one Makefile for developers and CI.  Every target installs what it needs.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
PYTEST_ARGS ?=
# scripts/lab.py options for lab-test, e.g. LAB_ARGS='--timeout 1800'
LAB_ARGS ?= --timeout 2400

# Debian packages the test tiers need (etcd, strongSwan, kernel lab, namespaces, captures,
# nftables for the NAT namespace of tests/support/nat.py).
APT_PACKAGES := python3-venv etcd-server etcd-client iproute2 iputils-ping tcpdump kmod nftables \
	strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins \
	libstrongswan-standard-plugins strongswan-pki \
	qemu-system-x86 linux-image-amd64 busybox-static tshark

.PHONY: help deps venv check lint fmt typecheck unit test lab-test bench demo proto proto-check clean

help:
	@echo "make demo      end-to-end demonstration (installs what it needs)"
	@echo "make test      the whole suite: lint, types, unit, integration, interop, kernel lab"
	@echo "make check     lint + format check + mypy strict + host tests (no VM)"
	@echo "make lab-test  tests marked 'kernel' inside a virtme-ng VM with real ESP/AH"
	@echo "make bench     benchmarks, JSON figures on stdout"
	@echo "make proto     regenerate ipsecd/v1 from proto/"

# Idempotent: only calls apt-get when a package is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "error: need root to install $$missing (or install them yourself)"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@bash scripts/install-lab-peers.sh

$(VENV)/.stamp: pyproject.toml constraints.txt
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(VENV)/.stamp

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

check: deps venv lint typecheck
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lab-test: deps venv
	$(PYTHON) scripts/lab.py $(LAB_ARGS) pytest -m kernel tests/kernel $(PYTEST_ARGS)

test: check lab-test

bench: deps venv
	$(PYTHON) bench/run.py

demo: deps venv
	$(PYTHON) scripts/demo.py

proto: venv
	$(PYTHON) scripts/genproto.py

proto-check: venv
	$(PYTHON) scripts/genproto.py --check

# Coverage-guided fuzzing (docs/operations.md "Fuzzing"): each target of tests/fuzz for
# FUZZ_SECONDS, one after the other, at the lowest CPU priority.  Corpora and findings
# (crash-*, timeout-*) stay in FUZZ_DIR/TARGET, so a later run goes on from there.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= codec endpoint sealed spd
FUZZ_DIR ?= $(or $(TMPDIR),/tmp)/ipsecd-fuzz
.PHONY: fuzz
fuzz: venv
	@rc=0; for t in $(FUZZ_TARGETS); do \
		echo "== tests/fuzz/fuzz_$$t.py for $(FUZZ_SECONDS) s (corpus and findings: $(FUZZ_DIR)/$$t)"; \
		IPSECD_FUZZ_DIR=$(FUZZ_DIR) nice -n 19 $(PYTHON) tests/fuzz/fuzz_$$t.py \
			-max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS) || { rc=1; echo "== fuzz_$$t: FINDING"; }; \
	done; exit $$rc

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
