"""One table of bad inputs, every row asserted: a clear error or a reported skip, and nothing written half-way.

Each row of :data:`ROWS` names a target and what must happen:

* ``loader`` rows build a tiny dataset tree (Brain Tumor MRI or ISIC 2018 layout)
  with one defect and run :func:`rcl_hf.data.load_dataset`: the defect is a
  reported ``Problem`` (``skipped`` or ``converted``) and the rest loads, or the
  load raises one clear ``ValueError``;
* ``cli`` rows run ``scripts/train.py``'s entry point (:func:`rcl_hf.commands.train.train_main`)
  in-process: exit code 2, one ``error: ...`` line on stderr, no traceback, and
  no output folder (nothing trained or written);
* ``call`` rows call the library directly and expect a ``ValueError`` (or the
  documented repair, e.g. a reordered severity matrix).

Every row must pass: there is no expected-failure row (a gap is fixed, not marked).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from checkpoints import save_tiny_checkpoint

from data_fixtures import ISIC_LABELS, isic_items, make_brain, make_isic_task3, write_bad, write_image

# =============================================================================== fixtures
@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    """The embedded synthetic data, small (32 / 16 / 16), saved with ``save_to_disk``."""
    from rcl_hf.data.synthetic import load_synthetic

    path = tmp_path_factory.mktemp("bad_inputs_data") / "synthetic_small"
    load_synthetic(seed=0, n_train=32, n_validation=16, n_test=16).save_to_disk(str(path))
    return path


@dataclass
class Ctx:
    tmp: Path
    data: Path  # the small synthetic save_to_disk folder


@dataclass
class Expect:
    """``how``: ``"skipped"`` / ``"converted"`` (a reported Problem of ``kind``), ``"raises"`` (``exc`` matching
    ``match``), ``"exit2"`` (CLI: exit code 2, one stderr line matching ``match``), ``"returns"`` (``check`` passes)."""

    how: str
    match: str = ""
    kind: str = ""
    exc: type = ValueError
    check: Optional[Callable[[Any], bool]] = None
    n_train: int = 0  # loader rows: images that must load


# =============================================================================== builders
def _image_in_brain_tree(case: str, ext: str) -> Callable[[Ctx], Tuple[str, Path]]:
    def build(ctx: Ctx):
        root = make_brain(ctx.tmp / "brain", n_train=2, testing=False)
        write_bad(root / "Training" / "glioma" / f"bad.{ext}", case)
        return "brain_tumor_mri", root
    return build


def _isic(defect: str) -> Callable[[Ctx], Tuple[str, Path]]:
    def build(ctx: Ctx):
        items = isic_items(2)
        root = make_isic_task3(ctx.tmp / "isic", items=items, groupings=False)
        gt = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
        lines = gt.read_text().splitlines()
        if defect == "missing_column":
            gt.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines) + "\n")
        elif defect == "two_hot":
            cells = lines[1].split(",")
            cells[1 + ISIC_LABELS.index("NV")] = "1.0"
            lines[1] = ",".join(cells)
            gt.write_text("\n".join(lines) + "\n")
        elif defect == "no_hot":
            cells = lines[1].split(",")
            lines[1] = ",".join([cells[0]] + ["0.0"] * len(ISIC_LABELS))
            gt.write_text("\n".join(lines) + "\n")
        elif defect == "image_without_label":
            write_image(root / "ISIC2018_Task3_Training_Input" / "ISIC_0099999.jpg")
        elif defect == "label_without_image":
            (root / "ISIC2018_Task3_Training_Input" / f"{items[0][0]}.jpg").unlink()
        else:
            raise ValueError(defect)
        return "isic2018", root
    return build


def _empty_tree(kind: str) -> Callable[[Ctx], Tuple[str, Path]]:
    def build(ctx: Ctx):
        root = ctx.tmp / "empty"
        if kind == "no_folders":
            root.mkdir()
        elif kind == "empty_class_folders":
            for cls in ("glioma", "notumor"):
                (root / "Training" / cls).mkdir(parents=True)
        elif kind == "only_bad_files":
            for cls, case in (("glioma", "empty"), ("notumor", "not_image")):
                write_bad(root / "Training" / cls / "x.jpg", case)
        return "brain_tumor_mri", root
    return build


def _saved(ctx: Ctx, name: str, edit: Callable[[Any], Any]) -> str:
    """The small synthetic DatasetDict after ``edit``, saved to ``ctx.tmp/name``."""
    import datasets

    dsd = edit(datasets.load_from_disk(str(ctx.data)))
    path = ctx.tmp / name
    dsd.save_to_disk(str(path))
    return str(path)


def _severity_file(ctx: Ctx, content: Any) -> str:
    path = ctx.tmp / "severity.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content, allow_nan=True))
    return str(path)


def _synthetic_severity(**changes: Any) -> Dict[str, Any]:
    from rcl_hf.severity import SeverityMatrix

    data = SeverityMatrix.preset("synthetic").to_dict()
    data = {"labels": data["labels"], "matrix": [list(r) for r in data["matrix"]], "critical": [list(r) for r in data["critical"]]}
    data.update(changes)
    return data


def _critical_below_row_max() -> Dict[str, Any]:
    data = _synthetic_severity()
    data["matrix"][1][2] = 1.0  # lesion_round -> lesion_oval now costs 1.0 (not marked critical) ...
    data["matrix"][1][0] = 0.5  # ... while the critical lesion_round -> normal costs 0.5: below its row's maximum
    return data


def _train_flags(ctx: Ctx, *flags: str) -> List[str]:
    return ["--dataset", str(ctx.data), "--image_size", "32", "--backbone", "hf-resnet", "--num_train_epochs", "1",
            "--max_train_samples", "32", "--use_cpu", "true", "--report_to", "none", *flags]


def _checkpoint(ctx: Ctx, labels: Optional[List[str]] = None) -> Path:
    return save_tiny_checkpoint(ctx.tmp / "ckpt", labels=labels)


REVERSED = ["lesion_ring", "lesion_oval", "lesion_round", "normal"]


# --------------------------------------------------------------------------- call rows
def _call_resolve_reordered(ctx: Ctx):
    from rcl_hf.trainer import RiskArguments
    from rcl_hf.train_job import resolve_severity

    return resolve_severity(RiskArguments(severity="synthetic"), None, REVERSED)


def _call_severity_for_reordered(ctx: Ctx):
    from rcl_hf.data import severity_for

    def reorder_classlabel(dsd):
        import datasets

        return dsd.cast_column("label", datasets.ClassLabel(names=REVERSED))
    import datasets

    return severity_for(datasets.load_from_disk(_saved(ctx, "reordered", reorder_classlabel)))


def _call_trainer_model_order(ctx: Ctx):
    from transformers import TrainingArguments

    from rcl_hf.models import build_model
    from rcl_hf.severity import SeverityMatrix
    from rcl_hf.trainer import RiskArguments, RiskCalibratedTrainer

    sev = SeverityMatrix.preset("synthetic")
    model, _ = build_model("hf-resnet", sev.reorder(REVERSED), image_size=32)
    args = TrainingArguments(output_dir=str(ctx.tmp / "out"), use_cpu=True, report_to=[])
    return RiskCalibratedTrainer(model=model, args=args, risk_args=RiskArguments(), severity=sev)


def _call_config_severity_disagrees(ctx: Ctx):
    from rcl_hf.inference import load_model

    folder = _checkpoint(ctx)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"] = {str(i): label for i, label in enumerate(REVERSED)}
    cfg["label2id"] = {label: i for i, label in enumerate(REVERSED)}
    (folder / "config.json").write_text(json.dumps(cfg))
    return load_model(str(folder))


def _call_config_without_severity(ctx: Ctx):
    from rcl_hf.inference import load_model

    folder = _checkpoint(ctx)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["rcl_severity"]
    (folder / "config.json").write_text(json.dumps(cfg))
    return load_model(str(folder))


def _call_backbone_checkpoint_other_order(ctx: Ctx):
    """A checkpoint trained with labels [normal, round, oval, ring] fine-tuned on data in the reversed order:
    each class must keep its own classifier row (the rows are permuted, not relabelled)."""
    import torch
    from transformers import AutoModelForImageClassification

    from rcl_hf.models import build_model
    from rcl_hf.severity import SeverityMatrix

    folder = _checkpoint(ctx)
    original = AutoModelForImageClassification.from_pretrained(folder)
    model, _ = build_model(str(folder), SeverityMatrix.preset("synthetic").reorder(REVERSED), image_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before, after = original.eval()(pixel_values=x).logits, model.eval()(pixel_values=x).logits
    return {"labels": [model.config.id2label[i] for i in range(4)], "rows_permuted": torch.allclose(after, before.flip(1), atol=1e-6)}


def _call_severity_json(content: Any) -> Callable[[Ctx], Any]:
    def call(ctx: Ctx):
        from rcl_hf.severity import SeverityMatrix

        return SeverityMatrix.from_json(_severity_file(ctx, content))
    return call


def _call_to_json_interrupted(ctx: Ctx):
    """``to_json`` dies half-way through writing: the old file must be intact and no partial file left."""
    from unittest import mock

    from rcl_hf.severity import SeverityMatrix

    target = ctx.tmp / "sev.json"
    SeverityMatrix.preset("synthetic").to_json(target)
    before = target.read_bytes()
    def dying_fsync(fd):  # the bytes sit in the temporary file, then the disk fails before the rename
        raise OSError(28, "No space left on device (simulated)")

    with mock.patch("rcl_hf.atomic_io.os.fsync", dying_fsync):
        with pytest.raises(OSError):
            SeverityMatrix.preset("brain_tumor_mri").to_json(target)
    return {"intact": target.read_bytes() == before, "leftovers": sorted(p.name for p in ctx.tmp.iterdir() if p.name != "sev.json")}


# =============================================================================== the table
def _p(id_: str, target: str, build: Callable, expect: Expect):
    return pytest.param(target, build, expect, id=id_)


ROWS = [
    # ---- corrupt and odd images (a Brain Tumor MRI tree with one such file in Training/glioma)
    _p("image-zero-byte", "loader", _image_in_brain_tree("empty", "jpg"), Expect("skipped", kind="empty", match="0 bytes|empty", n_train=8)),
    _p("image-truncated-jpeg", "loader", _image_in_brain_tree("truncated_jpeg", "jpg"), Expect("skipped", kind="truncated", match="truncat", n_train=8)),
    _p("image-truncated-png", "loader", _image_in_brain_tree("truncated_png", "png"), Expect("skipped", kind="truncated|corrupt", n_train=8)),
    _p("image-not-an-image", "loader", _image_in_brain_tree("not_image", "jpg"), Expect("skipped", kind="not_image", match="not an image", n_train=8)),
    _p("image-cmyk", "loader", _image_in_brain_tree("cmyk", "jpg"), Expect("converted", kind="mode", match="CMYK", n_train=9)),
    _p("image-16-bit", "loader", _image_in_brain_tree("sixteen_bit", "png"), Expect("converted", kind="mode", match="16", n_train=9)),
    _p("image-palette", "loader", _image_in_brain_tree("palette", "png"), Expect("converted", kind="mode", match="palette", n_train=9)),
    _p("image-rgba", "loader", _image_in_brain_tree("rgba", "png"), Expect("converted", kind="mode", match="alpha", n_train=9)),
    # ---- wrong label files (ISIC 2018 Task 3 layout)
    _p("isic-csv-missing-column", "loader", _isic("missing_column"), Expect("raises", match=r"missing column\(s\) \['VASC'\]")),
    _p("isic-row-two-classes", "loader", _isic("two_hot"), Expect("skipped", kind="ambiguous_label", match="2 classes set", n_train=20)),
    _p("isic-row-no-class", "loader", _isic("no_hot"), Expect("skipped", kind="ambiguous_label", match="0 classes set", n_train=20)),
    _p("isic-image-without-label", "loader", _isic("image_without_label"), Expect("skipped", kind="missing_label", match="not listed", n_train=21)),
    _p("isic-label-without-image", "loader", _isic("label_without_image"), Expect("skipped", kind="missing_image", match="no image", n_train=20)),
    # ---- empty datasets
    _p("empty-folder", "loader", _empty_tree("no_folders"), Expect("raises", match="no Training/ or Testing/ folder")),
    _p("empty-class-folders", "loader", _empty_tree("empty_class_folders"), Expect("raises", match="no usable image")),
    _p("empty-after-skipping-bad-files", "loader", _empty_tree("only_bad_files"), Expect("raises", match=r"(?s)no usable image.*1 skipped \(empty\), 1 skipped \(not_image\)")),
    _p("empty-split-cli", "cli", lambda c: _train_flags(c) + ["--dataset", _saved(c, "empty_split", lambda d: d.__class__(
        {**d, "validation": d["validation"].select([])}))], Expect("exit2", match="Split 'validation' .* is empty")),
    _p("truncated-saved-dataset-cli", "cli", lambda c: _train_flags(c) + ["--dataset", _truncate_arrow(_saved(c, "cut", lambda d: d))],
       Expect("exit2", match="read .* bytes|arrow|Arrow")),
    _p("empty-data-dir-cli", "cli", lambda c: ["--dataset", "brain_tumor_mri", "--data_dir", str(_empty_tree("empty_class_folders")(c)[1]),
                                             "--use_cpu", "true"], Expect("exit2", match="no usable image")),
    # ---- a class missing from the training split
    _p("train-split-missing-a-class-cli", "cli", lambda c: _train_flags(c) + ["--dataset", _saved(c, "no_ring", lambda d: d.__class__(
        {**d, "train": d["train"].filter(lambda r: r["label"] != 3)}))], Expect("exit2", match=r"Classes \['lesion_ring'\] have no training sample")),
    # ---- label orders: dataset vs severity matrix vs model config
    _p("dataset-vs-severity-other-labels-cli", "cli", lambda c: _train_flags(c, "--severity", "brain_tumor_mri"),
       Expect("exit2", match=r"Dataset labels \['normal', .*\] do not match severity labels \['glioma'")),
    _p("dataset-vs-severity-same-labels-other-order", "call", _call_resolve_reordered,
       Expect("returns", check=lambda s: s.labels == REVERSED and s.cost("lesion_round", "normal") == 1.0 and s.cost("normal", "lesion_round") == 0.3)),
    _p("dataset-classlabel-vs-stored-severity-order", "call", _call_severity_for_reordered,
       Expect("returns", check=lambda s: s.labels == REVERSED and bool(s.is_critical("lesion_ring", "normal")))),
    _p("model-config-vs-severity-order", "call", _call_trainer_model_order,
       Expect("raises", match=r"Model config labels \['lesion_ring'.*do not match severity labels \['normal'.*same names, other order")),
    _p("model-config-id2label-vs-its-severity", "call", _call_config_severity_disagrees,
       Expect("raises", match=r"Model labels \['lesion_ring'.* disagree with its severity labels")),
    _p("model-config-without-severity", "call", _call_config_without_severity, Expect("raises", match="not trained with rcl_hf")),
    _p("backbone-checkpoint-vs-dataset-order", "call", _call_backbone_checkpoint_other_order,
       Expect("returns", check=lambda r: r["labels"] == REVERSED and r["rows_permuted"])),
    # ---- invalid severity JSON (library and CLI)
    _p("severity-bad-json", "call", _call_severity_json("{\"labels\": [\"a\", "), Expect("raises", match="is not valid JSON")),
    _p("severity-not-an-object", "call", _call_severity_json("[1, 2, 3]"), Expect("raises", match="must be a JSON object")),
    _p("severity-missing-key", "call", _call_severity_json({"labels": ["a", "b"], "critical": [[0, 1], [1, 0]]}),
       Expect("raises", match=r"missing key\(s\) \['matrix'\]")),
    _p("severity-wrong-shape", "call", _call_severity_json(_synthetic_severity(matrix=[[0, 1], [1, 0]])), Expect("raises", match=r"shape \(2, 2\), expected \(4, 4\)")),
    _p("severity-nan", "call", _call_severity_json(_synthetic_severity(matrix=[[0, math.nan, 0.3, 0.3]] + _synthetic_severity()["matrix"][1:])),
       Expect("raises", match="not finite: nan")),
    _p("severity-critical-not-row-max", "call", _call_severity_json(_critical_below_row_max()), Expect("raises", match="below its row's maximum")),
    _p("severity-negative", "call", _call_severity_json(_synthetic_severity(matrix=[[0, -0.1, 0.3, 0.3]] + _synthetic_severity()["matrix"][1:])),
       Expect("raises", match="is negative")),
    _p("severity-bad-json-cli", "cli", lambda c: _train_flags(c, "--severity", _severity_file(c, "{oops")), Expect("exit2", match="is not valid JSON")),
    _p("severity-critical-not-row-max-cli", "cli", lambda c: _train_flags(c, "--severity", _severity_file(c, _critical_below_row_max())),
       Expect("exit2", match="below its row's maximum")),
    _p("severity-to-json-interrupted", "call", _call_to_json_interrupted,
       Expect("returns", check=lambda r: r["intact"] and r["leftovers"] == [])),
    # ---- wrong CLI arguments
    _p("cli-unknown-flag", "cli", lambda c: _train_flags(c, "--no_such_flag", "1"), Expect("exit2", match="unrecognized arguments: --no_such_flag")),
    _p("cli-unknown-loss", "cli", lambda c: _train_flags(c, "--loss", "hinge"), Expect("exit2", match=r"Unknown loss 'hinge'; choose one of \[")),
    _p("cli-negative-lam", "cli", lambda c: _train_flags(c, "--lam", "-1"), Expect("exit2", match=r"lam must be finite and >= 0, got -1")),
    _p("cli-nan-lam", "cli", lambda c: _train_flags(c, "--lam", "nan"), Expect("exit2", match=r"lam must be finite and >= 0, got nan")),
    _p("cli-unknown-nonfinite-mode", "cli", lambda c: _train_flags(c, "--nonfinite_loss", "ignore"), Expect("exit2", match="nonfinite_loss must be")),
    _p("cli-unknown-dataset", "cli", lambda c: ["--dataset", "no_such_dataset", "--use_cpu", "true"],
       Expect("exit2", match="Cannot load dataset 'no_such_dataset': not a registered loader .* not a save_to_disk folder")),
    _p("cli-missing-data-dir", "cli", lambda c: ["--dataset", "brain_tumor_mri", "--use_cpu", "true"], Expect("exit2", match="needs data_dir")),
    _p("cli-data-dir-does-not-exist", "cli", lambda c: ["--dataset", "isic2018", "--data_dir", str(c.tmp / "nowhere"), "--use_cpu", "true"],
       Expect("exit2", match="is not a directory|does not exist|not found")),
    _p("cli-unknown-backbone", "cli", lambda c: _train_flags(c, "--backbone", "no_such_net"), Expect("exit2", match="Unknown backbone 'no_such_net'")),
    _p("cli-resume-from-incomplete-checkpoint", "cli", lambda c: _train_flags(c, "--resume_from_checkpoint", _incomplete_checkpoint(c)),
       Expect("exit2", match=r"Cannot resume from .*checkpoint-6.*incomplete checkpoint \(no trainer_state.json")),
    _p("cli-resume-last-without-checkpoints", "cli", lambda c: _train_flags(c, "--resume_from_checkpoint", "last"),
       Expect("exit2", match=r"Cannot resume: .* holds no checkpoint-\* folder")),
    _p("cli-config-file-missing", "cli", lambda c: [str(c.tmp / "missing.yaml")], Expect("exit2", match="config file .*missing.yaml not found")),
    _p("cli-config-not-a-mapping", "cli", lambda c: [_write(c.tmp / "list.json", "[1, 2]")], Expect("exit2", match="must hold a mapping")),
]


def _truncate_arrow(folder: str) -> str:
    arrow = sorted(Path(folder, "train").glob("*.arrow"))[0]
    with open(arrow, "r+b") as fh:
        fh.truncate(100)
    return folder


def _incomplete_checkpoint(ctx: Ctx) -> str:
    """A ``checkpoint-6`` whose save never finished: weights, no ``trainer_state.json``."""
    folder = _checkpoint(ctx)
    target = ctx.tmp / "old_run" / "checkpoint-6"
    target.parent.mkdir()
    folder.rename(target)
    return str(target)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# =============================================================================== the runner
def _run_cli(argv: List[str], out_dir: Path, capsys) -> Tuple[int, List[str]]:
    from rcl_hf.commands.train import train_main

    capsys.readouterr()
    try:
        train_main([*argv, "--output_dir", str(out_dir)] if not argv[0].endswith((".yaml", ".json")) else argv)
        code: Any = 0
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # SystemExit("message"): Python prints it and exits with status 1
        err, code = err + code + "\n", 1
    return int(code or 0), [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("target,build,expect", ROWS)
def test_bad_input(target, build, expect, synthetic_dir, tmp_path, capsys, monkeypatch):
    from rcl_hf.data import ImageLoadError, load_dataset, open_image_rgb

    ctx = Ctx(tmp=tmp_path, data=synthetic_dir)
    if target == "loader":
        name, root = build(ctx)
        kw = dict(cache_dir=False, progress=False, return_report=True, val_size=0, test_size=0)
        if expect.how == "raises":
            with pytest.raises(expect.exc, match=expect.match):
                load_dataset(name, root, **kw)
            return
        dsd, report = load_dataset(name, root, **kw)
        hits = [p for p in report.problems if p.action == expect.how]
        assert len(hits) == 1, [str(p) for p in report.problems]
        problem = hits[0]
        assert problem.kind in expect.kind.split("|") and (not expect.match or _search(expect.match, problem.reason)), str(problem)
        names = [Path(s).name for s in dsd["train"]["source_file"]]
        bad_files = [p for p in root.rglob("bad.*")]
        if bad_files:  # the image rows: also the shared decoder, and the file is in the dataset iff converted
            bad = bad_files[0]
            assert (bad.name in names) == (expect.how == "converted")
            if expect.how == "converted":
                assert open_image_rgb(bad).mode == "RGB"
            else:
                with pytest.raises(ImageLoadError) as info:
                    open_image_rgb(bad)
                assert info.value.kind in expect.kind.split("|")
        assert len(dsd["train"]) == expect.n_train, (len(dsd["train"]), [str(p) for p in report.problems])
    elif target == "cli":
        import datasets
        import huggingface_hub.constants

        # as on CI: no Hub (a dataset name that is no loader and no folder must fail at once, not after retries)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        argv = build(ctx)
        out = tmp_path / "out"
        code, lines = _run_cli(argv, out, capsys)
        assert code == 2, (code, lines[-5:])
        assert not any("Traceback" in line for line in lines)
        assert len(lines) == 1, lines[:3] + ["..."] + lines[-3:]
        assert lines[0].startswith("error:") or ": error:" in lines[0], lines[0]
        assert _search(expect.match, lines[0]), lines[0]
        assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())  # nothing written
    elif target == "call":
        if expect.how == "raises":
            with pytest.raises(expect.exc, match=expect.match):
                build(ctx)
        else:
            result = build(ctx)
            assert expect.check(result), result
    else:
        raise AssertionError(target)


def _search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text, flags=re.S) is not None


def test_every_category_of_the_issue_has_rows():
    """The table covers each category the issue lists (a guard against rows silently disappearing)."""
    ids = [p.id for p in ROWS]
    for prefix, at_least in [("image-", 7), ("isic-", 4), ("empty-", 4), ("train-split-missing", 1), ("dataset-vs-severity", 2),
                             ("model-config", 3), ("severity-", 8), ("cli-", 8)]:
        assert sum(i.startswith(prefix) for i in ids) >= at_least, prefix
    assert len(set(ids)) == len(ids)
