"""The proxy an http/protobuf export goes through, from the variables curl and requests read.

`https_proxy` / `http_proxy` by the collector's scheme, else `all_proxy` (the lower-case name wins
over the upper-case one; HTTP_PROXY is ignored when REQUEST_METHOD is set, the CGI rule against a
client-controlled Proxy header). `no_proxy` lists hosts reached directly: `*`, a name (also its
subdomains; a leading dot is allowed), `name:port`, an IP address or a CIDR network.
gRPC exports do not use this: grpc reads the same variables itself.

Only http:// proxies: an https:// collector is reached through a CONNECT tunnel (TLS end to end).
A value without a scheme is taken as http://, as requests and curl do.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from ..errors import UsageError
from ..urls import Url, parse_url
from .env_values import ConfigError


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """(variable, value) of `name` in lower case, else upper case; ("", "") if neither is set."""
    for var in (name.lower(), name.upper()):
        if var == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
            continue
        value = environ.get(var, "").strip()
        if value:
            return var, value
    return "", ""


def _bypassed(no_proxy: str, endpoint: Url) -> bool:
    import ipaddress  # only with a proxy set: not on every start

    host = endpoint.host.lower().strip("[]")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        address: Optional[Any] = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        if not entry:
            continue
        if entry.startswith("[") and "]:" in entry:    # [v6]:port
            name, _, entry_port = entry.rpartition(":")
        else:                                           # name:port, or a bare v6 address (many colons)
            name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.strip("[]").lstrip(".")
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def proxy_for(environ: Mapping[str, str], endpoint: Url) -> Optional[Url]:
    """The proxy for `endpoint`, or None; ConfigError for a proxy that cannot be used."""
    var, value = _variable(environ, f"{endpoint.scheme}_proxy")
    if not value:
        var, value = _variable(environ, "all_proxy")
    if not value or _bypassed(_variable(environ, "no_proxy")[1], endpoint):
        return None
    if "://" not in value:
        value = "http://" + value
    if not value.lower().startswith("http://"):
        raise ConfigError(f"{var}: otel-oom's http/protobuf export goes through an http:// proxy only "
                          f"(an https:// collector is then reached through a CONNECT tunnel); got "
                          f"{value.partition('://')[0]}://...; give an http:// proxy, or add the "
                          f"collector's host ({endpoint.host}) to NO_PROXY")
    try:
        return parse_url(var, value, "http://proxy.example:3128")
    except UsageError as e:
        raise ConfigError(str(e)) from None
