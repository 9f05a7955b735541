"""The reporter's identity: the OpenTelemetry resource of every record and metric otel-oom sends.

Precedence: OTEL_SERVICE_NAME > OTEL_RESOURCE_ATTRIBUTES > detected. `service.instance.id` is stable
per host (a UUID v5 of the machine id, else the boot id), not the SDK's random one per start.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, Mapping, Optional
from urllib.parse import unquote

from .. import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

log = logging.getLogger("otel_oom.otlp")

SERVICE_NAME = "otel-oom"
# semconv: a stable service.instance.id is a UUID v5 of an inherent id under this namespace
SERVICE_INSTANCE_NAMESPACE = uuid.UUID("4d63009a-8d0f-11ee-aad7-4c796ed8e320")


def _read_id(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError:
        return None
    # an image built without systemd ships an empty or "uninitialized" machine-id
    if not value or value == "uninitialized":
        return None
    return value


def parse_resource_attributes(text: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES as the SDK reads it: k=v pairs, comma-separated, values %-decoded."""
    attrs: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # same leniency as the SDK's detector; the item itself may hold a secret, so not shown
            log.warning("ignoring a malformed OTEL_RESOURCE_ATTRIBUTES item (expected key=value)")
            continue
        attrs[key.strip()] = unquote(value.strip())
    return attrs


def build_resource(environ: Mapping[str, str] = os.environ, machine_id_path: str = "/etc/machine-id",
                   hostname: Optional[str] = None,
                   boot_id_path: str = "/proc/sys/kernel/random/boot_id",
                   os_release: Optional[str] = None) -> "Resource":
    """The reporter's identity. Precedence: OTEL_SERVICE_NAME > OTEL_RESOURCE_ATTRIBUTES > detected."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.version import __version__ as sdk_version

    machine_id = _read_id(machine_id_path)
    # Without a machine id (a container image that does not mount the host's /etc/machine-id)
    # the boot id is the next best per-host identity: stable across agent restarts, but new
    # after every reboot, so the instance id changes then.
    instance_source = machine_id or _read_id(boot_id_path)
    node_name = environ.get("K8S_NODE_NAME") or None
    attrs: dict[str, Any] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        # inside a pod the hostname is the pod's: the node name from the downward API is the host
        "host.name": node_name or hostname or socket.gethostname(),
        "os.type": "linux",
        "os.version": os_release if os_release is not None else os.uname().release,
    }
    if instance_source:
        attrs["service.instance.id"] = str(uuid.uuid5(SERVICE_INSTANCE_NAMESPACE, instance_source))
    if machine_id:
        attrs["host.id"] = machine_id
    if node_name:
        attrs["k8s.node.name"] = node_name
    attrs.update(parse_resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = environ["OTEL_SERVICE_NAME"]
    return Resource(attrs)
