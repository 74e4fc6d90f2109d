"""MkDocs hook: site pages that reuse Markdown kept elsewhere in the repository.

A page line ``<!-- include: PATH -->`` is replaced by the file PATH (from the
repository root); ``<!-- include: PATH#SLUG -->`` by the part under the heading
whose slug is SLUG, up to the next heading of the same or a higher level (add
`` shallow`` to stop at the next heading of any level); the heading itself is
left out. Relative links in the included text are rewritten for the site: to
the page that shows their target, or, for a file that is no page, to its
repository path as code. A missing file or heading fails the build.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent

# Markdown files outside docs/ and the site page that shows each of them.
PAGE_OF = {
    "README.md": "index.md",
    "deploy/README.md": "deployment.md",
    "deploy/systemd/README.md": "deployment-systemd.md",
    "deploy/docker/README.md": "deployment-docker.md",
    "deploy/kubernetes/README.md": "deployment-kubernetes.md",
    "deploy/slurm/README.md": "deployment-slurm.md",
    "deploy/ssh/README.md": "deployment-ssh.md",
    "tests/bench/README.md": "performance.md",
    "CHANGELOG.md": "changelog.md",
}

INCLUDE = re.compile(r"^<!-- include: ([^\s#]+)(?:#(\S+))?( shallow)? -->$", re.M)
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def slug(title: str) -> str:
    """The anchor a heading gets: lower case, words joined by hyphens."""
    words = re.sub(r"[^\w\s-]", "", title.replace("`", "")).lower().split()
    return "-".join(words)


def _lines_outside_code(text: str) -> list[tuple[str, bool]]:
    """Each line with whether it is outside fenced code (where ``#`` is a heading)."""
    out, fence = [], ""
    for line in text.splitlines():
        marker = re.match(r"^(```+|~~~+)", line.lstrip())
        if marker and (not fence or marker.group(1).startswith(fence)):
            fence = "" if fence else marker.group(1)
            out.append((line, False))
            continue
        out.append((line, not fence))
    return out


def section(text: str, wanted: str, shallow: bool, where: str) -> str:
    """The lines under the heading with slug ``wanted``. Raises PluginError: none has it."""
    lines = _lines_outside_code(text)
    for i, (line, prose) in enumerate(lines):
        m = HEADING.match(line) if prose else None
        if m and slug(m.group(2)) == wanted:
            level, body = len(m.group(1)), []
            for other, other_prose in lines[i + 1:]:
                h = HEADING.match(other) if other_prose else None
                if h and (shallow or len(h.group(1)) <= level):
                    break
                body.append(other)
            return "\n".join(body).strip("\n")
    raise PluginError(f"{where}: no heading with slug {wanted!r}")


def relink(text: str, source: str) -> str:
    """Rewrite the relative links of ``text``, which comes from repository file ``source``."""

    def fix(m: re.Match[str]) -> str:
        label, target = m.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        page = PAGE_OF.get(repo_path)
        if page is None and repo_path.startswith("docs/") and repo_path.endswith(".md"):
            page = repo_path.removeprefix("docs/")
        if page is not None:
            return f"[{label}]({page}{'#' + anchor if anchor else ''})"
        shown = f"`{repo_path}`"
        return label if repo_path in label else f"{label} ({shown})"

    return LINK.sub(fix, text)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: replace each include line of a page. Raises PluginError as above."""

    def include(m: re.Match[str]) -> str:
        source, wanted, shallow = m.group(1), m.group(2), bool(m.group(3))
        where = f"{page.file.src_uri}: include {source}"
        try:
            text = (ROOT / source).read_text()
        except OSError as exc:
            raise PluginError(f"{where}: {exc.strerror}") from None
        if wanted:
            text = section(text, wanted, shallow, where)
        return relink(text, source) if source.endswith(".md") else text.rstrip("\n")

    return INCLUDE.sub(include, markdown)
