"""Join tokens and the manager file, alone (no daemons): formats, validation, file modes."""

from __future__ import annotations

import base64
import json
import os
import stat

import msgpack
import pytest
import zmq

from dmp import _config, discovery


def test_token_round_trip_without_and_with_curve() -> None:
    token = discovery.make_token("127.0.0.1:5555", b"s3cret")
    assert token.startswith("dmp1.")
    assert set(token[5:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert discovery.parse_token(token) == discovery.JoinToken("tcp://127.0.0.1:5555", b"s3cret", None)
    public, _ = zmq.curve_keypair()
    pinned = discovery.parse_token(discovery.make_token("tcp://h:1", b"k", public))
    assert pinned.curve_public == public
    assert discovery.parse_token("  " + token + "\n").authkey == b"s3cret"  # pasted with whitespace


def _body(fields: object) -> str:
    return "dmp1." + base64.urlsafe_b64encode(msgpack.packb(fields, use_bin_type=True)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("tcp://127.0.0.1:5555", "must start with 'dmp1.'"),
        ("dmp2.AAAA", "version 'dmp2' is not supported"),
        ("dmp1.!!!not-base64", "damaged"),
        ("dmp1.AAAA", "damaged"),
        (_body(["tcp://h:1", b"k"]), "expected 3 fields"),
        (_body({"a": 1}), "expected 3 fields"),
        (_body(["nonsense", b"k", None]), "invalid dmp address"),
        (_body([5, b"k", None]), "address is not a string"),
        (_body(["tcp://h:1", b"", None]), "non-empty authkey"),
        (_body(["tcp://h:1", "text", None]), "not bytes"),
        (_body(["tcp://h:1", b"k", b"short"]), "40 z85 characters"),
        ("dmp1." + "A" * 5000, "longer than"),
    ],
)
def test_bad_tokens_say_what_is_wrong(token: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"token|address") as info:
        discovery.parse_token(token)
    assert says in str(info.value)


def test_make_token_refuses_an_empty_key_and_a_bad_address() -> None:
    with pytest.raises(ValueError, match="non-empty authkey"):
        discovery.make_token("tcp://h:1", b"")
    with pytest.raises(ValueError, match="invalid dmp address"):
        discovery.make_token("nowhere", b"k")


def test_looks_like_token() -> None:
    assert discovery.looks_like_token("dmp1.abc")
    assert discovery.looks_like_token("dmp7.abc")
    assert not discovery.looks_like_token("tcp://dmp1.example:5555")
    assert not discovery.looks_like_token("dmp-box:5555")


def test_advertised_address_names_this_host_for_a_wildcard_bind() -> None:
    assert discovery.advertised("tcp://127.0.0.1:7") == "tcp://127.0.0.1:7"
    assert discovery.advertised("tcp://0.0.0.0:7") == f"tcp://{os.uname().nodename}:7"
    assert discovery.advertised("ipc:///tmp/x") == "ipc:///tmp/x"


def test_manager_file_is_written_atomically_owner_only_and_read_back(tmp_path) -> None:
    path = tmp_path / "manager.json"
    discovery.write_manager_file(str(path), {"address": "127.0.0.1:9", "pid": 42, "version": "0.1.0"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["manager.json"]  # no temp file left behind
    assert discovery.read_manager_file(str(path))["address"] == "tcp://127.0.0.1:9"
    discovery.remove_manager_file(str(path), pid=41)  # another manager's: left alone
    assert path.exists()
    discovery.remove_manager_file(str(path), pid=42)
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "cannot read manager file"), ("{", "is not JSON"), (json.dumps({"pid": 1}), "has no 'address'"),
     (json.dumps({"address": "nowhere"}), "invalid dmp address")],
)
def test_bad_manager_files_say_what_is_wrong(tmp_path, content: str | None, says: str) -> None:
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=says):
        discovery.read_manager_file(str(path))


def test_log_level_from_flag_then_environment(monkeypatch) -> None:
    monkeypatch.delenv(_config.ENV_LOG_LEVEL, raising=False)
    assert _config.log_level(None) == "info"
    monkeypatch.setenv(_config.ENV_LOG_LEVEL, "DEBUG")
    assert _config.log_level(None) == "debug"
    assert _config.log_level("error") == "error"
    monkeypatch.setenv(_config.ENV_LOG_LEVEL, "loud")
    with pytest.raises(ValueError, match="DMP_LOG_LEVEL must be one of debug, info, warning, error"):
        _config.log_level(None)
