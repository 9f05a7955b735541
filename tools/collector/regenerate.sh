#!/usr/bin/env bash
# Regenerate otelcol/ (main package, go.mod, go.sum) from manifest.yaml with the
# OpenTelemetry Collector Builder (ocb) of the same release. Run after editing the manifest,
# then `make collector`; commit manifest.yaml and otelcol/ together.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-env.sh"
go install go.opentelemetry.io/collector/cmd/builder@v0.165.0
out=$(mktemp -d /tmp/otel-oom-ocb-XXXXXX)
trap 'rm -rf "$out"' EXIT
sed "s#^  version:.*#&\n  output_path: $out#" "$here/manifest.yaml" > "$out/manifest.yaml"
# ocb writes the sources and go.mod, then its `go mod tidy` stops at test-only dependencies
# of some components whose modules the proxy does not serve (403); `tidy -e` skips those
"$GOPATH/bin/builder" --config "$out/manifest.yaml" --skip-compilation > "$out/ocb.log" 2>&1 \
  || grep -q "failed to update go.mod" "$out/ocb.log" || { cat "$out/ocb.log" >&2; exit 1; }
(cd "$out" && go mod tidy -e 2> "$out/tidy.log") || { cat "$out/tidy.log" >&2; exit 1; }
# `tidy -e` also skips a module the build itself needs when the proxy refuses it, and exits 0
# with a go.mod that cannot build: every package the Collector imports must resolve from the
# go.mod and go.sum as written (-mod=readonly), else nothing is copied and the script fails
if ! (cd "$out" && GOFLAGS="$GOFLAGS -mod=readonly" go list -deps . > /dev/null 2> "$out/list.log"); then
  echo "regenerate.sh: the generated go.mod cannot build the Collector (a module the proxy refused?):" >&2
  cat "$out/list.log" >&2
  grep -v "^go: finding\|^go: downloading\|^go: found" "$out/tidy.log" >&2 || true
  exit 1
fi
for f in main.go main_others.go main_windows.go components.go go.mod go.sum; do
  cp "$out/$f" "$here/otelcol/$f"
done
echo "regenerated $here/otelcol from manifest.yaml" >&2
