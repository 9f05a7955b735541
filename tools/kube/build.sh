#!/usr/bin/env bash
# Build the tests' single-node Kubernetes (`make kube`): etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubelet and kubectl, from the Go module
# proxy (go.mod/go.sum here and in etcd/), and print their directory as the last line.
# Cached in /var/cache/otel-oom-k8s-<versions>-<hash of go.sum files, this script, Go version>/
# (built into .tmp, then renamed): a second run compiles nothing and prints the same path.
#   --check   print the directory if it is already built, else exit 1 (no build)
# containerd, runc and the CNI plugins come from Debian (the Makefile's TEST_PACKAGES).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../go-env.sh"
K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.17
cached_build_dir "k8s-$K8S_VERSION-etcd-$ETCD_VERSION" "$here/build.sh" "$here/go.mod" "$here/go.sum" \
  "$here/etcd/go.mod" "$here/etcd/go.sum"
dir=$CACHE_DIR
if [ "${1:-}" = "--check" ]; then
  [ -d "$dir" ] && { echo "$dir"; exit 0; }
  exit 1
fi
exec 9>"$dir.lock"
flock 9
if [ ! -d "$dir" ]; then
  start=$(date +%s)
  echo "kube: building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION into $dir" >&2
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  # what Kubernetes' hack/lib/version.sh stamps in (else the node reports v0.0.0-master);
  # the build date is the release's, so the binaries do not change from one build to the next
  v=${K8S_VERSION#v}
  stamp="gitVersion=$K8S_VERSION gitMajor=${v%%.*} gitMinor=$(echo "$v" | cut -d. -f2) gitTreeState=clean \
buildDate=2026-02-10T19:32:20Z"
  ldflags="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for kv in $stamp; do ldflags="$ldflags -X $pkg.$kv"; done
  done
  # as Kubernetes' release builds: static, no local paths, the selinux tag, no test-only code
  flags=(-mod=readonly -trimpath -tags=selinux,notest)
  # etcd (its own module and dependency set) is built beside Kubernetes: while one downloads
  # modules the other compiles. One `go build` for all six Kubernetes commands shares the
  # compilation of their common packages.
  (cd "$here/etcd" && go build "${flags[@]}" -ldflags="-s -w" -o "$dir.tmp/etcd" go.etcd.io/etcd/server/v3) &
  etcd=$!
  trap 'kill $etcd 2>/dev/null || true' EXIT
  (cd "$here" && go build "${flags[@]}" -ldflags="$ldflags" -o "$dir.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl)
  wait $etcd
  trap - EXIT
  "$dir.tmp/kubelet" --version >&2
  "$dir.tmp/etcd" --version | head -1 >&2
  mv "$dir.tmp" "$dir"
  echo "kube: built in $(( $(date +%s) - start )) s" >&2
fi
exec 9>&-
echo "$dir"
