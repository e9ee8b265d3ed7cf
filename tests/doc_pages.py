"""The pages that carry the project's prose, for the checks of tests/test_readme.py and tests/test_docs.py:
README.md and the documentation site's pages (docs/, built by mkdocs)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOC_PAGES = sorted(DOCS.rglob("*.md"))
PAGES = [README] + DOC_PAGES

# docs pages written on another branch: README may link them before that branch merges (drop the name then)
PENDING_DOCS_PAGES = frozenset({"own_data.md"})


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def is_pending(path: Path) -> bool:
    """Whether ``path`` is a docs page of :data:`PENDING_DOCS_PAGES` that does not exist yet."""
    path = path.resolve()
    return path.parent == DOCS.resolve() and path.name in PENDING_DOCS_PAGES and not path.exists()
