"""The package keeps its promises: one version, documented public names, docs in step."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import dmp
import dmp.managers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / ".ci"))
import mkdocs_hooks  # noqa: E402  (.ci/ is no package)

DIST = "dmp-multiprocessing"


def test_version_is_read_from_the_installed_distribution() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DIST
    assert dmp.__version__ == importlib.metadata.version(DIST) == project["version"]


def test_a_local_pool_never_reads_the_version() -> None:
    # importlib.metadata (and the email parser it brings) is ~9 ms to import
    # and ~35 modules every forked worker's page tables carry: a local pool's
    # process goes without it (its workers' Hellos carry no version).
    code = (
        "import sys, dmp, operator\n"
        "with dmp.Pool(2) as pool:\n"
        "    assert pool.apply(operator.neg, (3,)) == -3\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stderr


def _public(module: object) -> list[tuple[str, object]]:
    return [(name, getattr(module, name)) for name in module.__all__]  # type: ignore[attr-defined]


@pytest.mark.parametrize("module", [dmp, dmp.managers], ids=lambda m: m.__name__)
def test_every_public_name_has_a_docstring(module: object) -> None:
    # The standard library's own classes (dmp.ProcessError *is*
    # multiprocessing.ProcessError) keep the docstring they have: dmp does
    # not patch the standard library. dmp.errors' docstring draws them.
    undocumented = [
        name for name, obj in _public(module)
        if not (obj.__doc__ or "").strip()
        and not getattr(obj, "__module__", getattr(obj, "__name__", "")).startswith("multiprocessing")
    ]
    assert undocumented == []


@pytest.mark.parametrize("module", [dmp, dmp.managers], ids=lambda m: m.__name__)
def test_public_methods_of_dmp_classes_have_docstrings(module: object) -> None:
    undocumented = []
    for name, obj in _public(module):
        if not inspect.isclass(obj) or not obj.__module__.startswith("dmp"):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_") or not (inspect.isfunction(value) or isinstance(value, (classmethod, property))):
                continue
            func = value.__func__ if isinstance(value, classmethod) else value
            if not (func.__doc__ or "").strip():
                undocumented.append(f"{name}.{attr}")
    assert undocumented == []


def test_api_reference_covers_the_joblib_backend_once_it_exists() -> None:
    api = re.sub(r"<!--.*?-->", "", (ROOT / "docs" / "api.md").read_text(), flags=re.S)
    rendered = re.search(r"^::: dmp\.joblib$", api, flags=re.M) is not None
    exists = (ROOT / "dmp" / "joblib.py").is_file() or (ROOT / "dmp" / "joblib").is_dir()
    assert rendered == exists, (
        "docs/api.md: render dmp.joblib (see the comment there) exactly when dmp/joblib.py exists"
    )


def test_include_hook_takes_a_section_and_relinks_it() -> None:
    text = "# T\n\nintro\n\n## A b\n\nsee [x](docs/x.md#y) and [unit](systemd/u.service)\n\n```sh\n# not a heading\n```\n\n### sub\n\nkept\n\n## C\n\nleft out\n"
    part = mkdocs_hooks.section(text, "a-b", shallow=False, where="t")
    assert "# not a heading" in part and "kept" in part and "left out" not in part
    assert mkdocs_hooks.section(text, "t", shallow=True, where="t") == "intro"
    relinked = mkdocs_hooks.relink(part, "deploy/README.md")
    assert "[x](docs/x.md#y)" not in relinked
    assert "unit (`deploy/systemd/u.service`)" in relinked
    assert mkdocs_hooks.relink("[d](docs/x.md#y)", "README.md") == "[d](x.md#y)"
    assert mkdocs_hooks.relink("[b](tests/bench/README.md)", "README.md") == "[b](performance.md)"
    with pytest.raises(Exception, match="no heading"):
        mkdocs_hooks.section(text, "missing", shallow=False, where="t")


@pytest.mark.timeout(120)
def test_api_reference_renders_every_public_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                   cwd=ROOT, check=True, capture_output=True, timeout=100)
    page = (site / "api" / "index.html").read_text()
    missing = [f"{module.__name__}.{name}" for module in (dmp, dmp.managers) for name in module.__all__
               if f'id="{module.__name__}.{name}"' not in page]
    assert missing == []
