"""The documentation site (mkdocs.yml, docs/): it builds strictly, its severity tables are the code's, and every
``docs/*.md`` pointer in the code names a page that exists."""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rcl_hf.severity import PRESETS, SeverityMatrix

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SEVERITY_DOC = DOCS / "severity.md"
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_packages():
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a missing parent package
            found = False
        if not found:
            missing.append(name)
    return missing


def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(f"the docs extra is not installed (missing {missing}): pip install -e '.[docs]' or make docs")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's notice, not a build warning
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index", "loss", "metrics", "severity", "datasets", "decision", "training", "inference", "main_job",
                 "results", "grid", "benchmarks"):
        assert (site / ("index.html" if page == "index" else f"{page}/index.html")).is_file(), page
    # the API reference is generated from the docstrings of the source tree
    api = (site / "api" / "losses" / "index.html").read_text(encoding="utf-8")
    assert 'id="rcl_hf.losses.risk_calibrated.RiskCalibratedLoss"' in api


def test_severity_tables_are_generated_from_the_code():
    tool = runpy.run_path(str(ROOT / "scripts" / "severity_docs.py"), run_name="severity_docs")
    text = SEVERITY_DOC.read_text(encoding="utf-8")
    assert tool["current"](text) == tool["render"](), (
        "docs/severity.md is out of date with rcl_hf.severity: run python scripts/severity_docs.py")


def _preset_table(text: str, name: str):
    """``(labels, costs, critical)`` of the matrix table under the heading of preset ``name``."""
    section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0].split("<!-- END", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    labels = cells[0][1:]
    body = cells[2:]
    assert [r[0].strip("*") for r in body] == labels, f"{name}: the rows are not in the columns' order"
    costs = np.array([[float(c.strip("*").replace("⚠", "").strip()) for c in r[1:]] for r in body])
    critical = np.array([["⚠" in c for c in r[1:]] for r in body])
    return labels, costs, critical


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_severity_doc_tables_match_the_presets(name):
    """Read back independently of the generator: every cost and critical mark of the page is the preset's."""
    labels, costs, critical = _preset_table(SEVERITY_DOC.read_text(encoding="utf-8"), name)
    sev = SeverityMatrix.preset(name)
    assert labels == sev.labels
    np.testing.assert_allclose(costs, sev.matrix, atol=1e-12)
    np.testing.assert_array_equal(critical, sev.critical)


def test_severity_doc_lists_every_preset_and_its_groups():
    text = SEVERITY_DOC.read_text(encoding="utf-8")
    for name, p in PRESETS.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/severity.md has no row for preset {name}"
        labels, positive, ordinal = [c.strip() for c in row.strip("|").split("|")][1:]
        assert re.findall(r"`([^`]+)`", labels) == list(p.labels)
        assert re.findall(r"`([^`]+)`", positive) == list(p.positive)
        assert ordinal == ("yes" if p.ordinal else "no")


POINTER = re.compile(r"\bdocs/([A-Za-z0-9_/]+\.md)")
# the external specification these pointers replaced (written so that a grep for its name stays empty)
OUTSIDE_REFERENCE = re.compile(r"S[P]EC(\.md|\s+section)")
SOURCES = ("src", "tests", "spaces_demo", "benchmarks", "scripts", "research", "configs")


def _text_files():
    for base in SOURCES:
        for path in sorted((ROOT / base).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".yml", ".txt") and "__pycache__" not in path.parts:
                yield path
    yield ROOT / "README.md"


def test_docs_pointers_name_existing_pages():
    broken, outside = [], []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        broken += [f"{path.relative_to(ROOT)}: docs/{m}" for m in POINTER.findall(text)
                   if not (DOCS / m).is_file()]
        outside += [str(path.relative_to(ROOT)) for _ in OUTSIDE_REFERENCE.finditer(text)]
    assert not broken, f"pointers to missing docs pages: {broken}"
    assert not outside, f"citations of a specification outside the repository (point to docs/ instead): {outside}"
