"""Safe loading, a Space that reads only what was uploaded, and tokens that never leak.

* the source tree loads weights only as safetensors or ``torch.load(..., weights_only=True)``,
  never unpickles otherwise, and never passes ``trust_remote_code=True``;
* a checkpoint whose only weights are a pickle carrying a payload is refused by every
  loading path (inference, fine-tuning, the Space, resuming a Trainer), and the payload
  never runs; a plain-tensor ``pytorch_model.bin`` still loads (``weights_only``);
* the Space reads no path a user names, caps uploads in bytes and pixels before decoding;
* with ``HF_TOKEN`` (and even ``--hub_token``) set to a fake token, a training run and a
  dry-run push write it into no file and print it nowhere.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from rcl_hf.commands.push import main as push_main
from checkpoints import save_tiny_checkpoint
import torch
from space_app import load_space_app

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "scripts", "spaces_demo")
FAKE_TOKEN = "hf_" + "SecuR1ty" * 4  # token-shaped, never valid
FAKE_CLI_TOKEN = "hf_" + "CliT0ken" * 4


# =============================================================================== source scan
def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def unsafe_loading_calls(source: str, filename: str = "<source>") -> List[str]:
    """``file:line: what`` for each unsafe deserialisation or remote-code call in Python ``source``.

    Flags: ``torch.load`` without ``weights_only=True``; ``pickle``/``dill``/``joblib``/``cloudpickle``
    ``load(s)``; ``numpy.load(allow_pickle=True)``; any ``weights_only=False``; any
    ``trust_remote_code`` that is not the constant ``False``.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        where = f"{filename}:{node.lineno}"
        is_true = lambda v: isinstance(v, ast.Constant) and v.value is True  # noqa: E731
        if name == "torch.load" and not is_true(kw.get("weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle", "_pickle") and name.endswith(("load", "loads")):
            found.append(f"{where}: {name} (arbitrary code on load)")
        if name in ("np.load", "numpy.load") and is_true(kw.get("allow_pickle")):
            found.append(f"{where}: {name}(allow_pickle=True)")
        if "weights_only" in kw and isinstance(kw["weights_only"], ast.Constant) and kw["weights_only"].value is False:
            found.append(f"{where}: weights_only=False")
        if "trust_remote_code" in kw and not (isinstance(kw["trust_remote_code"], ast.Constant) and kw["trust_remote_code"].value is False):
            found.append(f"{where}: trust_remote_code={ast.unparse(kw['trust_remote_code'])}")
    return found


def _source_files() -> List[Path]:
    files = [p for d in SCANNED for p in (ROOT / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(p for p in files if p.suffix in (".py", ".pyi", ".md", ".yaml", ".yml", ".json", ".txt", ".cfg", ".toml"))


def test_source_tree_loads_weights_safely_and_runs_no_remote_code():
    files = _source_files()
    py = [p for p in files if p.suffix == ".py"]
    assert len(py) >= 20 and any(p.name == "app.py" for p in py) and any(p.name == "train.py" for p in py)
    problems = []
    for path in py:
        problems += unsafe_loading_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    for path in files:  # docs and configs must not tell anyone to trust remote code either
        text = path.read_text(encoding="utf-8", errors="ignore")
        for needle in ("trust_remote_code=True", "trust_remote_code: true", "--trust_remote_code", "weights_only=False"):
            if needle in text:
                problems.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not problems, "\n".join(problems)
    # the one torch.load in the package (offline EfficientNet-Lite weights) is there, and safe
    assert "weights_only=True" in (ROOT / "src" / "rcl_hf" / "models.py").read_text()


def test_the_scanner_catches_what_it_must():
    # Sample source for the scanner, never run. ``TORCH_LOAD`` stands for ``torch.load`` so that repository-wide
    # checks for unsafe loads (which read this file as text) do not flag the unsafe samples themselves.
    bad = textwrap_dedent(
        """
        import torch, pickle, numpy as np
        from transformers import AutoModel
        a = TORCH_LOAD("x.pt")
        b = TORCH_LOAD("x.pt", weights_only=False)
        c = pickle.loads(blob)
        d = np.load("x.npy", allow_pickle=True)
        e = AutoModel.from_pretrained("x", trust_remote_code=True)
        f = AutoModel.from_pretrained("x", trust_remote_code=flag)
        ok1 = torch.load("x.pt", map_location="cpu", weights_only=True)
        ok2 = np.load("x.npz")
        ok3 = AutoModel.from_pretrained("x", trust_remote_code=False)
        """
    ).replace("TORCH_LOAD", "torch" + ".load")
    found = unsafe_loading_calls(bad)
    assert [f.split(": ", 1)[1] for f in found] == [
        "torch.load without weights_only=True",
        "torch.load without weights_only=True", "weights_only=False",
        "pickle.loads (arbitrary code on load)",
        "np.load(allow_pickle=True)",
        "trust_remote_code=True",
        "trust_remote_code=flag",
    ]


def textwrap_dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)


# =============================================================================== malicious pickles
class _Payload:
    """Unpickling this runs ``exec``: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


@pytest.fixture()
def pickle_checkpoint(tmp_path):
    """A model folder whose only weights are ``pytorch_model.bin`` with a payload beside the tensors."""
    folder = save_tiny_checkpoint(tmp_path / "evil")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({**state, "extra": _Payload(marker)}, folder / "pytorch_model.bin")
    return folder, marker


def _load_paths():
    from rcl_hf.inference import load_model
    from rcl_hf.models import build_model
    from rcl_hf.severity import SeverityMatrix

    return {
        "inference.load_model": lambda f: load_model(str(f)),
        "models.build_model(checkpoint)": lambda f: build_model(str(f), SeverityMatrix.preset("synthetic"), image_size=32),
        "space.load_space_model": lambda f: load_space_app().load_space_model(str(f)),
    }


@pytest.mark.parametrize("path_name", ["inference.load_model", "models.build_model(checkpoint)", "space.load_space_model"])
def test_a_pickle_checkpoint_with_a_payload_is_refused(pickle_checkpoint, path_name):
    import pickle

    folder, marker = pickle_checkpoint
    with pytest.raises((pickle.UnpicklingError, ValueError, OSError, RuntimeError)) as info:
        _load_paths()[path_name](folder)
    assert not marker.exists(), "the pickle payload ran"
    assert "weights only" in str(info.value).lower() or "weights_only" in str(info.value), str(info.value)[:300]


def test_a_plain_tensor_bin_checkpoint_still_loads_with_weights_only(tmp_path):
    """weights_only refuses code, not tensors: an honest pytorch_model.bin loads and predicts the same."""
    from PIL import Image
    from safetensors.torch import load_file

    from rcl_hf.inference import load_model, predict

    ref = save_tiny_checkpoint(tmp_path / "ref", seed=3)
    folder = save_tiny_checkpoint(tmp_path / "bin", seed=3)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    a = predict(load_model(str(ref)), img).probabilities
    b = predict(load_model(str(folder)), img).probabilities
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng_state.pth", "scheduler.pt"])
def test_resuming_from_a_checkpoint_with_a_pickle_payload_refuses_it(tmp_path, victim):
    """A checkpoint-N from a stranger: its optimizer / RNG / scheduler file carries a payload."""
    import pickle

    import datasets
    from transformers import TrainingArguments

    from rcl_hf.data.synthetic import load_synthetic
    from rcl_hf.data.transforms import apply_transforms
    from rcl_hf.models import build_model
    from rcl_hf.severity import SeverityMatrix
    from rcl_hf.trainer import RiskArguments, RiskCalibratedTrainer

    sev = SeverityMatrix.preset("synthetic")
    raw = load_synthetic(seed=0, n_train=16, n_validation=0, n_test=0)["train"]
    train = apply_transforms(datasets.DatasetDict({"train": raw}), image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)["train"]

    def trainer(max_steps: int) -> RiskCalibratedTrainer:
        torch.manual_seed(0)
        model, _ = build_model("hf-resnet", sev, image_size=32)
        args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=max_steps, per_device_train_batch_size=8,
                                 save_strategy="steps", save_steps=1, report_to=[], use_cpu=True, disable_tqdm=True,
                                 remove_unused_columns=False, label_names=["labels"], logging_strategy="no")
        return RiskCalibratedTrainer(model=model, args=args, train_dataset=train, risk_args=RiskArguments(), severity=sev)

    trainer(1).train()
    ckpt = tmp_path / "run" / "checkpoint-1"
    marker = tmp_path / "PAYLOAD_RAN"
    assert (ckpt / victim).is_file()
    torch.save({"payload": _Payload(marker)}, ckpt / victim)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer(2).train(resume_from_checkpoint=str(ckpt))
    assert not marker.exists(), "the pickle payload ran"


# =============================================================================== the Space's inputs


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    pytest.importorskip("gradio")
    app = load_space_app()
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("space_model") / "m")
    model = app.load_space_model(str(folder), "tiny")
    demo = app.build_demo(model, None, [], max_pixels=1_000_000, max_upload_mb=1.0)
    return app, model, demo


def _input_component(demo):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "rcl-input")


def test_space_reads_only_files_gradio_uploaded(space, tmp_path, monkeypatch):
    import gradio as gr
    from gradio.data_classes import FileData

    app, _model, demo = space
    upload_root = tmp_path / "gradio_uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(upload_root))
    inside = upload_root / "abc123" / "scan.png"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"\x89PNG not really")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    component = _input_component(demo)
    assert component.preprocess(FileData(path=str(inside))) == str(inside)
    for named in (str(secret), "/etc/hostname", str(upload_root / ".." / "secret.txt"), str(upload_root) + "_evil/x.png",
                  "~/.ssh/id_rsa", "../../etc/passwd"):
        with pytest.raises((app.InputImageError, gr.Error), match="not uploaded through this page"):
            component.preprocess(FileData(path=named))
        with pytest.raises(app.InputImageError) as info:  # the check itself, also used outside the UI
            app._uploaded_path(named)
        assert info.value.kind == "not_uploaded", named
    assert component.preprocess(None) is None


def test_space_caps_bytes_and_pixels_before_decoding(space):
    app, model, _demo = space
    import base64
    import struct
    import zlib

    def header_only_png(w: int, h: int) -> bytes:
        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")

    from PIL import Image

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded: an oversized image must be refused from its header")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image.Image, "load", no_decoding)  # refused from the header: nothing is expanded
        for w, h in ((40_000, 40_000), (65_535, 65_535), (1001, 1000)):
            with pytest.raises(app.InputImageError) as info:
                app.analyze(header_only_png(w, h), 0.1, model, max_pixels=1_000_000)
            assert info.value.kind == "too_large" and "megapixels" in str(info.value)
    big = b"\x89PNG" + os.urandom(2048)
    with pytest.raises(app.InputImageError, match="above the limit") as info:
        app.analyze(big, 0.1, model, max_bytes=1024)
    assert info.value.kind == "too_large"
    data_url = "data:image/png;base64," + base64.b64encode(big).decode()
    with pytest.raises(app.InputImageError, match="above the limit"):
        app.analyze(data_url, 0.1, model, max_bytes=1024)
    with pytest.raises(app.InputImageError, match="too_large|megapixels"):
        app.analyze(np.zeros((1001, 1000, 3), np.uint8), 0.1, model, max_pixels=1_000_000)


def test_space_launch_caps_uploads_and_shares_nothing(space, monkeypatch):
    app, _model, demo = space
    seen: Dict[str, object] = {}
    monkeypatch.setattr(demo, "launch", lambda **kw: seen.update(kw))
    monkeypatch.setattr(demo, "queue", lambda **kw: demo)
    app.launch_demo(demo, host="127.0.0.1", port=7999, max_upload_mb=2.0)
    assert seen["max_file_size"] == 2 * 1024 * 1024
    assert seen["share"] is False and seen["show_error"] is False
    assert [Path(p) for p in seen["allowed_paths"]] == [app._examples_root()]  # the generated examples only


# =============================================================================== tokens
def _all_bytes(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _leaks(blobs: Dict[str, bytes], tokens) -> List[str]:
    return [f"{name}: {tok[:6]}..." for name, data in blobs.items() for tok in tokens if tok.encode() in data]


def test_tokens_never_reach_files_logs_or_output(tmp_path, monkeypatch, capfd):
    """HF_TOKEN in the environment and --hub_token on the command line: the run's files (checkpoints and
    training_args.bin included), the dry-run upload folder, and everything printed stay token-free."""
    from rcl_hf import hub
    from rcl_hf.commands.train import train_main
    from rcl_hf.data.synthetic import load_synthetic

    data = tmp_path / "data"
    load_synthetic(seed=0, n_train=32, n_validation=16, n_test=16).save_to_disk(str(data))
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "run"
    train_main(["--dataset", str(data), "--image_size", "32", "--backbone", "hf-resnet", "--num_train_epochs", "1",
                "--per_device_train_batch_size", "16", "--save_strategy", "steps", "--save_steps", "1",
                "--eval_strategy", "epoch", "--load_best_model_at_end", "false",
                "--logging_steps", "1", "--use_cpu", "true", "--report_to", "none", "--push_to_hub", "false",
                "--hub_token", FAKE_CLI_TOKEN, "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")])
    files = _all_bytes(out)
    # training_args.bin pickles TrainingArguments (hub_token included unless redacted) in the run and each checkpoint
    assert "training_args.bin" in files and any(k.startswith("checkpoint-") and k.endswith("training_args.bin") for k in files)
    assert b"hub_token" in files["training_args.bin"]

    dry = tmp_path / "upload"
    assert push_main(["--model_dir", str(out), "--repo_id", "someone/rcl-test", "--dry_run_dir", str(dry)]) == 0
    assert (dry / "README.md").is_file()
    # a real push cannot happen here: it must fail with one line that does not show the token
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what the variable sets at import
    assert push_main(["--model_dir", str(out), "--repo_id", "someone/rcl-test"]) == 2

    captured = capfd.readouterr()
    blobs = {**files, **{f"upload/{k}": v for k, v in _all_bytes(dry).items()},
             "stdout": captured.out.encode(), "stderr": captured.err.encode()}
    assert "Dry run: wrote" in captured.out and "error:" in captured.err
    assert not _leaks(blobs, (FAKE_TOKEN, FAKE_CLI_TOKEN)), _leaks(blobs, (FAKE_TOKEN, FAKE_CLI_TOKEN))
