"""The deployment recipes in deploy/ agree with the real command line.

Fast and self-contained: no docker, no systemd. Unit files are read as INI,
their ExecStart lines (with the example env files substituted) and the compose
commands are parsed by dmp's own argparse parser, and compose.yaml is read by
a small parser for the YAML subset it is written in (cross-checked against
PyYAML when that happens to be installed), so nothing here skips in CI.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dmp import cli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
DOCKER = DEPLOY / "docker"

HARDENING = {
    "NoNewPrivileges": "true",
    "ProtectSystem": "strict",
    "PrivateTmp": "true",
}
# Settings that would cut a daemon off from its peers (tcp://) or ipc:// sockets.
NETWORK_BREAKERS = ("PrivateNetwork", "IPAddressDeny", "PrivateIPC")


# -- helpers ---------------------------------------------------------------


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text(), source=name)
    return parser


def unit_values(name: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps only the last)."""
    return re.findall(rf"^{key}=(.*)$", (SYSTEMD / name).read_text(), flags=re.M)


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def expand_systemd(cmdline: str, env: dict[str, str], instance: str = "node-1") -> list[str]:
    """ExecStart as systemd runs it: ${VAR} from the env file, %i the instance."""
    used = re.findall(r"\$\{(\w+)\}|\$(\w+)", cmdline)
    missing = sorted({a or b for a, b in used} - env.keys())
    assert not missing, f"ExecStart uses variables no example env file sets: {missing}"
    cmdline = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], cmdline)
    cmdline = cmdline.replace("%i", instance).replace("%%", "%")
    assert "%" not in cmdline, f"unexpected specifier in {cmdline!r}"
    return shlex.split(cmdline)


def expand_compose(word: str) -> str:
    """Compose interpolation with the defaults given in the file: ${VAR:-default}."""
    out = re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m.group(1), word)
    assert "${" not in out, f"{word!r} needs a variable without a default"
    return out


def parse_cli(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> argparse.Namespace:
    """Parse argv with the real ``dmp`` parser without running the command."""
    seen: list[argparse.Namespace] = []

    def fake(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    for command in ("cmd_manager", "cmd_worker", "cmd_status"):
        monkeypatch.setattr(cli, command, fake)
    try:
        assert cli.main(list(argv)) == 0
    except SystemExit as exc:  # argparse refused the arguments
        pytest.fail(f"dmp rejects {argv}: exit {exc.code}")
    assert len(seen) == 1
    return seen[0]


_HELP: dict[str, str] = {}


def cli_help(command: str) -> str:
    if command not in _HELP:
        _HELP[command] = subprocess.run(
            [sys.executable, "-m", "dmp", command, "--help"],
            capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
        ).stdout
    return _HELP[command]


def assert_flags_known(argv: list[str]) -> None:
    """Every --flag in a `dmp <command> ...` argv is in `python -m dmp <command> --help`."""
    text = cli_help(argv[0])
    for flag in (a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"dmp {argv[0]} has no {flag}"


def dmp_argv(exec_start: list[str]) -> list[str]:
    """The arguments after the dmp executable (an absolute path, as systemd wants)."""
    exe, *rest = exec_start
    assert exe.startswith("/"), f"ExecStart needs an absolute path, not {exe!r}"
    assert Path(exe).name == "dmp", exe
    return rest


# -- a small parser for the YAML subset compose.yaml is written in ----------
#
# Block mappings and sequences, scalars (plain, 'single' and "double" quoted,
# ints, booleans) and JSON-style flow sequences. Anything else is an error,
# which keeps compose.yaml inside what this parser (and a reader) can check.


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith(("[", '"')):
        return json.loads(text)
    if text.startswith("'"):
        assert text.endswith("'") and len(text) > 1, text
        return text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    if text in ("", "~", "null") or text[0] in "{&*!|>%@`":
        raise ValueError(f"YAML outside the supported subset: {text!r}")
    return text


def load_yaml_subset(text: str) -> Any:
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"line {number}: tab in indentation")
        line = _strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip(" ")), line.strip(), number))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- ") or lines[i][1] == "-":
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                item = lines[i][1][1:].strip()
                if not item or re.match(r"[\w.-]+:(\s|$)", item):
                    raise ValueError(f"line {lines[i][2]}: only scalars in block sequences")
                items.append(_scalar(item))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            m = re.fullmatch(r"([\w.-]+):(?:\s+(.*))?", lines[i][1])
            if not m:
                raise ValueError(f"line {lines[i][2]}: expected 'key: value'")
            key, rest = m.group(1), m.group(2)
            if key in mapping:
                raise ValueError(f"line {lines[i][2]}: duplicate key {key!r}")
            i += 1
            if rest is not None:
                mapping[key] = _scalar(rest)
            elif i < len(lines) and lines[i][0] > indent:
                mapping[key], i = block(i, lines[i][0])
            else:
                raise ValueError(f"line {lines[i - 1][2]}: {key!r} has no value")
        if i < len(lines) and lines[i][0] > indent:
            raise ValueError(f"line {lines[i][2]}: bad indentation")
        return mapping, i

    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"line {lines[end][2]}: bad indentation")
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml_subset((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


# -- systemd -----------------------------------------------------------------


def test_unit_files_parse_and_are_hardened() -> None:
    for name in ("dmp-manager.service", "dmp-worker@.service"):
        unit = read_unit(name)
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
        service = unit["Service"]
        assert service.get("User") not in (None, "", "root", "0"), f"{name}: needs a dedicated user"
        assert service.get("Restart") == "on-failure", name
        assert len(unit_values(name, "ExecStart")) == 1, name
        for key, value in HARDENING.items():
            assert service.get(key) == value, f"{name}: {key}={value}"
        for key in NETWORK_BREAKERS:
            assert service.get(key, "false") in ("false", "no", ""), f"{name}: {key} breaks ZeroMQ"
        families = service.get("RestrictAddressFamilies")
        if families is not None:
            assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families.split()), name
        assert unit["Install"].get("WantedBy") == "multi-user.target", name


def test_manager_unit_runs_dmp_manager_with_its_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    service = read_unit("dmp-manager.service")["Service"]
    assert unit_values("dmp-manager.service", "EnvironmentFile") == ["/etc/dmp/manager.env"]
    env = read_env(SYSTEMD / "manager.env.example")
    argv = dmp_argv(expand_systemd(service["ExecStart"], env))
    assert argv[0] == "manager"
    assert_flags_known(argv)
    args = parse_cli(monkeypatch, argv)
    assert args.bind == env["DMP_BIND"]
    assert args.authkey_file == env["DMP_AUTHKEY_FILE"]


def test_worker_unit_runs_dmp_worker_named_after_its_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    service = read_unit("dmp-worker@.service")["Service"]
    # The shared file is required; an optional per-node one ("-" prefix) may follow.
    files = unit_values("dmp-worker@.service", "EnvironmentFile")
    assert files[0] == "/etc/dmp/worker.env" and all(f.startswith("-") for f in files[1:]), files
    assert "--name %i" in service["ExecStart"]
    env = read_env(SYSTEMD / "worker.env.example")
    argv = dmp_argv(expand_systemd(service["ExecStart"], env, instance="gpu-box-1"))
    assert argv[0] == "worker"
    assert_flags_known(argv)
    args = parse_cli(monkeypatch, argv)
    assert args.address == env["DMP_MANAGER"]
    assert args.processes == int(env["DMP_PROCESSES"]) >= 1
    assert args.name == "gpu-box-1"
    assert args.authkey_file == env["DMP_AUTHKEY_FILE"]


def test_worker_unit_stops_gracefully() -> None:
    service = read_unit("dmp-worker@.service")["Service"]
    assert service["KillSignal"] == "SIGTERM"
    # The node's SIGTERM handler says Bye, then gives its workers 5 s before SIGKILL.
    timeout = service["TimeoutStopSec"]
    assert re.fullmatch(r"\d+s?", timeout) and int(timeout.rstrip("s")) >= 15, timeout
    # Only the node gets SIGTERM; it stops its own worker processes in order.
    assert service.get("KillMode") == "mixed"


def test_example_env_files_set_exactly_what_the_units_use() -> None:
    for unit, example in (("dmp-manager.service", "manager.env.example"),
                          ("dmp-worker@.service", "worker.env.example")):
        used = set(re.findall(r"\$\{(\w+)\}", read_unit(unit)["Service"]["ExecStart"]))
        assert used == set(read_env(SYSTEMD / example)), (unit, example)


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """systemd's own checker, with ExecStart pointed at this installation's dmp."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs systemd")
        pytest.skip("systemd-analyze is not installed")
    dmp = Path(sys.executable).with_name("dmp")
    assert dmp.exists(), f"no dmp console script beside {sys.executable}"
    units = []
    for name, as_name in (("dmp-manager.service", "dmp-manager.service"),
                          ("dmp-worker@.service", "dmp-worker@node1.service")):
        text = (SYSTEMD / name).read_text()
        assert "/opt/dmp/venv/bin/dmp " in text, f"{name}: ExecStart moved; update this test"
        (tmp_path / as_name).write_text(text.replace("/opt/dmp/venv/bin/dmp ", f"{dmp} "))
        units.append(str(tmp_path / as_name))
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    # verify exits 0 on warnings too: any line about our units is a defect.
    ours = [line for line in (done.stdout + done.stderr).splitlines() if str(tmp_path) in line
            or line.startswith(("dmp-manager.service", "dmp-worker@"))]
    assert done.returncode == 0 and ours == [], done.stdout + done.stderr


# -- docker ------------------------------------------------------------------


def test_dockerfile() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert instructions[0] == "FROM python:3.11-slim"
    assert 'ENTRYPOINT ["dmp"]' in instructions
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as root"
    assert any(re.match(r"RUN pip install /src\b", line) for line in instructions)
    copied = [src for line in instructions if line.startswith("COPY ")
              for src in line.split()[1:-1] if not src.startswith("--")]
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
    # What the package build reads: pyproject.toml, its readme and package dirs.
    assert {"pyproject.toml", "README.md", "dmp", "server"} <= set(copied)


def test_compose_parses(compose: dict[str, Any]) -> None:
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:  # the subset parser reads it as a real YAML parser does
        assert compose == yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert set(compose["services"]) == {"manager", "worker"}


def test_compose_manager(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    manager = compose["services"]["manager"]
    assert manager["build"]["context"] == "../.."
    assert (DOCKER / manager["build"]["context"] / manager["build"]["dockerfile"]).resolve() == (
        DOCKER / "Dockerfile").resolve()
    argv = [expand_compose(w) for w in manager["command"]]
    assert argv[0] == "manager"
    assert_flags_known(argv)
    args = parse_cli(monkeypatch, argv)
    assert args.bind == "tcp://0.0.0.0:5555"
    # Not loopback: the key must come from a secret the service mounts.
    assert args.authkey_file == f"/run/secrets/{manager['secrets'][0]}"
    assert set(manager["secrets"]) <= set(compose["secrets"])
    health = [expand_compose(w) for w in manager["healthcheck"]["test"]]
    assert health[:2] == ["CMD", "dmp"]
    assert_flags_known(health[2:])
    assert parse_cli(monkeypatch, health[2:]).authkey_file == args.authkey_file


def test_compose_workers_scale(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    worker = compose["services"]["worker"]
    # --scale worker=N needs replicas that do not clash on names or host ports.
    assert "container_name" not in worker and "ports" not in worker
    argv = [expand_compose(w) for w in worker["command"]]
    assert argv[0] == "worker"
    assert_flags_known(argv)
    args = parse_cli(monkeypatch, argv)
    assert args.address == "tcp://manager:5555"
    assert args.name is None
    assert args.processes >= 1
    assert args.authkey_file == f"/run/secrets/{worker['secrets'][0]}"
    assert set(worker["secrets"]) <= set(compose["secrets"])
    assert worker["image"] == compose["services"]["manager"]["image"]
    assert "manager" in worker["depends_on"]
    grace = worker["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 15, grace


@pytest.mark.parametrize("text, error", [
    ("a:\n\tb: 1\n", "tab"),
    ("a: 1\n  b: 2\n", "indentation"),
    ("a:\n  - x: 1\n", "only scalars"),
    ("a: &anchor 1\n", "subset"),
    ("a: 1\na: 2\n", "duplicate"),
])
def test_yaml_subset_parser_refuses_what_it_does_not_know(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        load_yaml_subset(text)


def test_yaml_subset_parser_reads_the_subset() -> None:
    text = 'x:\n  a: "q # not a comment"  # a comment\n  b: [1, "two"]\n  c:\n    - it\'s\n    - \'y\'\'s\'\n  d: true\n'
    assert load_yaml_subset(text) == {"x": {"a": "q # not a comment", "b": [1, "two"],
                                            "c": ["it's", "y's"], "d": True}}


# -- README ------------------------------------------------------------------


def test_every_file_the_deploy_readmes_name_exists() -> None:
    pages = sorted(DEPLOY.rglob("README.md"))
    assert {p.relative_to(DEPLOY).as_posix() for p in pages} >= {
        "README.md", "systemd/README.md", "docker/README.md", "kubernetes/README.md"}
    index = (DEPLOY / "README.md").read_text()
    for page in pages:
        text = page.read_text()
        links = re.findall(r"\]\(([^)\s]+)\)", text)
        named = re.findall(r"(?<![\w./-])((?:deploy|tests)/[\w./@-]*[\w@/])", text)
        for link in links:
            if "://" not in link and not link.startswith("#"):
                assert (page.parent / link.split("#")[0]).exists(), f"{page} links to {link}"
        for path in named:
            assert (ROOT / path).exists(), f"{page} names {path}"
        if page.parent != DEPLOY:  # every recipe page is in the index's table
            assert f"]({page.relative_to(DEPLOY).as_posix()})" in index, page
    systemd = (SYSTEMD / "README.md").read_text()
    for unit in ("dmp-manager.service", "dmp-worker@.service"):
        assert f"deploy/systemd/{unit}" in systemd


# -- kubernetes --------------------------------------------------------------

KUBERNETES = DEPLOY / "kubernetes"


def kubernetes_objects() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    objects = []
    for name in ("manager.yaml", "worker.yaml"):
        objects += [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]
    return objects


def kube_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in kubernetes_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_kubernetes_manifests_validate_against_the_current_schema() -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    kinds = set()
    for obj in kubernetes_objects():
        kubernetes_validate.validate(obj, version, strict=True)  # raises on any schema error
        kinds.add((obj["kind"], obj["metadata"]["name"]))
    assert kinds == {("Deployment", "dmp-manager"), ("Service", "dmp-manager"), ("Deployment", "dmp-worker")}
    yaml = pytest.importorskip("yaml")
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == ["manager.yaml", "worker.yaml"]


def test_kubernetes_an_invalid_manifest_is_refused() -> None:
    """The check above can fail: a misspelt field is an error under strict validation."""
    import kubernetes_validate

    broken = kube_object("Deployment", "dmp-worker")
    broken["spec"]["template"]["spec"]["containers"][0]["argz"] = ["worker"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secret = {v["name"]: v for v in pod["volumes"]}[mounts["/etc/dmp"]]["secret"]
    assert secret["secretName"] == "dmp-authkey"
    return container


def test_kubernetes_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = kube_object("Deployment", "dmp-manager")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    container = _container(deployment)
    assert_flags_known(container["args"])
    args = parse_cli(monkeypatch, container["args"])
    assert args.bind == "tcp://0.0.0.0:5555" and args.authkey_file == "/etc/dmp/authkey"
    assert args.dashboard == "0.0.0.0:8787"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dmp": 5555, "dashboard": 8787}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "dashboard"}
    service = kube_object("Service", "dmp-manager")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 5555


def test_kubernetes_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = kube_object("Deployment", "dmp-worker")
    container = _container(deployment)
    argv = [a.replace("$(POD_NAME)", "dmp-worker-abc12") for a in container["args"]]
    assert_flags_known(argv)
    args = parse_cli(monkeypatch, argv)
    assert args.address == "tcp://dmp-manager:5555" and args.name == "dmp-worker-abc12"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    assert int(args.processes) <= int(container["resources"]["requests"]["cpu"])
    assert "$POD_NAME" in container["readinessProbe"]["exec"]["command"][-1]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 15
