# Set-up and entry points. `make test` and `make demo` work on a fresh Debian 12 machine (as
# root): they install only the missing Debian packages, build the venv when pyproject.toml
# changed, and never touch the machine's own containerd (tests/containerd.py runs a private one).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
DEB_PACKAGES := containerd runc clang lld wasi-libc libclang-rt-14-dev-wasm32 \
	golang-github-containerd-containerd-dev python3-venv gcc libc6-dev iproute2 \
	containernetworking-plugins curl wrk busybox-static tmux

.PHONY: deps venv go-check containerd-releases test lint demo installer-image example-images clean distclean

# Install only what is missing; `apt-get update` only when something is.
deps:
	@missing=""; \
	for pkg in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "ok installed" \
			|| missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run make deps as root)" >&2; exit 1; fi; \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

# mypy reads its targets and strictness from [tool.mypy] in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Go >= 1.21 builds nerdctl and the ttrpc interop program; Debian 12's golang is too old, so
# deps does not install it. tests/golang.py finds it (the tests use the same answer) and says
# what is missing; a missing Go fails here under CI=true and only warns otherwise.
go-check: venv
	@$(VENV)/bin/python -m tests.golang

CONTAINERD ?= 1.6
MATRIX ?= 1.7 2

# containerd 1.7 and 2.x, with their ctr and runc shim, built from the Go module proxy into
# .cache/go/bin once (tests/versions.py); Debian's 1.6 is a package.
containerd-releases: venv go-check
	@$(VENV)/bin/python -m tests.versions build $(CONTAINERD) $(MATRIX)

# The whole suite on $(CONTAINERD) (Debian's 1.6 by default), then the core subset (the
# `matrix` marker, tests/conftest.py) on each release of $(MATRIX); every run is made and the
# target fails if any did. pytest's own exit status is the result: 5 (no tests) fails too.
test: deps venv go-check containerd-releases
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	@status=0; \
	echo "== the whole suite on containerd $(CONTAINERD)"; \
	TEST_CONTAINERD=$(CONTAINERD) $(VENV)/bin/pytest -q || status=1; \
	for release in $(MATRIX); do \
		echo "== the core subset (-m matrix) on containerd $$release"; \
		TEST_CONTAINERD=$$release $(VENV)/bin/pytest -q -m matrix || status=1; \
	done; \
	exit $$status

demo: deps venv
	$(VENV)/bin/python -m tests.demo

# The node rollout's images, as OCI archives under dist/images/ (packaging/node_images.py):
# the installer (the frozen bundle, built first if needed, with the libraries it loads) and
# the examples' wasm images. Each prints its reference and pinned digest.
installer-image: venv
	$(VENV)/bin/python packaging/node_images.py installer -o dist/images

example-images: venv
	$(VENV)/bin/python packaging/node_images.py examples -o dist/images

# --one-file-system: never descend into a mount a crashed run may have left under .cache.
clean:
	rm -rf --one-file-system .cache .pytest_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
