#!/usr/bin/env bash
# `make image`: build the Dockerfile with podman from the locally made base image
# (build-base.sh) and print the image name as the last line. podman's layer cache makes a
# rebuild of an unchanged tree take seconds. IMAGE_PREFIX defaults to otel-oom-.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
prefix=${IMAGE_PREFIX:-otel-oom-}
export CONTAINERS_CONF="$here/containers.conf"
base=$("$here/build-base.sh" | tail -1)
image="localhost/${prefix}agent:latest"
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
start=$(date +%s)
# --network=host: the RUN steps reach the Debian mirror and PyPI as this machine does
podman build --network=host --layers --build-arg "PYTHON_IMAGE=$base" -t "$image" -f "$repo/Dockerfile" "$repo" >&2
# the image this one replaces would stay behind untagged: remove it (never anyone else's)
current=$(podman image inspect --format '{{.Id}}' "$image")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then podman rmi "$previous" >/dev/null 2>&1 || true; fi
echo "image: built $image in $(( $(date +%s) - start )) s, $(podman image inspect --format '{{.Size}}' "$image") bytes" >&2
echo "$image"
