"""Addresses: the forms users write, turned into ZeroMQ endpoints (no ZeroMQ needed)."""

from __future__ import annotations

import re

_ENDPOINT = re.compile(r"^(tcp|ipc|inproc)://.+$")
_HOSTPORT = re.compile(r"^\[?([A-Za-z0-9_.\-:]+?)\]?:(\d{1,5})$")


def normalize_address(address: object) -> str:
    """Turn ``(host, port)``, ``"host:port"`` or a ZeroMQ endpoint into an endpoint.

    Raises:
        ValueError: the address is none of those forms.
    """
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
        if isinstance(host, str) and isinstance(port, int) and 0 <= port < 65536:
            host = host or "127.0.0.1"
            if ":" in host:
                host = f"[{host}]"
            return f"tcp://{host}:{port}"
    elif isinstance(address, str):
        address = address.strip()
        if _ENDPOINT.match(address):
            return address
        m = _HOSTPORT.match(address)
        if m:
            return f"tcp://{address}"
    raise ValueError(
        f"invalid dmp address {address!r}: expected 'tcp://HOST:PORT', 'ipc://PATH', "
        "'inproc://NAME', 'HOST:PORT' or a (host, port) tuple"
    )


def endpoint_host(endpoint: str) -> str:
    """The host part of a tcp:// endpoint ('' for ipc/inproc)."""
    if not endpoint.startswith("tcp://"):
        return ""
    rest = endpoint[len("tcp://") :]
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


def is_loopback(endpoint: str) -> bool:
    """True if binding ``endpoint`` cannot be reached from another host."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint_host(endpoint)
    return host in ("localhost", "::1") or host.startswith("127.")
