#!/usr/bin/env bash
# Build helm v3 from the Go module proxy (for `helm lint` / `helm template` of
# deploy/helm/otel-oom in the tests) and print the binary's absolute path as the last line
# (`make helm`). Cached in /var/cache/otel-oom-helm-<version>/. --check: print it only if built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-env.sh"
go_install_cached helm helm.sh/helm/v3/cmd/helm v3.22.0 "${1:-}"
