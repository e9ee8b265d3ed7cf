"""The committed clinical operating report holds what the library computes on the shipped models' saved predictions:
results.json is recomputed figure for figure, and report.md is the page those figures and its command render."""

import json
import re
from pathlib import Path

import pytest

from research.clinical_operating_report import markdown, model_report

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "research" / "results" / "clinical_operating"


@pytest.fixture(scope="module")
def committed():
    return json.loads((OUT / "results.json").read_text(encoding="utf-8"))


def test_committed_figures_are_recomputed_from_the_shipped_predictions(committed, tmp_path):
    assert [r["model"] for r in committed] == ["brain-tumor-mri-efficientnet-lite0", "isic2018-efficientnet-lite0"]
    for saved in committed:
        r = model_report(str(ROOT / saved["folder"]), tmp_path, saved["min_specificity"], saved["n_bins"],
                         saved["n_boot"], saved["seed"])
        r = json.loads(json.dumps(r))  # tuples -> lists, as the file holds them
        assert {k: v for k, v in r.items() if k != "folder"} == {k: v for k, v in saved.items() if k != "folder"}
        assert (tmp_path / saved["reliability_diagram"]).is_file() and (OUT / saved["reliability_diagram"]).is_file()


def test_report_page_is_rendered_from_the_results_and_names_its_command(committed):
    page = (OUT / "report.md").read_text(encoding="utf-8")
    command = re.search(r"^- command: `([^`]+)`", page, re.M).group(1)
    assert command.startswith("python -m research.clinical_operating_report ")
    assert page == markdown(committed, command)
