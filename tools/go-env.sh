# Sourced by the Go build recipes in tools/: one module cache and one build cache under
# /var/cache, outside any checkout, so a rerun (or another clone) downloads and compiles
# nothing twice. GOTOOLCHAIN=local: build with the Go on PATH, never fetch another toolchain.
# The recipes need Go >= 1.26 (tools/collector/otelcol/go.mod says `go 1.26.0`).
OTEL_OOM_GO_CACHE=${OTEL_OOM_GO_CACHE:-/var/cache/otel-oom-go}
export GOMODCACHE="$OTEL_OOM_GO_CACHE/mod" GOCACHE="$OTEL_OOM_GO_CACHE/build" GOPATH="$OTEL_OOM_GO_CACHE/path"
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false" CGO_ENABLED=0
if ! command -v go >/dev/null 2>&1; then
  for d in /usr/local/go/bin /usr/lib/go/bin; do [ -x "$d/go" ] && PATH="$d:$PATH"; done
fi
command -v go >/dev/null 2>&1 || { echo "tools: no Go toolchain on PATH (need Go >= 1.26)" >&2; exit 1; }

# cached_build NAME KEY_MATERIAL... : sets CACHE_DIR=/var/cache/otel-oom-NAME-<hash of the
# key material and `go version`>; the caller builds into it only when $CACHE_DIR/.complete
# is missing, under a lock so two concurrent callers do not build twice.
cached_build_dir() {
  local name=$1; shift
  local hash
  hash=$( { go version; cat "$@"; } | sha256sum | cut -c1-16)
  CACHE_DIR="/var/cache/otel-oom-$name-$hash"
}

# go_install_cached NAME PKG VERSION [--check]: `go install PKG@VERSION` into
# /var/cache/otel-oom-NAME-VERSION/ (stripped, -trimpath, plus $EXTRA_LDFLAGS) unless already
# there; prints the binary's absolute path as the last line. With --check only prints it if
# built (else exit 1).
go_install_cached() {
  local name=$1 pkg=$2 version=$3 mode=${4:-}
  local dir="/var/cache/otel-oom-$name-$version" bin
  # different link flags, different binary: keyed too
  [ -n "${EXTRA_LDFLAGS:-}" ] && dir="$dir-$(printf %s "$EXTRA_LDFLAGS" | sha256sum | cut -c1-8)"
  bin="$dir/$(basename "$pkg")"
  if [ "$mode" = "--check" ]; then
    [ -x "$bin" ] && [ -e "$dir/.complete" ] && { echo "$bin"; return 0; }
    return 1
  fi
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9
  if [ ! -e "$dir/.complete" ]; then
    local start
    start=$(date +%s)
    echo "$name: go install $pkg@$version into $dir" >&2
    GOBIN="$dir" go install -trimpath -ldflags="-s -w ${EXTRA_LDFLAGS:-}" "$pkg@$version"
    touch "$dir/.complete"
    echo "$name: built in $(( $(date +%s) - start )) s" >&2
  fi
  exec 9>&-
  echo "$bin"
}
