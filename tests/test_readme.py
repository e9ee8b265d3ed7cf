"""README's command blocks run as written (issue 15, "Also found": the first lines a newcomer copies must work).

Every ```bash / ```python block of README.md runs offline in a subprocess, unless the line before it is
``<!-- readme-test: skip REASON -->`` (real data, the network, or minutes of training).
``<!-- readme-test: slow -->`` runs the block only under ``-m slow``. Python blocks run with
``PYTHONPATH=src`` in a temporary folder; a block that names ``runs/main/...`` gets the folders of a
tiny main job there first. Bash blocks run from the repository root with ``.venv/bin/python`` replaced
by this interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(bash|python)\s*$")
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|slow)\b\s*(.*?)\s*-->")


class Block(NamedTuple):
    lang: str
    code: str
    line: int
    marker: Optional[str]
    reason: str


def readme_blocks(text: str) -> List[Block]:
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
                         mk.group(2) if mk else ""))
        i = j + 1
    return out


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _params():
    for b in BLOCKS:
        marks = []
        if b.marker == "skip":
            marks.append(pytest.mark.skip(reason=f"README line {b.line}: {b.reason or 'marked skip'}"))
        elif b.marker == "slow" or "runs/main/" in b.code:
            marks.append(pytest.mark.slow)
        yield pytest.param(b, marks=marks, id=f"{b.lang}-line{b.line}")


def test_marker_parsing():
    text = "x\n<!-- readme-test: skip needs real data -->\n```bash\nfalse\n```\n\n```python\nprint(1)\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.marker, b.reason, b.code) for b in blocks] == [
        ("bash", "skip", "needs real data", "false"), ("python", None, "", "print(1)")]


def test_readme_has_blocks_that_run_and_every_skip_says_why():
    assert any(b.marker is None for b in BLOCKS), "at least one README block must run offline"
    assert all(b.reason for b in BLOCKS if b.marker == "skip"), "a skip marker needs a reason"


def test_readme_main_job_folders_are_the_ones_the_job_writes():
    from rcl_hf.main_job import CompareArguments, run_folder

    args = CompareArguments()
    written = {os.path.basename(run_folder("runs/main", m, s, args.seeds[0])) for m in ("ce", "rcl") for s in args.seeds}
    written |= {"comparison.md", "comparison.json", "cer_accuracy.png"}
    named = set(re.findall(r"runs/main/([A-Za-z0-9_.]+)", README.read_text(encoding="utf-8")))
    assert named <= written, f"README names {sorted(named - written)} under runs/main/, which make main does not write"


def test_readme_main_job_table_is_the_recorded_output_of_the_command():
    text = README.read_text(encoding="utf-8")
    section = text.split("## The main job", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "pipeline" not in ln]
    assert rows, "README's main-job section has no result table"
    recorded = (ROOT / "benchmarks" / "results" / "main_job.md").read_text(encoding="utf-8")
    for row in rows:
        assert row in recorded, f"README row not in benchmarks/results/main_job.md (the command's output): {row}"


SYMMETRIC_REPORTS = ("symmetric_comparison_frozen_isic/README.md", "symmetric_comparison_finetune_isic/README.md",
                     "symmetric_comparison_frozen_brain_mri/README.md",
                     "symmetric_comparison_frozen_isic/abstention/README.md")


def test_readme_real_data_figures_come_from_the_symmetric_comparison_reports():
    """Every 'estimate [low, high]' figure and every verdict of README's "Results on real data" is in a
    report that a command of the repository wrote (research/results/symmetric_comparison_frozen_isic*)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Results on real data", 1)[1].split("\n## ", 1)[0]
    paths = [ROOT / "research" / "results" / r for r in SYMMETRIC_REPORTS]
    absent = [str(p) for p in paths if not p.exists()]
    assert not absent, f"reports the README quotes are missing: {absent}"
    reports = "\n".join(p.read_text(encoding="utf-8") for p in paths)
    figures = re.findall(r"[−+-]?\d+\.\d+ \[[−+-]?\d+\.\d+, [−+-]?\d+\.\d+\]", section)
    assert len(figures) >= 5, "README's real-data section quotes too few figures with CIs"
    missing = [f for f in figures if f not in reports]
    assert not missing, f"README figures not found in the symmetric comparison reports: {missing}"
    for verdict in re.findall(r"\*\*(no win shown|win|no difference shown)\*\*", section):
        assert f"**{verdict}**" in reports


def test_readme_certified_risk_figures_come_from_the_risk_control_report():
    """Every table row of README's "Certified risk control on real data" is a row of the generated report
    (research/results/risk_control/README.md, written by research.risk_control_report)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Certified risk control on real data", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| dataset")]
    assert len(rows) >= 4, "README's certified risk-control section quotes too few rows"
    report = (ROOT / "research" / "results" / "risk_control" / "README.md").read_text(encoding="utf-8")
    missing = [row for row in rows if row not in report]
    assert not missing, f"README rows not in the risk-control report: {missing}"


@pytest.fixture(scope="module")
def tiny_main_runs(tmp_path_factory):
    """A folder holding runs/main/{ce,rcl,...} from a tiny main job (what README's snippets load)."""
    from rcl_hf.main_job import main

    cwd = tmp_path_factory.mktemp("readme")
    main(["--output_dir", str(cwd / "runs" / "main"), "--epochs", "1", "--seeds", "0", "--n_train", "96",
          "--n_validation", "400", "--n_test", "64", "--n_boot", "20", "--disable_tqdm", "true"])
    return cwd


@pytest.mark.parametrize("block", list(_params()))
def test_readme_block_runs(block: Block, tmp_path, request):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if block.lang == "python":
        cwd = request.getfixturevalue("tiny_main_runs") if "runs/main/" in block.code else tmp_path
        cmd = [sys.executable, "-c", block.code]
    else:
        cwd = ROOT
        code = block.code.replace(".venv/bin/python", sys.executable)
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README block at line {block.line} failed:\n{block.code}\n---\n{proc.stderr[-3000:]}"
