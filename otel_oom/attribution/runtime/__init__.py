"""Names from the container runtime: which container, image and pod a killed process belonged to.

The cgroup path (`attribution.containers`) gives the container id and pod uid; the names come from
the runtime's own API over its unix socket: `cri.py` (containerd, CRI-O: the Kubernetes CRI over
gRPC), `engine_api.py` (docker and podman: their HTTP API), `names.py` (the record both return),
`cache.py` (kept warm by a watcher thread per socket, asked at the kill with a bounded wait) and
`settings.py` (which sockets, auto-detected by default).
"""
