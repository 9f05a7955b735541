# otel-oom: `make run` sets up and runs the agent; `make test` runs the tests. Both as root on a
# fresh Debian/Ubuntu machine. Everything lands in ./.venv; system packages come from apt; the
# test tools built from Go modules (Go >= 1.26) are cached under /var/cache/otel-oom-*.
PYTHON ?= python3
VENV ?= .venv
# what the agent needs: compile its BPF object (clang, llvm-strip, libbpf headers, make), load it
# (libbpf1), and a virtualenv
RUN_PACKAGES := clang llvm libbpf-dev libbpf1 make python3-venv
# kernels without BTF: the bcc backend compiles the programs at start against the running kernel's
# headers, with Debian's BCC (`make run` adds these only where /sys/kernel/btf/vmlinux is missing)
BCC_PACKAGES := python3-bpfcc linux-headers-$(shell uname -r)
# what only the tests and benchmarks need: bpftool, the TLS test PKI (openssl), namespaces
# (util-linux), Prometheus and promtool, the QEMU kernel matrix (qemu for amd64 and arm64 guests,
# busybox, xz, zstd, kmod; BCC and its oomkill tool for the bcc backend's guests), real container
# runtimes for tests/test_runtimes_* and the image tests (podman, containerd, runc, ...; the agent
# itself needs none of them), debootstrap for the image's base; the single-node Kubernetes of
# tests/e2e/kube and `make kube-up` runs on containerd, runc and the CNI plugins too, with
# iptables (kube-proxy, the portmap plugin) and iproute2 inside its own network namespace
TEST_PACKAGES := bpftool openssl util-linux prometheus qemu-system-x86 qemu-system-arm busybox-static xz-utils \
                 zstd kmod python3-bpfcc bpfcc-tools \
                 podman containerd runc conmon containernetworking-plugins libc6-dev libdevmapper1.02.1 \
                 systemd debootstrap iptables iproute2
PYTEST_ARGS ?=
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
# crictl (the kubelet's CRI client) creates the test pods; built once from the Go module proxy.
# Keep the version in step with testing/containerd.py.
CRICTL_VERSION := v1.37.0
CRICTL := /var/cache/otel-oom-crictl-$(CRICTL_VERSION)/crictl
# dockerd from Debian's docker.io, unpacked rather than installed (its init script would start a
# system-wide daemon); testing/docker.py runs it with directories of its own
DOCKERD_CACHE := /var/cache/otel-oom-dockerd

.PHONY: setup agent-setup system-packages test-packages bcc-packages crictl dockerd venv venv-test bpf run \
        unit test test-tools collector victorialogs helm jaeger earlyoom image kube kube-up kube-down bench clean
# what `make run` needs, nothing more
agent-setup: system-packages venv bpf
# a developer's machine: also the test packages and the test extras (the Go-built test tools
# come with `make test`, or `make test-tools`)
setup: agent-setup test-packages venv-test

# apt-install whichever of $(1) are missing
define apt_install
	@if command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "no apt-get: install $(1) yourself" >&2; fi
endef

system-packages:
	$(call apt_install,$(RUN_PACKAGES))

test-packages:
	$(call apt_install,$(TEST_PACKAGES))

# only where the kernel has no BTF (CO-RE cannot relocate): the bcc backend's BCC and headers
bcc-packages:
	@if [ ! -e /sys/kernel/btf/vmlinux ]; then $(MAKE) -s bcc-packages-install; fi
bcc-packages-install:
	$(call apt_install,$(BCC_PACKAGES))

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

# installed again only when the package or its metadata changed (stamps in the venv)
PACKAGE_FILES := pyproject.toml setup.py $(shell find otel_oom -type f -not -name '*.pyc' 2>/dev/null)
venv: $(VENV)/.installed
$(VENV)/.installed: $(PACKAGE_FILES)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q .
	touch $@

# the package with its test extras (pytest, kubernetes-validate, ...)
venv-test: $(VENV)/.installed-test
$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q ".[test]"
	touch $@

bpf:
	$(MAKE) -s -C bpf

run: agent-setup bcc-packages
	$(VENV)/bin/otel-oom run --console

# each prints the absolute path (or image name) of what it built as its last line; cached
collector:
	@tools/collector/build.sh
victorialogs:
	@tools/victorialogs/build.sh
helm:
	@tools/helm/build.sh
jaeger:
	@tools/jaeger/build.sh
# Debian's earlyoom, unpacked rather than installed (its package would start a host-wide killer)
earlyoom: venv-test
	@$(VENV)/bin/python -c "from testing.around import earlyoom_binary; print(earlyoom_binary())"
image: test-packages
	@tools/image/build.sh
# Kubernetes v1.34.4 (etcd, kube-apiserver, -controller-manager, -scheduler, -proxy, kubelet, kubectl)
# and etcd v3.6.17 from the Go module proxy; prints their directory
kube:
	@tools/kube/build.sh

# A real single-node Kubernetes in its own network and mount namespaces (testing/kube), the chart
# installed with the node-local Collector, VictoriaLogs and Prometheus behind it; builds what is
# missing (cached) and prints the admin kubeconfig's path as the last line (kubectl beside it).
# kube-down stops it and leaves nothing behind. KUBE_NODE names the node (default dev).
KUBE_NODE ?= dev
kube-up: test-packages crictl
	@$(PYTHON) -m testing.kube up $(KUBE_NODE)
kube-down:
	@$(PYTHON) -m testing.kube down $(KUBE_NODE)

# the downstream tools the tests use. The image (debootstrap and apt/pip downloads) and the QEMU
# kernels (downloads, unpacking) are fetched beside the Go builds (CPU), so a cold run overlaps them;
# Kubernetes (the largest Go build) runs beside the other Go builds, so each one's module
# downloads overlap the other's compiling.
test-tools: test-packages earlyoom
	@start=$$(date +%s); log=$$(mktemp /tmp/otel-oom-image-build-XXXXXX.log); qlog=$$(mktemp /tmp/otel-oom-qemu-prepare-XXXXXX.log); \
	klog=$$(mktemp /tmp/otel-oom-kube-build-XXXXXX.log); \
	tools/image/build.sh > $$log 2>&1 & img=$$!; \
	$(VENV)/bin/python -m tests.qemu prepare > $$qlog 2>&1 & qemu=$$!; \
	tools/kube/build.sh > $$klog 2>&1 & kube=$$!; \
	tools/collector/build.sh && tools/victorialogs/build.sh && tools/helm/build.sh && tools/jaeger/build.sh; go=$$?; \
	wait $$img; im=$$?; wait $$qemu; qm=$$?; wait $$kube; km=$$?; \
	grep -E "^(build-base|image):" $$log; [ $$im -eq 0 ] || tail -30 $$log >&2; \
	tail -1 $$log; rm -f $$log; \
	[ $$qm -eq 0 ] && echo "qemu kernels: $$(wc -l < $$qlog) prepared" || tail -20 $$qlog >&2; rm -f $$qlog; \
	grep -E "^kube: built" $$klog; [ $$km -eq 0 ] || tail -30 $$klog >&2; tail -1 $$klog; rm -f $$klog; \
	echo "test-tools: $$(( $$(date +%s) - start )) s"; \
	[ $$go -eq 0 ] && [ $$im -eq 0 ] && [ $$qm -eq 0 ] && [ $$km -eq 0 ]

test: setup test-tools crictl dockerd
	CI=$${CI:-} VENV=$(VENV) tools/test.sh $(PYTEST_ARGS)

# the pure tests (tests/unit/<room>/): no root, no kernel, no servers beyond in-process ones;
# a meaningful green in well under a minute while working on one room
unit: venv-test bpf
	$(VENV)/bin/python -m pytest -q tests/unit $(PYTEST_ARGS)

# the benchmarks' baseline (bpftrace) and profiler (py-spy, the venv's bench extra); bpffs mounted
# if the machine has none; any section that cannot run fails the target with one line
BENCH_PACKAGES := bpftrace bpftool
bench: setup
	$(call apt_install,$(BENCH_PACKAGES))
	$(VENV)/bin/python -m pip install -q ".[bench]"
	mountpoint -q /sys/fs/bpf || mount -t bpf bpffs /sys/fs/bpf
	$(MAKE) -s -C bench/bpf
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m bench

clean:
	$(MAKE) -s -C bpf clean
	$(MAKE) -s -C bench/bpf clean
	rm -rf build dist *.egg-info
