#!/usr/bin/env bash
# Build VictoriaLogs (the log backend the end-to-end tests query; Apache-2.0) from the Go
# module proxy and print the binary's absolute path as the last line (`make victorialogs`).
# Cached in /var/cache/otel-oom-victorialogs-<version>/. --check: print the path only if built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-env.sh"
go_install_cached victorialogs github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs v1.52.1 "${1:-}"
