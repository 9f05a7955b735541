#!/usr/bin/env bash
# Build Jaeger all-in-one v1.76.0 (the trace backend of the --traces test; Apache-2.0) from the Go
# module proxy and print the binary's absolute path as the last line (`make jaeger`). Its go.mod
# carries a replace directive, which `go install pkg@version` refuses: the module is fetched with
# `go mod download` and built as the main module. Cached in /var/cache/otel-oom-jaeger-1.76.0/;
# modules and compiled packages come from tools/go-env.sh's shared caches. --check: print the path
# only if built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-env.sh"
version=1.76.0
dir=/var/cache/otel-oom-jaeger-$version
bin=$dir/jaeger-all-in-one
if [ "${1:-}" = "--check" ]; then
  [ -x "$bin" ] && [ -e "$dir/.complete" ] && { echo "$bin"; exit 0; }
  exit 1
fi
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ ! -e "$dir/.complete" ]; then
  start=$(date +%s)
  echo "jaeger: building github.com/jaegertracing/jaeger@v$version cmd/all-in-one into $dir" >&2
  src=$(go mod download -json "github.com/jaegertracing/jaeger@v$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] || { echo "jaeger: go mod download gave no directory" >&2; exit 1; }
  work=$(mktemp -d "$dir/.src-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  cp -r "$src/." "$work" && chmod -R u+w "$work"
  (cd "$work" && GOWORK=off go build -trimpath -ldflags="-s -w" -o "$bin.tmp" ./cmd/all-in-one)
  mv "$bin.tmp" "$bin"
  touch "$dir/.complete"
  echo "jaeger: built in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
