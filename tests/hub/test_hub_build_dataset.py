"""scripts/build_dataset.py pushes through rcl_hf.hub (one dataset-push path): its dry run is the
folder push_dataset writes, with rcl_hf.data's card and the Hub's Parquet layout."""

import runpy
import sys
from pathlib import Path

import datasets

from rcl_hf import hub

REPO = Path(__file__).resolve().parents[2]


def test_build_dataset_dry_run_push_is_the_hub_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["build_dataset.py"])
    mod = runpy.run_path(str(REPO / "scripts" / "build_dataset.py"), run_name="build_dataset_test")
    upload = tmp_path / "upload"
    assert mod["main"](["--name", "synthetic", "--output_dir", str(tmp_path / "out"), "--parquet",
                        "--push_to_hub", "owner/synthetic-lesions", "--dry_run_dir", str(upload)]) == 0
    assert f"dry run: wrote the upload folder to {upload}" in capsys.readouterr().out
    assert (tmp_path / "out" / "data" / "train-00000-of-00001.parquet").is_file()
    files = hub.list_files(upload)
    assert files == ["README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet",
                     "data/validation-00000-of-00001.parquet"]
    meta = hub.front_matter((upload / "README.md").read_text(encoding="utf-8"))
    assert meta["pretty_name"].startswith("rcl_hf") or "synthetic" in meta["pretty_name"].lower()
    assert {s["name"] for s in meta["dataset_info"]["splits"]} == {"train", "validation", "test"}
    back = datasets.load_dataset(str(upload))
    saved = datasets.load_from_disk(str(tmp_path / "out"))
    assert {s: len(d) for s, d in back.items()} == {s: len(d) for s, d in saved.items()}
    assert back["test"]["label"] == saved["test"]["label"]
    assert "owner/synthetic-lesions" in (upload / "README.md").read_text(encoding="utf-8")
