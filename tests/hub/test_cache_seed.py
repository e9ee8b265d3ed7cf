"""Loading by Hub id through the Hugging Face cache: seed_cache writes the cache layout, load_model, the
DecisionLayer and the pipeline read it back through huggingface_hub (snapshot_download), offline; a miss and a
wrong revision are one clear line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcl_hf.hub import folder_revision, seed_cache, shipped_models
from rcl_hf.model_source import cached_revisions, is_hub_id, resolve_model_folder
from rcl_hf.offline import HubUnavailableError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, with huggingface_hub offline (as HF_HUB_OFFLINE=1 makes it)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture()
def shipped(tmp_path, tiny_checkpoint):
    """A models/ folder holding one model folder (the tiny checkpoint)."""
    root = tmp_path / "models"
    shutil.copytree(tiny_checkpoint, root / "tiny-model")
    return root


def test_seed_writes_the_hub_cache_layout_and_load_model_reads_it_offline(shipped, offline_cache):
    import rcl_hf

    assert seed_cache(shipped) == ["rcl-hf/tiny-model"]
    repo = offline_cache / "models--rcl-hf--tiny-model"
    commit = (repo / "refs" / "main").read_text()
    assert commit == folder_revision(shipped / "tiny-model") and len(commit) == 40
    snap = repo / "snapshots" / commit
    assert (snap / "config.json").is_symlink() and (snap / "config.json").resolve().parent == (repo / "blobs").resolve()
    assert sorted(os.listdir(snap)) == sorted(os.listdir(shipped / "tiny-model"))
    from huggingface_hub import scan_cache_dir  # huggingface_hub itself accepts the layout

    info = scan_cache_dir(offline_cache)
    assert [r.repo_id for r in info.repos] == ["rcl-hf/tiny-model"] and not info.warnings
    model = rcl_hf.load_model("rcl-hf/tiny-model")
    assert Path(model.rcl_source) == snap
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    by_id = rcl_hf.predict(model, [img])
    by_folder = rcl_hf.predict(rcl_hf.load_model(str(shipped / "tiny-model")), [img])
    np.testing.assert_allclose(by_id.probabilities, by_folder.probabilities, atol=1e-6)
    assert rcl_hf.load_model("rcl-hf/tiny-model", revision=commit).rcl_source == model.rcl_source
    # seeding the same folder again is the same revision; a changed folder is a new one, and main follows it
    assert seed_cache(shipped) == ["rcl-hf/tiny-model"] and (repo / "refs" / "main").read_text() == commit
    (shipped / "tiny-model" / "notes.md").write_text("changed")
    seed_cache(shipped)
    assert (repo / "refs" / "main").read_text() != commit and len(list((repo / "snapshots").iterdir())) == 2


def test_an_offline_miss_and_a_wrong_revision_are_one_clear_line(shipped, offline_cache):
    with pytest.raises(HubUnavailableError, match=r"not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        resolve_model_folder("rcl-hf/tiny-model")
    seed_cache(shipped)
    with pytest.raises(HubUnavailableError, match=r"Revision 'v9' of 'rcl-hf/tiny-model' is not in the local .*it has: main"):
        resolve_model_folder("rcl-hf/tiny-model", revision="v9")
    assert cached_revisions("rcl-hf/tiny-model")[0] == "main"
    with pytest.raises(HubUnavailableError, match="neither an existing model folder nor a Hub id"):
        resolve_model_folder("not-an-id")


def test_is_hub_id_tells_ids_from_paths(tmp_path):
    assert is_hub_id("rcl-hf/brain-tumor-mri-efficientnet-lite0")
    assert not any(is_hub_id(s) for s in ("./a/b", "/a", "a/b/c", "~/x", "a/", str(tmp_path)))


def test_seed_refuses_what_is_not_a_model_folder(tmp_path, offline_cache):
    with pytest.raises(FileNotFoundError, match="No shipped models"):
        seed_cache(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model folder"):
        seed_cache(tmp_path / "empty")
    bad = tmp_path / "bad" / "m"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        seed_cache(tmp_path / "bad")
    assert not (offline_cache / "models--rcl-hf--m" / "refs").exists()


def test_a_user_process_loads_the_seeded_id_offline_with_load_model_and_the_pipeline(shipped, tmp_path):
    """As a user runs it: rcl-seed-cache into HF_HUB_CACHE, then a fresh process with HF_HUB_OFFLINE=1 loads the id
    with rcl_hf.load_model and with pipeline(..., model=id) (transformers' own resolution through the cache)."""
    cache = tmp_path / "user_cache"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "rcl_hf.commands.seed_cache", "--source", str(shipped)], check=True,
                   env=env, cwd=ROOT, timeout=120, capture_output=True)
    code = """
import numpy as np
from PIL import Image
from transformers import pipeline
import rcl_hf
img = Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8))
model = rcl_hf.load_model("rcl-hf/tiny-model")
record = rcl_hf.predict(model, img).as_records()[0]
out = pipeline("risk-aware-image-classification", model="rcl-hf/tiny-model")(img)
out = out[0] if isinstance(out, list) else out
assert out["label"] == record["decision"] and out["refer"] == record["refer"], (out, record)
print("ok", out["label"])
"""
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-2000:]


def test_the_cli_seeds_and_prints_the_ids(shipped, tmp_path):
    cache = tmp_path / "cli_cache"
    proc = subprocess.run([sys.executable, "-m", "rcl_hf.commands.seed_cache", "--source", str(shipped),
                           "--cache_dir", str(cache)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "seeded rcl-hf/tiny-model" and (cache / "models--rcl-hf--tiny-model" / "refs" / "main").is_file()
    proc = subprocess.run([sys.executable, "-m", "rcl_hf.commands.seed_cache", "--source", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "No shipped models" in proc.stderr and "Traceback" not in proc.stderr


def test_shipped_models_default_to_the_repository_models_folder():
    if not (ROOT / "models").is_dir():
        pytest.skip("this checkout has no models/ folder")
    ids = shipped_models()
    assert "rcl-hf/brain-tumor-mri-efficientnet-lite0" in ids


def test_the_space_default_ids_are_the_shipped_namespace():
    from rcl_hf.hub import SHIPPED_NAMESPACE
    from rcl_hf.space.startup import SHIPPED_MODEL_IDS

    assert all(i.split("/")[0] == SHIPPED_NAMESPACE for i in SHIPPED_MODEL_IDS)
