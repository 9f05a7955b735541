# otel-oom: `make run` sets up and runs the agent; `make test` runs the tests. Both as root on a
# fresh Debian/Ubuntu machine. Everything lands in ./.venv; system packages come from apt.
PYTHON ?= python3
VENV ?= .venv
APT_PACKAGES := clang llvm libbpf-dev libbpf1 bpftool make python3-venv openssl util-linux \
                prometheus qemu-system-x86 busybox-static xz-utils zstd kmod
# real container runtimes for tests/test_runtimes_* (the agent itself needs none of them)
TEST_APT_PACKAGES := podman containerd runc conmon containernetworking-plugins libc6-dev libdevmapper1.02.1 \
                     systemd
PYTEST_ARGS ?=
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
# crictl (the kubelet's CRI client) creates the test pods; built once from the Go module proxy.
# Keep the version in step with testing/containerd.py.
CRICTL_VERSION := v1.37.0
CRICTL := /var/cache/otel-oom-crictl-$(CRICTL_VERSION)/crictl
# dockerd from Debian's docker.io, unpacked rather than installed (its init script would start a
# system-wide daemon); testing/docker.py runs it with directories of its own
DOCKERD_CACHE := /var/cache/otel-oom-dockerd

.PHONY: setup system-packages test-packages crictl dockerd venv bpf run test bench clean
setup: system-packages venv bpf

system-packages test-packages: PACKAGES = $(if $(filter test-packages,$@),$(TEST_APT_PACKAGES),$(APT_PACKAGES))
system-packages test-packages:
	@if command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "no apt-get: install $(PACKAGES) yourself" >&2; fi

crictl: $(CRICTL)
$(CRICTL):
	@echo "building crictl $(CRICTL_VERSION) (sigs.k8s.io/cri-tools) into $(dir $@)"
	rm -rf $(dir $@).tmp && mkdir -p $(dir $@).tmp
	GOBIN=$(dir $@).tmp CGO_ENABLED=0 GOFLAGS=-trimpath $(GO) install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)
	mv $(dir $@).tmp/crictl $@ && rmdir $(dir $@).tmp

dockerd:
	@v=$$(apt-cache policy docker.io | awk '/Candidate:/ {print $$2}'); \
	if [ -z "$$v" ] || [ "$$v" = "(none)" ]; then \
	  apt-get update -qq && v=$$(apt-cache policy docker.io | awk '/Candidate:/ {print $$2}'); fi; \
	if [ -z "$$v" ] || [ "$$v" = "(none)" ]; then echo "no docker.io package known to apt" >&2; exit 1; fi; \
	d=$(DOCKERD_CACHE)-$$v; \
	if [ ! -x $$d/usr/sbin/dockerd ]; then \
	  echo "unpacking docker.io $$v into $$d"; t=$$(mktemp -d); rm -rf $$d.tmp; \
	  (cd $$t && apt-get download -q=2 docker.io=$$v 2>/dev/null) && dpkg-deb -x $$t/docker.io_*.deb $$d.tmp && \
	  mv $$d.tmp $$d; s=$$?; rm -rf $$t; exit $$s; \
	fi

venv:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q ".[test]"

bpf:
	$(MAKE) -s -C bpf

run: setup
	$(VENV)/bin/otel-oom run --console

test: setup test-packages crictl dockerd
	CI=$${CI:-} $(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python -m pip install -q ".[bench]"
	$(MAKE) -s -C bench/bpf
	$(VENV)/bin/python -m bench

clean:
	$(MAKE) -s -C bpf clean
	$(MAKE) -s -C bench/bpf clean
	rm -rf build dist *.egg-info
