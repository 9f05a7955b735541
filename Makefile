# otel-oom: `make run` sets up and runs the agent; `make test` runs the tests. Both as root on a
# fresh Debian/Ubuntu machine. Everything lands in ./.venv; system packages come from apt.
PYTHON ?= python3
VENV ?= .venv
APT_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool make python3-venv openssl util-linux \
                prometheus qemu-system-x86 busybox-static xz-utils zstd kmod
PYTEST_ARGS ?=

.PHONY: setup system-packages venv bpf run test bench clean
setup: system-packages venv bpf

system-packages:
	@if command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "no apt-get: install $(APT_PACKAGES) yourself" >&2; fi

venv:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q ".[test]"

bpf:
	$(MAKE) -s -C bpf

run: setup
	$(VENV)/bin/otel-oom run --console

test: setup
	CI=$${CI:-} $(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python -m pip install -q ".[bench]"
	$(MAKE) -s -C bench/bpf
	$(VENV)/bin/python -m bench

clean:
	$(MAKE) -s -C bpf clean
	$(MAKE) -s -C bench/bpf clean
	rm -rf build dist *.egg-info
