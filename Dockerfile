# otel-oom node agent image.
#
#   docker build -t otel-oom:0.1.0 .            (or: podman build / buildah bud)
#
# Two stages: `build` compiles the CO-RE BPF object with clang and packs it into the wheel
# (setup.py runs `make -C bpf`), together with wheels for every dependency; `runtime` gets
# only libbpf1 and those wheels, installed into a virtualenv (/opt/otel-oom), so no compiler,
# headers or build tool ships in the image. Any Debian bookworm based image with python3 and
# its venv module works as PYTHON_IMAGE (the tests build from a locally debootstrapped one,
# tools/image/build-base.sh; `make image` builds this file with it).
# CO-RE means the object is built once and relocated by libbpf against the running kernel's
# BTF (/sys/kernel/btf/vmlinux) at load time: no kernel headers, on the build host or the node.
#
# The image runs as root, on purpose: loading the BPF programs and attaching them needs CAP_BPF
# and CAP_PERFMON in the process's *effective* set. Kubernetes cannot grant ambient
# capabilities, and container runtimes give the capabilities listed in
# `securityContext.capabilities.add` to a non-root process only in its bounding set, not its
# effective set; file capabilities (setcap on the interpreter) would hand them to every Python
# program in the image. So the agent runs as UID 0 and privilege is kept small by the runtime
# instead: drop ALL capabilities, add back only the ones deploy/daemonset.yaml lists (reasoning
# in docs/deploy.md), no privileged mode, a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang llvm libbpf-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY bpf/ bpf/
COPY otel_oom/ otel_oom/
# the wheel must carry the BPF object: fail the build here rather than at the first start
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels . \
 && python3 -c "import glob, zipfile; w = glob.glob('/wheels/otel_oom-*.whl'); \
assert w and {'otel_oom/bpf/oomkill.x86_64.bpf.o', 'otel_oom/bpf/oomkill.aarch64.bpf.o', 'otel_oom/bpf/oomkill.bcc.c', \
'otel_oom/bpf/access_bcc.h', 'otel_oom/bpf/kill_logic.h', 'otel_oom/bpf/kill_types.h', 'otel_oom/bpf/oomkill.h'} \
<= set(zipfile.ZipFile(w[0]).namelist()), 'BPF objects or the bcc program missing from the wheel'"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="otel-oom" \
      org.opencontainers.image.description="Every Linux OOM kill, caught in the kernel with eBPF, shipped as OpenTelemetry logs and metrics" \
      org.opencontainers.image.licenses="Apache-2.0"
# libbpf1 is the only system library the agent loads (through ctypes)
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libbpf1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /tmp/wheels
# a virtualenv: Debian's python3 refuses system-wide pip installs (PEP 668)
RUN python3 -m venv /opt/otel-oom \
 && /opt/otel-oom/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels otel-oom \
 && /opt/otel-oom/bin/pip uninstall -y -q pip setuptools \
 && rm -rf /tmp/wheels
# the root filesystem is mounted read-only in Kubernetes: never try to write .pyc files
ENV PATH=/opt/otel-oom/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OTEL_OOM_SPOOL_DIR=/var/lib/otel-oom/spool
# root: see the header; capabilities are dropped to the minimum by the runtime, not here
USER root
VOLUME ["/var/lib/otel-oom"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["otel-oom"]
CMD ["run"]
