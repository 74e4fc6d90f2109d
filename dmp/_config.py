"""All configuration in one typed place; the only module that reads os.environ.

Precedence: explicit argument > ``dmp.connect()`` > ``DMP_*`` environment >
daemon config > built-in default.
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass

ENV_ADDRESS = "DMP_ADDRESS"
ENV_AUTHKEY = "DMP_AUTHKEY"
ENV_CURVE = "DMP_CURVE"
ENV_DIRECT = "DMP_DIRECT_ROUTE"
ENV_LOG_LEVEL = "DMP_LOG_LEVEL"
ENV_SPIN = "DMP_SPIN_US"
ENV_TOKEN = "DMP_TOKEN"

LOG_LEVELS = ("debug", "info", "warning", "error")


def direct_route() -> bool:
    """Whether an object host offers the direct route (DMP_DIRECT_ROUTE=0 turns it off)."""
    return os.environ.get(ENV_DIRECT, "1").strip() not in ("0", "false", "no", "off")

# A caller waiting on its one outstanding cluster result looks for it this many
# microseconds before it sleeps (dmp.client.link; docs/performance.md).
SPIN_US = 300


def spin_seconds() -> float:
    """How long a caller waiting on its one outstanding result looks for it
    before it sleeps (DMP_SPIN_US, microseconds; 0 turns it off). By default
    SPIN_US, or 0 in a process that may run on one CPU only (its look would
    hold the CPU the reply needs, if the reply's sender is on this host).

    Raises:
        ValueError: DMP_SPIN_US is not a number of microseconds from 0 to 1000000.
    """
    raw = os.environ.get(ENV_SPIN, "").strip()
    if not raw:
        return SPIN_US / 1e6 if len(os.sched_getaffinity(0)) > 1 else 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_SPIN}={raw!r} is not a number of microseconds") from None
    if not 0 <= value <= 1e6:
        raise ValueError(f"{ENV_SPIN}={raw!r} must be between 0 and 1000000 microseconds")
    return value / 1e6

# Seconds between heartbeats, both ways, between the manager and each peer,
# unless the manager says otherwise (dmp manager --heartbeat-s, sent to every
# peer in its Welcome, which every peer follows). One second notices a
# vanished node within seconds, as the SPEC asks, for one tiny message per
# peer per second.
HEARTBEAT_S = 1.0
# A peer (or, seen from a peer, the manager) silent for more than this many
# heartbeats is gone. Silence is checked once a beat, so it is declared
# 4 to 5 beats after it last spoke: 3 lost or late beats (a loaded host, a
# long GC pause) are tolerated, and a dead node is still noticed within 5 s.
LIVENESS = 4
# An idle worker of a node heartbeats once every this many beats. Its node
# answers for it in between (it reports the worker's death at once and kills
# a stopped one), so the beat only tells a restarted manager the worker is
# there and lets the manager drop one its node lost track of; the manager
# drops an idle node worker silent for more than LIVENESS of these longer
# beats. A thousand idle workers then cost the manager a quarter of the
# messages (see docs/performance.md).
WORKER_BEATS = 4

# Seconds a client waits for a manager to answer before ManagerUnavailableError.
CONNECT_TIMEOUT_S = 10.0
# Default number of reruns of a task whose worker process died.
MAX_RETRIES = 3
# How often a supervisor (a node's, or local mode's) looks for tasks past
# their task_timeout: a worker does not say when a task starts, so a deadline
# is seen at most this late. Reading the workers' slots costs microseconds,
# so ten looks a second cost nothing and keep timeouts to a tenth of a second.
DEADLINE_CHECK_S = 0.1
# Tasks a client keeps submitted but unfinished before its feeder waits:
# enough to keep every worker's prefetch full, little enough that a
# 10-million-item generator is never pulled into memory.
MAX_OUTSTANDING_TASKS = 4096


# Manager limits (dmp manager --max-message-mb / --max-clients). A message is
# every frame of one ZeroMQ message; 1 GiB lets a big array through while a
# runaway client cannot make the daemon allocate without bound.
MAX_MESSAGE_BYTES = 1 << 30
MAX_CLIENTS = 1024
# Tasks one client may have queued in the manager; honest clients stay far
# below it (their credit is MAX_OUTSTANDING_TASKS), a flood is refused.
MAX_QUEUED_PER_CLIENT = 1_000_000


@dataclass(frozen=True, slots=True)
class Target:
    """Where work goes: ``address`` None means local mode."""

    address: str | None
    authkey: bytes | None


_lock = threading.Lock()
_connected: Target | None = None
_known_keys: dict[str, bytes | None] = {}  # address -> key this process was given for it


_cluster_key: bytes | None = None  # in a node's worker: its manager's key


def remember_key(address: str, key: bytes | None) -> None:
    """A daemon's worker knows its manager's key; proxies it unpickles use it too."""
    global _cluster_key
    with _lock:
        _known_keys[address] = key
        _cluster_key = key


def cluster_key() -> bytes | None:
    """In a node's worker, the key of the manager it serves (None elsewhere, or keyless)."""
    return _cluster_key


def set_default(address: str, authkey: bytes | None) -> None:
    global _connected
    with _lock:
        _connected = Target(address, authkey)


_process_key: bytes | None = None  # given on stdin to a daemon that dmp ssh started


def set_process_authkey(key: bytes) -> None:
    """The key for this process when none is given explicitly: it outranks ``DMP_AUTHKEY``."""
    global _process_key
    _process_key = key or None


def authkey_from(value: bytes | str | None) -> bytes | None:
    """The authkey as bytes; an empty one is no key (None).

    Raises:
        TypeError: neither bytes nor str.
    """
    if value is None:
        if _process_key is not None:
            return _process_key
        env = os.environ.get(ENV_AUTHKEY)
        return env.encode() if env else None
    if isinstance(value, str):
        return value.encode() or None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) or None
    raise TypeError(f"authkey must be bytes or str, not {type(value).__name__}")


def resolve(address: object = None, authkey: bytes | str | None = None) -> Target:
    """The target for a new Pool/Process/Executor/Manager."""
    from dmp.wire.address import normalize_address

    if address is not None:
        endpoint = normalize_address(address)
        if authkey is None and endpoint in _known_keys:
            return Target(endpoint, _known_keys[endpoint])
        return Target(endpoint, authkey_from(authkey))
    with _lock:
        connected = _connected
    if connected is not None:
        return Target(connected.address, authkey_from(authkey) if authkey is not None else connected.authkey)
    env = os.environ.get(ENV_ADDRESS)
    if env:
        return Target(normalize_address(env), authkey_from(authkey))
    return Target(None, authkey_from(authkey))


def curve_dir(value: str | None = None) -> str | None:
    """Directory of the manager's CURVE key files (--curve, else DMP_CURVE), or None."""
    return value or os.environ.get(ENV_CURVE) or None


def export_curve(directory: str) -> None:
    """Daemons hand their --curve setting to the processes they start."""
    os.environ[ENV_CURVE] = directory


def env_address() -> str | None:
    """``DMP_ADDRESS`` as given (unchecked), or None."""
    return os.environ.get(ENV_ADDRESS) or None


def env_token() -> str | None:
    """``DMP_TOKEN`` as given (unchecked), or None."""
    return os.environ.get(ENV_TOKEN) or None


def log_level(value: str | None) -> str:
    """The daemons' log level: ``value`` (--log-level), else DMP_LOG_LEVEL, else info.

    Raises:
        ValueError: the level is not one of LOG_LEVELS.
    """
    level = (value or os.environ.get(ENV_LOG_LEVEL) or "info").strip().lower()
    if level not in LOG_LEVELS:
        source = "--log-level" if value else ENV_LOG_LEVEL
        raise ValueError(f"{source} must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    return level


def cpu_count() -> int:
    return os.cpu_count() or 1


_RESOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Bounds on what a node or a job may declare: a hostile peer must not make
# the manager keep thousands of names per node.
MAX_RESOURCES = 64
MAX_RESOURCE_NAME = 64


def check_resources(value: object, what: str = "resources") -> dict[str, float]:
    """``value`` as a {name: amount} dict of resources, checked strictly.

    Names match ``[A-Za-z_][A-Za-z0-9_]*`` (at most MAX_RESOURCE_NAME
    characters); amounts are positive finite numbers (bools are not numbers
    here). At most MAX_RESOURCES names.

    Raises:
        ValueError: ``value`` is not such a mapping; the message names the
            offending entry and ``what`` it was given as.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict of name -> amount, not {type(value).__name__}")
    if len(value) > MAX_RESOURCES:
        raise ValueError(f"{what} names {len(value)} resources, at most {MAX_RESOURCES} are allowed")
    out: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or len(name) > MAX_RESOURCE_NAME or not _RESOURCE_NAME.fullmatch(name):
            shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
            raise ValueError(
                f"{what}: resource name {shown} is not a name like GPU or MEM "
                f"([A-Za-z_][A-Za-z0-9_]*, at most {MAX_RESOURCE_NAME} characters)"
            )
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"{what}: amount of {name} must be a number, not {type(amount).__name__}")
        if not math.isfinite(amount) or amount <= 0:
            raise ValueError(f"{what}: amount of {name} must be a positive finite number, not {amount!r}")
        out[name] = float(amount)
    return out


def parse_resources(text: str) -> dict[str, float]:
    """``"GPU=2,MEM=64e9"`` -> {"GPU": 2.0, "MEM": 64e9} (``dmp worker --resources``).

    Raises:
        ValueError: an entry is not NAME=AMOUNT, a name repeats, or a name or
            amount is not valid (see :func:`check_resources`).
    """
    found: dict[str, object] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in {text!r}: expected NAME=AMOUNT[,NAME=AMOUNT...]")
        name, sep, amount = part.partition("=")
        name, amount = name.strip(), amount.strip()
        if not sep:
            raise ValueError(f"{part!r} is not NAME=AMOUNT")
        if name in found:
            raise ValueError(f"resource {name!r} given twice")
        try:
            found[name] = float(amount)
        except ValueError:
            raise ValueError(f"amount of {name} must be a number, not {amount!r}") from None
    return check_resources(found, "--resources")


def check_timeout(value: object, what: str = "task_timeout") -> float:
    """A task timeout in seconds as a float, 0.0 for None (no timeout).

    Raises:
        ValueError: not None and not a positive finite number.
    """
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number of seconds or None, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive finite number of seconds, not {value!r}")
    return float(value)
