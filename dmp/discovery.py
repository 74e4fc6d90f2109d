"""How a worker or client finds its manager: join tokens and the manager file.

A join token is ``dmp1.`` + base64url (no padding) of the msgpack array
``[address, authkey, curve_public_key or None]``: one URL-safe string that
carries everything ``dmp worker TOKEN`` needs, including (with CURVE) the
manager's public key, which the worker then pins. The manager file is JSON
(``address``, ``pid``, ``version``, ``curve_public``), written atomically,
readable by its owner only; it never holds the authkey.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

import msgpack

from dmp.wire.address import endpoint_host, normalize_address

TOKEN_PREFIX = "dmp1."
# A z85-encoded CURVE public key is 40 characters.
CURVE_KEY_LEN = 40
# Longest token accepted: far above any real one, so garbage fails fast.
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class JoinToken:
    """What a join token carries."""

    address: str
    authkey: bytes
    curve_public: bytes | None = None


def make_token(address: str, authkey: bytes, curve_public: bytes | None = None) -> str:
    """The join token for a manager at ``address`` with ``authkey``.

    Raises:
        ValueError: the address is invalid, the authkey is empty, or the
            CURVE key is not a 40-character z85 public key.
    """
    token = JoinToken(normalize_address(address), authkey, curve_public)
    _check(token)
    body = msgpack.packb([token.address, token.authkey, token.curve_public], use_bin_type=True)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")


def parse_token(text: str) -> JoinToken:
    """Decode and validate a join token.

    Raises:
        ValueError: naming what is wrong with it (prefix, encoding, fields).
    """
    if not isinstance(text, str):
        raise ValueError(f"a dmp join token is a string, not {type(text).__name__}")
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        head = text.split(".", 1)[0] if "." in text else ""
        if head.startswith("dmp") and head[3:].isdigit():
            raise ValueError(f"join token version {head!r} is not supported by this dmp (it reads {TOKEN_PREFIX!r})")
        raise ValueError(f"not a dmp join token: it must start with {TOKEN_PREFIX!r}")
    if len(text) > MAX_TOKEN_CHARS:
        raise ValueError(f"invalid dmp join token: longer than {MAX_TOKEN_CHARS} characters")
    b64 = text[len(TOKEN_PREFIX):]
    try:
        body = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (binascii.Error, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise ValueError("invalid dmp join token: it is damaged (not base64url-encoded msgpack); copy it whole") from None
    if not isinstance(fields, list) or len(fields) != 3:
        raise ValueError("invalid dmp join token: expected 3 fields (address, authkey, CURVE key)")
    address, authkey, curve = fields
    if not isinstance(address, str):
        raise ValueError("invalid dmp join token: its address is not a string")
    try:
        address = normalize_address(address)
    except ValueError as exc:
        raise ValueError(f"invalid dmp join token: {exc}") from None
    if not isinstance(authkey, bytes) or not isinstance(curve, (bytes, type(None))):
        raise ValueError("invalid dmp join token: its authkey or CURVE key is not bytes")
    token = JoinToken(address, authkey, curve)
    _check(token)
    return token


def _check(token: JoinToken) -> None:
    if not token.authkey:
        raise ValueError("invalid dmp join token: a token needs a non-empty authkey")
    if token.curve_public is not None and len(token.curve_public) != CURVE_KEY_LEN:
        raise ValueError(f"invalid dmp join token: the CURVE key must be {CURVE_KEY_LEN} z85 characters")


def looks_like_token(text: str) -> bool:
    """True for anything meant as a join token (``dmpN.``), valid or not."""
    head = text.strip().split(".", 1)[0] if "." in text else ""
    return head.startswith("dmp") and head[3:].isdigit() and "://" not in text


def advertised(endpoint: str) -> str:
    """The address other hosts should use: a wildcard bind becomes this host's name."""
    host = endpoint_host(endpoint)
    if host in ("0.0.0.0", "*", "::", ""):
        if not endpoint.startswith("tcp://"):
            return endpoint
        port = endpoint.rsplit(":", 1)[1]
        return f"tcp://{socket.gethostname()}:{port}"
    return endpoint


# --- the manager file -------------------------------------------------------------------


def write_manager_file(path: str, info: dict[str, Any]) -> None:
    """Write ``info`` as JSON to ``path`` atomically (temp file + rename), mode 0600.

    Raises:
        OSError: the directory is not writable.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".dmp-manager-", dir=directory)  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_manager_file(path: str, pid: int) -> None:
    """Remove ``path`` if it still describes manager ``pid`` (a newer manager may own it)."""
    with contextlib.suppress(OSError, ValueError):
        if read_manager_file(path).get("pid") == pid:
            os.unlink(path)


def read_manager_file(path: str) -> dict[str, Any]:
    """The manager file's JSON object, its address checked.

    Raises:
        ValueError: the file is missing, unreadable, not JSON, or has no valid address.
    """
    try:
        with open(path) as fh:
            info = json.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read manager file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"manager file {path} is not JSON: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("address"), str):
        raise ValueError(f"manager file {path} has no 'address'")
    try:
        info["address"] = normalize_address(info["address"])
    except ValueError as exc:
        raise ValueError(f"manager file {path}: {exc}") from None
    return info
