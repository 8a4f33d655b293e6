"""The manual holds together: every relative link in README.md and docs/ resolves, the
README stays a short user's manual, and it marks the install and test blocks CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_resolves():
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
    assert len(_pages()) >= 5


def test_the_readme_is_a_short_manual_with_the_ci_blocks():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 300
    for marker in ("<!-- ci:install-run -->", "<!-- ci:test -->", "<!-- ci:python -->"):
        assert text.count(marker) == 1, marker
    assert not re.search(r"\bissue #?\d|#\d+\b|\bsession\b", text)
