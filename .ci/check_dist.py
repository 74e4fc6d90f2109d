"""Build the sdist and wheel, install the wheel into a fresh venv, and run dmp from it.

A packaging mistake (a package or data file left out, a broken console script,
a version read from the wrong place) fails here, not on a user's machine. Run
from anywhere: ``.venv/bin/python .ci/check_dist.py`` (part of the README's
test command and so of CI). Exits non-zero with a message naming what is wrong.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DIST, VERSION = PROJECT["name"], PROJECT["version"]
STEM = re.sub(r"[-_.]+", "_", DIST)

# What the wheel must hold: every package named here, their typing markers,
# and every module found under their source directories (so a subpackage
# left out of pyproject's package list fails the check).
WHEEL_FILES = [
    "dmp/__init__.py", "dmp/py.typed", "dmp/client/__init__.py", "dmp/node/__init__.py",
    "dmp/wire/__init__.py", "dmp_server/__init__.py", "dmp_server/py.typed",
]
SOURCES = {"dmp": ROOT / "dmp", "dmp_server": ROOT / "server" / "dmp_server"}


def source_modules() -> list[str]:
    """Every module of the source tree, as its path inside the wheel."""
    return sorted(
        f"{name}/{path.relative_to(src).as_posix()}"
        for name, src in SOURCES.items() for path in src.rglob("*.py") if "__pycache__" not in path.parts
    )
SDIST_FILES = ["LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "server/dmp_server/__init__.py"]

# The smoke job: the README's main job (the seed examples locally, then a
# manager and two worker nodes on loopback and a Pool.map across them), run by
# the wheel's interpreter from a directory that holds no dmp source.
SMOKE_LINES = ["[1, 4, 9]", "hello bob", "cluster map: " + str([x * x for x in range(40)]),
               "manager and worker nodes shut down"]


def fail(message: str) -> None:
    sys.exit(f"check_dist: {message}")


def run(cmd: list[str], cwd: Path, timeout: float) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"{' '.join(cmd)} took more than {timeout:.0f} s")
    if done.returncode != 0:
        fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def check_archives(out: Path) -> Path:
    wheels = list(out.glob(f"{STEM}-{VERSION}-*.whl"))
    sdists = list(out.glob(f"{STEM}-{VERSION}.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        fail(f"expected one wheel and one sdist of {DIST} {VERSION}, built {sorted(p.name for p in out.iterdir())}")
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
        info = f"{STEM}-{VERSION}.dist-info"
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    missing = [n for n in sorted({*WHEEL_FILES, *source_modules()}) if n not in names]
    if not any(n.startswith(f"{info}/") and n.endswith("LICENSE") for n in names):
        missing.append(f"{info}/.../LICENSE")
    if missing:
        fail(f"the wheel lacks {missing}")
    stray = sorted({n.split("/")[0] for n in names} - {"dmp", "dmp_server", info})
    if stray:
        fail(f"the wheel installs unexpected top-level names {stray}")
    if not re.search(r"^dmp = dmp\.cli:main$", entry_points, flags=re.M):
        fail(f"the wheel's console script is not dmp = dmp.cli:main:\n{entry_points}")
    with tarfile.open(sdists[0]) as tf:
        sdist = {n.split("/", 1)[-1] for n in tf.getnames()}
    missing = [n for n in SDIST_FILES if n not in sdist]
    if missing:
        fail(f"the sdist lacks {missing}")
    return wheels[0]


def check_installed(wheel: Path, tmp: Path) -> None:
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp, 120)
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp, 600)
    python = str(venv / "bin" / "python")
    where = run([python, "-c", "import dmp, dmp_server; print(dmp.__file__, dmp_server.__file__, dmp.__version__)"],
                tmp, 60).split()
    if not all(Path(p).is_relative_to(venv) for p in where[:2]):
        fail(f"the venv imported dmp from outside itself: {where[:2]}")
    if where[2] != VERSION:
        fail(f"dmp.__version__ is {where[2]!r} in the wheel's venv, pyproject says {VERSION!r}")
    shown = run([str(venv / "bin" / "dmp"), "--version"], tmp, 60).strip()
    if shown != f"dmp {VERSION}":
        fail(f"`dmp --version` printed {shown!r}")
    run([str(venv / "bin" / "dmp"), "manager", "--help"], tmp, 60)
    shutil.copy(ROOT / "docs" / "examples" / "quickstart.py", tmp / "quickstart.py")
    out = run([python, "quickstart.py"], tmp, 180).splitlines()
    missing = [line for line in SMOKE_LINES if not any(line in o for o in out)]
    if missing:
        fail(f"the smoke job from the wheel did not print {missing}:\n" + "\n".join(out))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dmp-dist-") as name:
        tmp = Path(name)
        run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(ROOT)], tmp, 600)
        wheel = check_archives(tmp / "dist")
        check_installed(wheel, tmp)
    print(f"check_dist: {DIST} {VERSION}: sdist and wheel built, wheel installs and runs")


if __name__ == "__main__":
    main()
