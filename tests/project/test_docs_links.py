"""The documentation stays inside the repository: every relative link of every Markdown file resolves to a
file of the repository (and to a heading, when it names one), and no file points to the folders beside
the checkout that only the project's authors had."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

from support.helpers import ROOT

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
# A project document named in prose or in a comment (not in a URL, another repository's path or a
# quoted test fixture).
DOC_MENTION = re.compile(r"(?<![\w/.\"'-])docs/[\w.-]+\.md\b")
# Built from parts, so that this file does not hold what it looks for.
OUTSIDE = ("../" + "shared", "shared" + "/docs")


def repository_files() -> list[Path]:
    """The repository's files (tracked, or new and not ignored), as git sees them."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return sorted(
        {ROOT / name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()}
    )


def markdown_files() -> list[Path]:
    return [path for path in repository_files() if path.suffix == ".md"]


def without_code(text: str) -> str:
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = without_code(text)
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text as shown, lower case, without punctuation other than
    hyphens and underscores, spaces as hyphens."""
    shown = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    kept = "".join(c for c in shown.lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    text = FENCE.sub("", markdown.read_text(encoding="utf-8"))
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in HEADING.findall(text):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(markdown: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the relative links of ``markdown``, a file of the repository at ``root``."""
    problems = []
    for target in links(markdown.read_text(encoding="utf-8")):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto: ...: not a file
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (markdown.parent / unquote(path_part)).resolve() if path_part else markdown
        if not resolved.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with the anchor #{anchor} in {resolved.relative_to(root)}")
    return problems


def test_docs_the_repository_has_markdown_files_with_links() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in markdown_files()}
    assert {"README.md", "docs/device-defender.md", "docs/greengrass.md", "docs/deploying.md"} <= names
    assert len(links((ROOT / "README.md").read_text(encoding="utf-8"))) > 5


@pytest.mark.parametrize("markdown", markdown_files(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_docs_every_relative_link_resolves(markdown: Path) -> None:
    assert broken_links(markdown) == []


def test_docs_the_link_check_finds_what_is_broken(tmp_path: Path) -> None:
    root = tmp_path.resolve() / "repo"
    (root / "pages").mkdir(parents=True)
    (root / "README.md").write_text("# ddcustom\n### Installing\n", encoding="utf-8")
    page = root / "pages" / "page.md"
    page.write_text(
        "# Title\n## Two words (`code`)\n## Two words (code)\n"
        "[ok](#two-words-code) [ok](#two-words-code-1) [ok](../README.md#installing) [web](https://x.y/z)\n"
        "[gone](missing.md) [no anchor](#nowhere) [away](../../elsewhere.md) [bad](../README.md#install)\n"
        "```\n[in code](missing-too.md)\n```\n`[span](missing-three.md)`\n",
        encoding="utf-8",
    )
    assert broken_links(page, root) == [
        "missing.md: no such file",
        "#nowhere: no heading with the anchor #nowhere in pages/page.md",
        "../../elsewhere.md: outside the repository",
        "../README.md#install: no heading with the anchor #install in README.md",
    ]
    assert github_slug("Benchmarks (`make bench`)") == "benchmarks-make-bench"


def test_docs_nothing_points_outside_the_repository() -> None:
    mentions = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if any(needle in line for needle in OUTSIDE):
                mentions.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert mentions == []


def test_docs_every_project_document_named_exists() -> None:
    missing = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for name in sorted(set(DOC_MENTION.findall(text))):
            if not (ROOT / name).is_file():
                missing.append(f"{path.relative_to(ROOT)} names {name}")
    assert missing == []
