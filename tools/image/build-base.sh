#!/usr/bin/env bash
# Make the base image the Dockerfile builds FROM, locally (no registry is reachable here), and
# print its name as the last line:
#   1. debootstrap a Debian rootfs (minbase + python3, python3-venv, ca-certificates), cached as
#      a tarball in /var/cache/otel-oom-rootfs-<suite>-<hash of this recipe>/rootfs.tar;
#   2. `podman import` it as localhost/<prefix>debian:<suite>-<hash>;
#   3. add this machine's extra CA certificates (/usr/local/share/ca-certificates: package
#      downloads here go through a TLS-inspecting egress) and PIP_CERT, as
#      localhost/<prefix>python:<suite>, the stand-in for python:3.11-slim-bookworm.
# Usage: build-base.sh [SUITE]   (default bookworm). IMAGE_PREFIX defaults to otel-oom-.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${1:-bookworm}
prefix=${IMAGE_PREFIX:-otel-oom-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=python3,python3-venv,ca-certificates
export CONTAINERS_CONF="$here/containers.conf"
hash=$( { echo "$suite $mirror $include"; cat "$here/build-base.sh"; } | sha256sum | cut -c1-12)
cache="/var/cache/otel-oom-rootfs-$suite-$hash"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ ! -e "$cache/rootfs.tar" ]; then
  command -v debootstrap >/dev/null || { echo "build-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  start=$(date +%s)
  tmp=$(mktemp -d /var/tmp/otel-oom-rootfs-XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  echo "build-base: debootstrap $suite ($include) from $mirror" >&2
  debootstrap --variant=minbase --include="$include" "$suite" "$tmp/rootfs" "$mirror" > "$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
  r="$tmp/rootfs"
  # slim, as Debian's own container images are: no docs (copyright files stay), man pages or
  # translations, now or from packages installed later, and apt keeps no caches
  cat > "$r/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
CFG
  cat > "$r/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* "$r"/usr/share/lintian/* \
         "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
         "$r"/var/cache/debconf/*-old "$r"/var/log/*.log
  tar --numeric-owner -C "$r" -cf "$cache/rootfs.tar.tmp" .
  mv "$cache/rootfs.tar.tmp" "$cache/rootfs.tar"
  echo "build-base: rootfs in $(( $(date +%s) - start )) s: $cache/rootfs.tar" >&2
fi
debian="localhost/${prefix}debian:$suite-$hash"
if ! podman image exists "$debian"; then
  podman import --change 'CMD ["/bin/bash"]' "$cache/rootfs.tar" "$debian" >/dev/null
fi
ctx=$(mktemp -d /var/tmp/otel-oom-base-ctx-XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/ca"
cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
cp "$here/local-python.Containerfile" "$ctx/Containerfile"
python="localhost/${prefix}python:$suite"
podman build --quiet --network=host --build-arg "DEBIAN_IMAGE=$debian" -t "$python" "$ctx" >/dev/null
echo "$python"
