"""Container names from docker or podman: their HTTP API (Docker Engine API) over a unix socket.

Podman serves the same API (its "compat" endpoints) from `podman system service`, so one client
does both; `kind` says which runtime the socket belongs to. Paths carry no API version prefix, so
the daemon answers with its current version: docker 29 refuses versions below 1.44, and the fields
read here (`Id`, `Names`, `Image`, `ImageID`, `Labels`; `Name`, `Config.Image`, `Image` on inspect)
have been stable since API 1.18. Containers created through cri-dockerd carry the
kubelet's labels, which give the pod.

Besides the periodic list, `events` follows the daemon's event stream (`/events`, container create
and start), so a new container is fetched by id the moment it starts instead of at the next list:
a podman list costs tens of ms of the daemon's time (measured: bench/runtime_names.py), so with
events the full list only resynchronises, every `EVENTS_RESYNC_S` (cache.py).

Standard library only: `http.client` with a connection that dials the socket.
"""
from __future__ import annotations

import functools
import json
import socket
from typing import Any, Callable, Optional
from urllib.parse import quote

from .names import ContainerNames, RuntimeUnavailable, clip, k8s_from_labels

RESPONSE_MAX = 64 << 20  # a node's whole container list is far smaller; a larger answer is refused
_EVENT_MAX = 1 << 20
_EVENTS_POLL_S = 0.25    # how often a quiet event stream looks at the stop flag


@functools.cache
def _unix_connection_class() -> Any:
    """An http.client connection class that dials a unix socket. http.client (and the email package
    under it, ~10 ms) is imported on the first request: an agent on a host without docker or podman
    never pays for it, one with them pays after `ready`."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float) -> None:
            super().__init__("localhost", timeout=timeout)
            self.path = path

        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    return UnixConnection


class EngineApiClient:
    """docker (`kind="docker"`) or podman (`kind="podman"`) at the unix socket `path`."""

    def __init__(self, kind: str, path: str, timeout: float = 2.0) -> None:
        self.kind = kind
        self.runtime_name = kind
        self.path = path
        self.timeout = timeout

    def close(self) -> None:
        pass  # one connection per request: nothing held open

    def _get(self, url: str) -> tuple[int, Any]:
        import http.client

        conn = _unix_connection_class()(self.path, self.timeout)
        try:
            conn.request("GET", url, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read(RESPONSE_MAX + 1)
        except (OSError, http.client.HTTPException) as e:
            raise RuntimeUnavailable(f"GET {url}: {e}") from None
        finally:
            conn.close()
        if len(body) > RESPONSE_MAX:
            raise RuntimeUnavailable(f"GET {url}: answer larger than {RESPONSE_MAX} bytes")
        if resp.status == 404:
            return 404, None
        if resp.status != 200:
            raise RuntimeUnavailable(f"GET {url}: HTTP {resp.status}")
        try:
            return 200, json.loads(body)
        except ValueError as e:
            raise RuntimeUnavailable(f"GET {url}: not JSON ({e})") from None

    def events(self, on_container: Callable[[str], None], should_stop: Callable[[], bool],
               on_connected: Callable[[], None] = lambda: None) -> None:
        """Follow the daemon's container create/start events, calling `on_container(id)` for each,
        until `should_stop()` or the stream ends (returns) or fails (RuntimeUnavailable).
        `on_connected` runs once the daemon accepted the stream: what started before is not in it.

        HTTP/1.0, so the daemon streams the body unchunked until it closes; a raw socket with a short
        timeout lets the loop look at `should_stop` between reads.
        """
        filters = quote(json.dumps({"type": ["container"], "event": ["create", "start"]}), safe="")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(f"GET /events?filters={filters} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            sock.settimeout(_EVENTS_POLL_S)
            buf, headers_done = b"", False
            while not should_stop():
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                if not headers_done:
                    if b"\r\n\r\n" not in buf:
                        continue
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    status = head.split(b"\r\n", 1)[0]
                    if b" 200 " not in status + b" ":
                        raise RuntimeUnavailable(f"GET /events: {status.decode('latin-1')[:80]}")
                    headers_done = True
                    on_connected()
                *lines, buf = buf.split(b"\n")
                if len(buf) > _EVENT_MAX:
                    raise RuntimeUnavailable("GET /events: an event larger than 1 MiB")
                for line in lines:
                    cid = _event_container(line)
                    if cid:
                        on_container(cid)
        except OSError as e:
            raise RuntimeUnavailable(f"GET /events: {e}") from None
        finally:
            sock.close()

    def list(self) -> list[ContainerNames]:
        _, items = self._get("/containers/json?all=1")
        if not isinstance(items, list):
            raise RuntimeUnavailable("GET /containers/json: not a list")
        return [n for n in (self._from_list(i) for i in items if isinstance(i, dict)) if n is not None]

    def get(self, container_id: str) -> Optional[ContainerNames]:
        status, doc = self._get(f"/containers/{quote(container_id, safe='')}/json")
        if status == 404 or not isinstance(doc, dict):
            return None
        config: dict[str, Any] = doc["Config"] if isinstance(doc.get("Config"), dict) else {}
        labels = _labels(config.get("Labels"))
        return self._names(doc.get("Id"), doc.get("Name"), config.get("Image"), doc.get("Image"), labels)

    def _from_list(self, item: dict[str, Any]) -> Optional[ContainerNames]:
        names = item.get("Names")
        name = names[0] if isinstance(names, list) and names else None
        return self._names(item.get("Id"), name, item.get("Image"), item.get("ImageID"), _labels(item.get("Labels")))

    def _names(self, cid: Any, name: Any, image: Any, image_id: Any, labels: dict[str, str]) -> Optional[ContainerNames]:
        if not isinstance(cid, str) or not cid:
            return None
        k8s: dict[str, Any] = k8s_from_labels(labels)
        if isinstance(name, str):
            name = name.removeprefix("/")  # the API shows names as "/name"
        return ContainerNames(container_id=cid, runtime=self.runtime_name, name=clip(name), image=clip(image),
                              image_id=clip(image_id), pod_name=k8s.get("pod_name"),
                              pod_namespace=k8s.get("pod_namespace"), pod_uid=k8s.get("pod_uid"),
                              k8s_container_name=k8s.get("k8s_container_name"),
                              restart_count=k8s.get("restart_count"))  # only the kubelet's count: k8s.container.*


def _event_container(line: bytes) -> Optional[str]:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    actor = doc.get("Actor")
    cid = actor.get("ID") if isinstance(actor, dict) else None
    cid = cid or doc.get("id")
    return cid if isinstance(cid, str) and cid else None


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
