#!/usr/bin/env bash
# Build helm v3 from the Go module proxy (for `helm lint` / `helm template` of
# deploy/helm/otel-oom in the tests) and print the binary's absolute path as the last line
# (`make helm`). Cached in /var/cache/otel-oom-helm-<version>-<flags hash>/. --check: print it only if built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-env.sh"
# what helm's own Makefile stamps in: its version, and the Kubernetes release of its client-go
# (v0.37 -> 1.37), the default for `helm template` capabilities and lint deprecation checks
EXTRA_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=v3.22.0 \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37 \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
go_install_cached helm helm.sh/helm/v3/cmd/helm v3.22.0 "${1:-}"
