"""A client's own managers, seen from its remote Processes: where they listen, which keys travel.

    BaseManager.start() in cluster mode, no address given --> bind_address():
        tcp://<the local address this host uses to reach the cluster manager>:0
    Process.start() in cluster mode --> grant(): the caller's current_process().authkey
        and the keys of the managers this process uses, in the Process payload,
        only when that payload is protected well enough (may_ship)
    RunProcess on the worker --> adopt(grant): the child's current_process().authkey,
        the managers' keys for the proxies it unpickles, and why a key stayed home
        (the AuthenticationError of a proxy call then says what to do)

The rule (docs/security.md, "Keys of a client's own managers"): a key travels
when the cluster link is encrypted (CURVE), or when the cluster has no authkey,
which the manager allows only on loopback: the payload then never leaves this
host, as the standard library's spawn sends its authkey down a local pipe. A
keyed cluster without CURVE only signs messages, so a key in a payload would be
readable on the wire: it stays home, and a manager whose key is the cluster's
(DMP_AUTHKEY, the default of a manager started in cluster mode) needs none.
"""

from __future__ import annotations

import multiprocessing
import socket
from dataclasses import dataclass, field
from typing import Any

from dmp.wire import transport
from dmp.wire.address import endpoint_host

# A manager whose key is the cluster's: the node's own key opens it, nothing travels.
CLUSTER_KEY = "cluster"

_withheld: dict[str, str] = {}  # manager address -> why its key did not come with this process


@dataclass(frozen=True)
class KeyGrant:
    """What a remote Process gets of its caller's keys (pickled with it)."""

    authkey: bytes | None = None  # the caller's current_process().authkey
    keys: dict[str, bytes | str] = field(default_factory=dict)  # manager address -> key or CLUSTER_KEY
    withheld: dict[str, str] = field(default_factory=dict)  # manager address -> why not
    servers: dict[str, bytes] = field(default_factory=dict)  # manager address -> CURVE public key

    def __repr__(self) -> str:  # never print a key
        return f"KeyGrant(authkey={'yes' if self.authkey else 'no'}, keys={sorted(self.keys)}, withheld={sorted(self.withheld)})"


def bind_address(cluster: str) -> str | None:
    """Where a manager started in cluster mode listens: tcp on the interface that reaches ``cluster``.

    None for an ipc:// or inproc:// cluster (its nodes share this host: the
    default ipc:// address reaches them). The port is 0: the manager reads it back.

    Raises:
        ValueError: the cluster's host name does not resolve.
    """
    host = endpoint_host(cluster)
    if not host:
        return None
    port = int(cluster.rsplit(":", 1)[1])
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except (OSError, IndexError) as exc:
        raise ValueError(f"cannot resolve the cluster manager's host {host!r} to bind a manager: {exc}") from None
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)  # no packet: the kernel only picks the route and its local address
        local = probe.getsockname()[0]
    return f"tcp://[{local}]:0" if family == socket.AF_INET6 else f"tcp://{local}:0"


def may_ship(cluster_key: bytes | None, curve: bool) -> bool:
    """Whether a key may go in a Process payload to this cluster (see the module docstring)."""
    return curve or cluster_key is None


def grant(
    cluster: str, cluster_key: bytes | None, known: dict[str, bytes | None], curve: bool,
    servers: dict[str, bytes] | None = None,
) -> KeyGrant:
    """What goes with a Process started on ``cluster``.

    ``known``: this process's manager keys by address; ``curve``: the cluster link
    is encrypted; ``servers``: the CURVE public keys of managers this process
    started under CURVE (public: they always travel).
    """
    ship = may_ship(cluster_key, curve)
    keys: dict[str, bytes | str] = {}
    withheld: dict[str, str] = {}
    for address, key in known.items():
        if address == cluster or key is None:
            continue  # the nodes know their manager's key; a keyless manager needs none
        if cluster_key is not None and key == cluster_key:
            keys[address] = CLUSTER_KEY
        elif ship:
            keys[address] = key
        else:
            withheld[address] = (
                f"the manager at {address} has a key of its own, and dmp does not send a key in a Process "
                "payload on a cluster link without CURVE (signed, not encrypted: readable on the wire). "
                "Start that manager with the cluster's key (set DMP_AUTHKEY, or pass authkey= the cluster's "
                "key), or encrypt the cluster with CURVE (DMP_CURVE)"
            )
    authkey = bytes(multiprocessing.current_process().authkey) if ship else None
    return KeyGrant(authkey, keys, withheld, dict(servers or {}))


def adopt(grant: KeyGrant | None, process: Any, cluster_key: bytes | None) -> None:
    """In the worker about to run ``process``: take the caller's keys (``cluster_key``: the node's own)."""
    from dmp.client import proxylink

    _withheld.clear()
    if grant is None:
        return
    if grant.authkey is not None:
        multiprocessing.current_process().authkey = grant.authkey
        process._config["authkey"] = multiprocessing.current_process().authkey  # its AuthenticationString
    for address, key in grant.keys.items():
        proxylink.remember_key(address, cluster_key if key == CLUSTER_KEY else key)  # type: ignore[arg-type]
    _withheld.update(grant.withheld)
    for address, public in grant.servers.items():
        transport.remember_server_key(address, public)


def why_refused(address: str) -> str | None:
    """Why this process has no key for ``address``'s manager, if its caller withheld it."""
    return _withheld.get(address)
