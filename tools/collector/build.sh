#!/usr/bin/env bash
# Build the otel-oom OpenTelemetry Collector (`make collector`) from the generated main
# package in otelcol/ (see manifest.yaml) and print the binary's absolute path as the last
# line. Cached in /var/cache/otel-oom-collector-<hash of manifest, sources, flags, Go version>:
# a second run compiles nothing and prints the same path.
#   --check   print the path if that binary is already built, else exit 1 (no build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-env.sh"
cached_build_dir collector "$here/manifest.yaml" "$here/build.sh" "$here"/otelcol/*
bin="$CACHE_DIR/otelcol-otel-oom"
if [ "${1:-}" = "--check" ]; then
  [ -x "$bin" ] && [ -e "$CACHE_DIR/.complete" ] && { echo "$bin"; exit 0; }
  exit 1
fi
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
flock 9
if [ ! -e "$CACHE_DIR/.complete" ]; then
  start=$(date +%s)
  echo "collector: building otelcol-otel-oom (core v0.165.0) into $CACHE_DIR" >&2
  cd "$here/otelcol"
  # -mod=readonly: go.sum is committed, the build must not change the dependency graph;
  # -trimpath -s -w: no local paths, no symbol table or DWARF (89 MB instead of 130 MB)
  go build -mod=readonly -trimpath -ldflags="-s -w" -o "$bin.tmp" .
  mv "$bin.tmp" "$bin"
  "$bin" --version >&2
  touch "$CACHE_DIR/.complete"
  echo "collector: built in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
