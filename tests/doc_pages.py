"""The pages that carry the project's prose, for the checks of tests/test_readme.py and tests/test_docs.py:
README.md and the documentation site's pages (docs/, built by mkdocs)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOC_PAGES = sorted(DOCS.rglob("*.md"))
PAGES = [README] + DOC_PAGES


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))
