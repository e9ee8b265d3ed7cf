"""README's and the docs pages' command blocks run as written (the first lines a newcomer copies must work).

Every ```bash / ```python block of README.md and of the docs pages (docs/) runs offline in a subprocess, unless
the line before it is
``<!-- readme-test: skip REASON -->`` (real data, the network, or minutes of training).
``<!-- readme-test: slow -->`` runs the block only under ``-m slow``. Python blocks run with
``PYTHONPATH=src`` in a temporary folder; a block that names ``runs/main/...`` gets the folders of a
tiny main job there first. Bash blocks run from the repository root with ``.venv/bin/python`` replaced
by this interpreter.

The study's figures: every interval ("x [a, b]") and percentage in the study paragraphs (wherever they are:
README.md or a docs page, e.g. docs/results.md) and in research/results/README.md must be in a generated report
that its paragraph names — a Markdown link, or on a docs page a repository path in backticks
(`research/results/...`, which mkdocs does not try to resolve) — every relative link and named report path of
these pages must exist, and a link labelled with a path must point there. The main job's table must be the
recorded output of the command, and a benchmark figure must be on the benchmark page its paragraph names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional

import numpy as np
import pytest

from doc_pages import DOCS, PAGES, README, ROOT, page_id

FENCE = re.compile(r"^```(bash|python)\s*$")
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|slow)\b\s*(.*?)\s*-->")


class Block(NamedTuple):
    lang: str
    code: str
    line: int
    marker: Optional[str]
    reason: str
    page: str = "README.md"


def readme_blocks(text: str, page: str = "README.md") -> List[Block]:
    """The fenced bash/python blocks of ``text`` with the readme-test marker on the line before each."""
    lines = text.splitlines()
    out: List[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mk = MARKER.search(prev)
        out.append(Block(m.group(1), "\n".join(lines[i + 1:j]), i + 1, mk.group(1) if mk else None,
                         mk.group(2) if mk else "", page))
        i = j + 1
    return out


BLOCKS = [b for page in PAGES for b in readme_blocks(page.read_text(encoding="utf-8"), page_id(page))]


def _params():
    for b in BLOCKS:
        marks = []
        if b.marker == "skip":
            marks.append(pytest.mark.skip(reason=f"{b.page} line {b.line}: {b.reason or 'marked skip'}"))
        elif b.marker == "slow" or "runs/main/" in b.code:
            marks.append(pytest.mark.slow)
        yield pytest.param(b, marks=marks, id=f"{b.page}-{b.lang}-line{b.line}")


def test_marker_parsing():
    text = "x\n<!-- readme-test: skip needs real data -->\n```bash\nfalse\n```\n\n```python\nprint(1)\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.marker, b.reason, b.code) for b in blocks] == [
        ("bash", "skip", "needs real data", "false"), ("python", None, "", "print(1)")]


def test_readme_has_blocks_that_run_and_every_skip_says_why():
    assert any(b.marker is None for b in BLOCKS if b.page == "README.md"), "at least one README block must run offline"
    assert all(b.reason for b in BLOCKS if b.marker == "skip"), "a skip marker needs a reason"


def test_readme_main_job_folders_are_the_ones_the_job_writes():
    from research.main_job import CompareArguments, run_folder

    args = CompareArguments()
    written = {os.path.basename(run_folder("runs/main", m, s, args.seeds[0])) for m in ("ce", "rcl") for s in args.seeds}
    written |= {"comparison.md", "comparison.json", "cer_accuracy.png"}
    for page in PAGES:
        named = set(re.findall(r"runs/main/([A-Za-z0-9_.]+)", page.read_text(encoding="utf-8")))
        assert named <= written, (f"{page_id(page)} names {sorted(named - written)} under runs/main/, "
                                  "which make main does not write")


HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


def find_section(title: str):
    """``(page, text)`` of the one section of README.md or a docs page whose heading is ``title`` (or starts with
    ``title:``): from its heading to the next heading of the same or a higher level. The checks of a section
    follow it to whichever page it moves to; a title on no page or on two fails."""
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        in_code = False
        for i, line in enumerate(lines):
            in_code ^= line.startswith("```")
            m = None if in_code else HEADING.match(line)
            if m and (m.group(2) == title or m.group(2).startswith(title + ":")):
                level, end = len(m.group(1)), len(lines)
                code = False
                for j in range(i + 1, len(lines)):
                    code ^= lines[j].startswith("```")
                    h = None if code else HEADING.match(lines[j])
                    if h and len(h.group(1)) <= level:
                        end = j
                        break
                found.append((page, "\n".join(lines[i:end])))
    assert len(found) == 1, f"section {title!r} found {len(found)} times: {[page_id(p) for p, _ in found]}"
    return found[0]


def find_paragraph(opening: str):
    """``(page, text)`` of the one paragraph of README.md or a docs page that starts with ``opening``."""
    found = [(page, opening + page.read_text(encoding="utf-8").split(opening, 1)[1].split("\n\n", 1)[0])
             for page in PAGES if opening in page.read_text(encoding="utf-8")]
    assert len(found) == 1, f"paragraph {opening!r} found {len(found)} times: {[page_id(p) for p, _ in found]}"
    return found[0]


def test_main_job_table_is_the_recorded_output_of_the_command():
    page, section = find_section("The main job")
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "pipeline" not in ln]
    assert rows, f"the main-job section ({page_id(page)}) has no result table"
    recorded = (ROOT / "benchmarks" / "results" / "main_job.md").read_text(encoding="utf-8")
    for row in rows:
        assert row in recorded, f"{page_id(page)} row not in benchmarks/results/main_job.md (the command's output): {row}"


SYMMETRIC_SECTION = "The symmetric comparison"
RISK_CONTROL_SECTION = "Certified risk control on real data"
# the study's paragraphs and sections, wherever they are (README.md or a docs page)
STUDY_PARAGRAPHS = ("**What the decision layer delivers.**", "**What the training-time loss adds.**")
STUDY_SECTIONS = (RISK_CONTROL_SECTION, SYMMETRIC_SECTION)
SYMMETRIC_REPORTS = ("symmetric_comparison_frozen_isic/README.md", "symmetric_comparison_finetune_isic/README.md",
                     "symmetric_comparison_frozen_brain_mri/README.md",
                     "symmetric_comparison_frozen_isic/abstention/README.md")


def test_real_data_figures_come_from_the_symmetric_comparison_reports():
    """Every 'estimate [low, high]' figure and every verdict of the symmetric comparison's section is in a
    report that a command of the repository wrote (research/results/symmetric_comparison_*)."""
    _, section = find_section(SYMMETRIC_SECTION)
    paths = [ROOT / "research" / "results" / r for r in SYMMETRIC_REPORTS]
    absent = [str(p) for p in paths if not p.exists()]
    assert not absent, f"reports the section quotes are missing: {absent}"
    reports = "\n".join(p.read_text(encoding="utf-8") for p in paths)
    figures = re.findall(r"[−+-]?\d+\.\d+ \[[−+-]?\d+\.\d+, [−+-]?\d+\.\d+\]", section)
    assert len(figures) >= 5, "the symmetric comparison's section quotes too few figures with CIs"
    missing = [f for f in figures if f not in reports]
    assert not missing, f"figures not found in the symmetric comparison reports: {missing}"
    for verdict in re.findall(r"\*\*(no win shown|win|no difference shown)\*\*", section):
        assert f"**{verdict}**" in reports


RESULTS = ROOT / "research" / "results"
STUDY_README = RESULTS / "README.md"
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
# a report or model card named by its repository path in backticks (how docs pages name files outside docs/)
CODE_PATH = re.compile(r"`((?:research/results|benchmarks/results|model_cards)/[^`\s]*)`")
# "estimate [low, high]" (the estimate is optional: "relative [8.8, 19.3]"); a % after the estimate is dropped
INTERVAL = re.compile(r"(?:(?<![\w.])([-+]?\d+(?:\.\d+)?)%?\s)?\[\s*([-+]?\d+(?:\.\d+)?)\s*,\s*([-+]?\d+(?:\.\d+)?)\s*\]")
RANGE_PERCENT = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?[\u2013-]\s?\d+(?:\.\d+)?\s?%")  # "20–92%": the 20
PERCENT = re.compile(r"(?<![\w.])([-+]?\d+(?:\.\d+)?)\s?%")
CI_LEVEL = re.compile(r"\b95% CIs?\b")  # the CI level is a setting, not a result


def _norm(text: str) -> str:
    return text.replace("\u2212", "-")


def _links(text: str, base: Path, root: Path = ROOT) -> List[tuple]:
    """``(label, resolved path)`` of every relative link in ``text`` (web links and #anchors left out), and of every
    report path in backticks (resolved from the repository root ``root``; the label is the path)."""
    out = []
    for label, target in LINK.findall(text):
        target = target.split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        out.append((label, (base / target).resolve()))
    out += [(path, (root / path).resolve()) for path in CODE_PATH.findall(text)]
    return out


def _report_text(path: Path) -> str:
    """The text of a linked report: the file, or a folder's README.md / results.md."""
    if path.is_dir():
        path = next((path / n for n in ("README.md", "results.md") if (path / n).exists()), path / "README.md")
    return _norm(path.read_text(encoding="utf-8")) if path.is_file() else ""


def _blocks(text: str) -> List[str]:
    """Paragraphs of ``text``; each list item and each table row is a block of its own; code is left out."""
    blocks, cur, in_code = [], [], False
    for line in text.splitlines() + [""]:
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        starts_item = bool(re.match(r"^\s{0,3}([-*]|\d+\.) ", line)) or line.startswith("|")
        if not line.strip() or starts_item:
            if cur:
                blocks.append("\n".join(cur))
            cur = [] if not line.strip() else [line]
            if line.startswith("|"):
                blocks.append(line)
                cur = []
        else:
            cur.append(line)
    return [b for b in blocks if b.strip()]


def figures(text: str) -> List[tuple]:
    """The figures a text states: ``("interval", "x [a, b]")`` for every bracketed interval with the estimate
    before it (``"[a, b]"`` when none), and ``("number", "x")`` for every percentage, both ends of a range such as
    "20–92%" included (the CI level "95% CI" excepted)."""
    text = CI_LEVEL.sub("", _norm(text))
    out = [("interval", f"{x} [{a}, {b}]".lstrip()) for x, a, b in INTERVAL.findall(text)]
    out += [("number", x) for x in PERCENT.findall(text)]
    out += [("number", x) for x in RANGE_PERCENT.findall(text)]
    return out


def _found(kind: str, figure: str, reports: str) -> bool:
    if kind == "interval":
        reports = re.sub(r"\[\s*([-+]?[\d.]+)\s*,\s*([-+]?[\d.]+)\s*\]", r"[\1, \2]", reports)
        return figure in re.sub(r"(\d)%\s\[", r"\1 [", reports)
    return re.search(r"(?<![\d.])" + re.escape(figure) + r"(?!\d|\.\d)", reports) is not None


def unsupported_figures(text: str, base: Path, results: Path = RESULTS, root: Path = ROOT) -> List[str]:
    """Figures of ``text`` not found in the reports under research/results that their paragraph links or names (a
    paragraph that names none: the reports the whole text names). Each entry: "figure (in: paragraph start)"."""
    def reports_of(t):
        return [p for _, p in _links(t, base, root) if results.resolve() in p.parents and p != STUDY_README.resolve()
                and (p.suffix == ".md" or p.is_dir())]  # reports, not the plots or CSVs a text also links

    page = "\n".join(_report_text(p) for p in dict.fromkeys(reports_of(text)))
    missing = []
    for block in _blocks(text):
        linked = reports_of(block)
        reports = "\n".join(_report_text(p) for p in dict.fromkeys(linked)) if linked else page
        for kind, fig in figures(block):
            if not _found(kind, fig, reports):
                missing.append(f"{fig}{'%' if kind == 'number' else ''} (in: {block.strip()[:70]!r})")
    return missing


def study_texts() -> dict:
    """``{page: text}``: the study's paragraphs and sections (:data:`STUDY_PARAGRAPHS`, :data:`STUDY_SECTIONS`),
    joined page by page, wherever they are."""
    out: dict = {}
    for page, text in [find_paragraph(o) for o in STUDY_PARAGRAPHS] + [find_section(s) for s in STUDY_SECTIONS]:
        out[page] = (out[page] + "\n\n" + text) if page in out else text
    return out


def test_figure_check_catches_a_figure_missing_from_the_linked_report(tmp_path):
    report = tmp_path / "results" / "x"
    report.mkdir(parents=True)
    (report / "README.md").write_text("CER 5.76 [4.75, 6.84]; relative reduction 2.9% [-2.8, 8.4]\n")
    good = "Best: 5.76 [4.75, 6.84], relative 2.9% [\u22122.8, 8.4] ([x/](results/x/README.md)).\n"
    bad = "Best: 5.76 [4.75, 6.85], relative 29% ([x/](results/x/README.md)).\n"
    assert unsupported_figures(good, tmp_path, tmp_path / "results") == []
    missing = unsupported_figures(bad, tmp_path, tmp_path / "results")
    assert [m.split(" (in:")[0] for m in missing] == ["5.76 [4.75, 6.85]", "29%"]
    assert [m.split(" (in:")[0] for m in unsupported_figures("CER 5.77 [4.75, 6.84] (20–92%) ([x/](results/x/README.md))",
                                                             tmp_path, tmp_path / "results")] == ["5.77 [4.75, 6.84]", "92%", "20%"]
    unlinked = "Best: 5.76 [4.75, 6.84].\n\nElsewhere 3.1% ([x/](results/x/README.md)).\n"
    assert [m.split(" (in:")[0] for m in unsupported_figures(unlinked, tmp_path, tmp_path / "results")] == ["3.1%"]
    assert figures("95% CIs over seeds; 74.80% accuracy") == [("number", "74.80")]
    assert _blocks("a 1%\nb\n\n- c 2%\n- d\n| e | 3% |\n```\nf 4%\n```\n") == ["a 1%\nb", "- c 2%", "- d", "| e | 3% |"]
    assert figures("relative 13.7% [8.8, 19.3]; relative [1.0, 2.0]") == [
        ("interval", "13.7 [8.8, 19.3]"), ("interval", "[1.0, 2.0]"), ("number", "13.7")]


def test_figure_check_follows_report_paths_in_backticks(tmp_path):
    """A docs page names its reports by repository path in backticks: a figure not in that report still fails."""
    results = tmp_path / "research" / "results"
    (results / "x").mkdir(parents=True)
    (results / "x" / "README.md").write_text("CER 5.76 [4.75, 6.84]; coverage 53.1%\n")
    (results / "y").mkdir()
    (results / "y" / "README.md").write_text("CER 9.99 [9.00, 10.00]\n")
    docs = tmp_path / "docs"
    good = "Best: 5.76 [4.75, 6.84] at 53.1% coverage (`research/results/x/`).\n"
    bad = "Best: 5.76 [4.75, 6.85] at 53.1% coverage (`research/results/x/README.md`).\n\nOther: 9.99 [9.00, 10.00] (`research/results/y/`).\n"
    assert unsupported_figures(good, docs, results, root=tmp_path) == []
    assert [m.split(" (in:")[0] for m in unsupported_figures(bad, docs, results, root=tmp_path)] == ["5.76 [4.75, 6.85]"]
    assert [m.split(" (in:")[0] for m in unsupported_figures("Best: 9.99 [9.00, 10.00] (`research/results/x/`).", docs,
                                                             results, root=tmp_path)] == ["9.99 [9.00, 10.00]"]


def test_study_figures_are_in_the_reports_they_name():
    """Every interval and percentage in the study's paragraphs (README.md or the docs pages they moved to) is in a
    generated report the paragraph links or names."""
    texts = study_texts()
    assert sum(len(figures(t)) for t in texts.values()) >= 20, "the study's paragraphs quote too few figures"
    for page, text in texts.items():
        missing = unsupported_figures(text, page.parent)
        assert not missing, f"{page_id(page)} figures not found in the reports they name: {missing}"


def test_study_readme_figures_are_in_the_reports_they_link():
    """research/results/README.md (the study's index): every interval and percentage on a line is in a report the
    line links (all figures in both READMEs come from a generated report)."""
    text = STUDY_README.read_text(encoding="utf-8")
    assert len(figures(text)) >= 20, "the study's README quotes too few figures"
    missing = unsupported_figures(text, STUDY_README.parent)
    assert not missing, f"research/results/README.md figures not found in the reports they link: {missing}"


def test_study_readme_indexes_every_result_folder():
    """One index line per result folder: each folder with a report is linked from research/results/README.md."""
    linked = {p for _, p in _links(STUDY_README.read_text(encoding="utf-8"), STUDY_README.parent)}
    folders = {p.parent.resolve() for n in ("README.md", "results.md") for p in RESULTS.glob(f"**/{n}")} - {RESULTS.resolve()}
    unlinked = sorted(str(f.relative_to(RESULTS.resolve())) for f in folders
                      if not any(p == f or p.parent == f for p in linked))
    assert not unlinked, f"result folders missing from research/results/README.md: {unlinked}"


@pytest.mark.parametrize("readme", PAGES + [STUDY_README], ids=[page_id(p) for p in PAGES + [STUDY_README]])
def test_readme_links_exist_and_path_labels_name_their_target(readme):
    """A page (README.md, a docs page, research/results/README.md) must not link or name a path that does not
    exist, and a link labelled with a path (``[name/](...)``) must point into that path, so a renamed results folder
    cannot keep its old name on the page."""
    text = readme.read_text(encoding="utf-8")
    links = _links(text, readme.parent)
    assert links or DOCS in readme.parents, f"{page_id(readme)} links nothing"
    dead = [f"[{label}] -> {p}" for label, p in links if not p.exists()]
    assert not dead, f"{readme.relative_to(ROOT)} links paths that do not exist: {dead}"
    wrong = []
    for label, p in links:
        name = label.strip("`")
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)*/", name):
            folder, parts = (p if p.is_dir() else p.parent), tuple(name.rstrip("/").split("/"))
            if folder.parts[-len(parts):] != parts:
                wrong.append(f"[{label}] -> {p}")
    assert not wrong, f"{readme.relative_to(ROOT)} labels links with a path they do not point to: {wrong}"


def test_certified_risk_figures_come_from_the_risk_control_report():
    """Every table row of the section "Certified risk control on real data" is a row of the generated report
    (research/results/risk_control/README.md, written by research.risk_control_report)."""
    page, section = find_section(RISK_CONTROL_SECTION)
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| dataset")]
    assert len(rows) >= 4, f"the certified risk-control section ({page_id(page)}) quotes too few rows"
    report = (ROOT / "research" / "results" / "risk_control" / "README.md").read_text(encoding="utf-8")
    missing = [row for row in rows if row not in report]
    assert not missing, f"{page_id(page)} rows not in the risk-control report: {missing}"


@pytest.fixture(scope="module")
def tiny_main_runs(tmp_path_factory):
    """A folder holding runs/main/{ce,rcl,...} from a tiny main job (what README's snippets load)."""
    from research.main_job import main

    cwd = tmp_path_factory.mktemp("readme")
    main(["--output_dir", str(cwd / "runs" / "main"), "--epochs", "1", "--seeds", "0", "--n_train", "96",
          "--n_validation", "400", "--n_test", "64", "--n_boot", "20", "--disable_tqdm", "true"])
    return cwd


@pytest.fixture(scope="module")
def seeded_hf_cache(tmp_path_factory):
    """A Hugging Face cache holding the shipped models (models/), as `rcl-seed-cache` leaves it."""
    from rcl_hf.hub import seed_cache

    cache = tmp_path_factory.mktemp("hf_cache")
    seed_cache(cache_dir=cache)
    return cache


def _needs_shipped_models(code: str) -> bool:
    return "rcl-hf/" in code or "rcl-seed-cache" in code or "seed_cache" in code


@pytest.mark.parametrize("block", list(_params()))
def test_readme_block_runs(block: Block, tmp_path, request):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])  # the console scripts
    if _needs_shipped_models(block.code):  # an isolated cache with the shipped models, never the user's
        env["HF_HUB_CACHE"] = str(request.getfixturevalue("seeded_hf_cache"))
    if block.lang == "python":
        cwd = request.getfixturevalue("tiny_main_runs") if "runs/main/" in block.code else tmp_path
        if "scan.jpg" in block.code:  # "your image": a stand-in the model never saw (no patient data in the repo)
            from PIL import Image

            ramp = (np.add.outer(np.arange(224), np.arange(224)) % 256).astype(np.uint8)
            Image.fromarray(ramp).convert("RGB").save(cwd / "scan.jpg")
        cmd = [sys.executable, "-c", block.code]
    else:
        cwd = ROOT
        code = block.code.replace(".venv/bin/python", sys.executable)
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{block.page} block at line {block.line} failed:\n{block.code}\n---\n{proc.stderr[-3000:]}"


BENCHMARK_RESULTS = ROOT / "benchmarks" / "results"
DECIMAL = re.compile(r"(?<![\w.])(\d[\d,]*\.\d+)")


def unsupported_benchmark_figures(text: str, base: Path, results: Path = BENCHMARK_RESULTS,
                                  root: Path = ROOT) -> List[str]:
    """Decimal figures of each paragraph of ``text`` that links or names a benchmark page (``results/*.md``) not
    found on the pages it links. Each entry: "figure (in: paragraph start)"."""
    missing = []
    for block in _blocks(text):
        pages = [p for _, p in _links(block, base, root) if p.parent == results.resolve() and p.suffix == ".md"]
        if not pages:
            continue
        page = "\n".join(_report_text(p) for p in dict.fromkeys(pages)).replace(",", "")
        for fig in DECIMAL.findall(_norm(block)):
            if fig.replace(",", "") not in page:
                missing.append(f"{fig} (in: {block.strip()[:70]!r})")
    return missing


@pytest.mark.parametrize("page", PAGES, ids=[page_id(p) for p in PAGES])
def test_benchmark_figures_are_on_the_benchmark_pages_they_name(page):
    """Every decimal figure in a paragraph of README.md or a docs page that links or names a page of
    benchmarks/results/ is on that page."""
    missing = unsupported_benchmark_figures(page.read_text(encoding="utf-8"), page.parent)
    assert not missing, f"{page_id(page)} benchmark figures not on the pages they name: {missing}"


def test_benchmark_figures_on_docs_pages_are_checked():
    """The benchmark paragraphs moved to docs/benchmarks.md name their pages, so the check above covers them."""
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    checked = [b for b in _blocks(text) if any(p.parent == BENCHMARK_RESULTS.resolve() for _, p in _links(b, ROOT))]
    assert len(checked) >= 3, "docs/benchmarks.md has too few paragraphs that name their benchmark page"


def test_benchmark_figure_check_catches_a_figure_missing_from_its_page(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "load.md").write_text("| 8 | 30.46 | 1,102 |\n")
    good = "8 clients got 30.46 requests/s, p95 1,102 ms ([load.md](results/load.md)).\n\nUnlinked 9.99.\n"
    bad = "8 clients got 30.47 requests/s ([load.md](results/load.md)).\n"
    assert unsupported_benchmark_figures(good, tmp_path, tmp_path / "results") == []
    assert unsupported_benchmark_figures(bad, tmp_path, tmp_path / "results") == ["30.47 (in: '8 clients got 30.47 requests/s ([load.md](results/load.md)).')"]
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "load.md").write_text("| 8 | 30.46 |\n")
    named = "8 clients got 30.47 requests/s (`benchmarks/results/load.md`).\n"
    assert unsupported_benchmark_figures(named, tmp_path / "docs", tmp_path / "benchmarks" / "results", root=tmp_path) == [
        "30.47 (in: '8 clients got 30.47 requests/s (`benchmarks/results/load.md`).')"]
