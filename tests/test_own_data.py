"""docs/own_data.md end to end: the page's four commands, read from the page itself, on a generated
``my_scans/<class>/*.png`` folder and severity JSON (train, calibrate per class, check, open the Space and
answer one image), then the clear errors of a bad folder or a severity file that does not fit it.

The commands run in this process, from a temporary folder that holds ``my_scans/`` and ``my_severity.json``
(the page's relative paths), with a few tiny settings appended (later flags override earlier ones): 64-px
images instead of 128, and a looser target for the few critical validation images a small folder has.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from data_fixtures import make_scan_folder

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "own_data.md"
#: What the test adds to each documented command (later flags override the page's).
TINY = {
    "scripts/train.py": ["--image_size", "64", "--logging_steps", "100", "--disable_tqdm", "true"],
    "scripts/calibrate.py": ["--risk_alpha", "0.2"],
}
SCANS = {"normal": 40, "cyst": 40, "tumour": 150}  # ~22 tumours in validation: enough to certify 20%


def page_commands(kind: str = "bash") -> List[List[str]]:
    """The commands of the page's ```bash blocks (``kind="text"``: its text blocks), continuations joined."""
    text = PAGE.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("python "):
                commands.append(shlex.split(line))
    return commands


def _script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runner(space_app, served: Dict[str, object], monkeypatch) -> Callable[[List[str]], object]:
    """``python SCRIPT ARGS`` run in this process (the same entry points the scripts call)."""
    from rcl_hf.commands.calibrate import main as calibrate_main
    from rcl_hf.commands.train import train_main

    def run(argv: List[str]):
        assert argv[0] == "python", argv
        script, args = argv[1], argv[2:] + TINY.get(argv[1], [])
        if script == "scripts/train.py":
            return train_main(args)
        if script == "scripts/calibrate.py":
            return calibrate_main(args)
        if script == "scripts/check_model.py":
            return _script(script).main(args)
        if script == "spaces_demo/app.py":
            # build it, do not serve it (monkeypatch: the app module is shared with the other Space tests)
            monkeypatch.setattr(space_app, "launch_demo", lambda demo, *a, **k: served.setdefault("demo", demo))
            return space_app.main(args)
        raise AssertionError(f"the page runs a command this test does not know: {argv}")

    return run


@pytest.fixture
def my_data(tmp_path, monkeypatch):
    """``my_scans/`` and ``my_severity.json`` as the page shows them, in the working folder."""
    make_scan_folder(tmp_path / "my_scans", SCANS)
    sev = re.search(r"```json\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S).group(1)
    (tmp_path / "my_severity.json").write_text(sev)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RCL_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RCL_MODEL", raising=False)
    return tmp_path


def test_the_page_has_four_commands_in_order():
    scripts = [c[1] for c in page_commands()]
    assert scripts == ["scripts/train.py", "scripts/calibrate.py", "scripts/check_model.py", "spaces_demo/app.py"]
    train, calibrate, check, space = page_commands()
    assert train[train.index("--dataset") + 1] == "imagefolder" and train[train.index("--data_dir") + 1] == "my_scans"
    assert train[train.index("--severity") + 1] == "my_severity.json"
    model = train[train.index("--output_dir") + 1]
    assert calibrate[calibrate.index("--model") + 1] == model and check[2] == model and space[-1] == model
    assert calibrate[calibrate.index("--conditional") + 1] == "class"
    assert any("--plan" in c for c in page_commands("text"))


def test_the_four_commands_of_the_page_train_calibrate_check_and_serve(my_data, space_app, capsys, monkeypatch):
    served: Dict[str, object] = {}
    run = _runner(space_app, served, monkeypatch)
    train, calibrate, check, space = page_commands()
    timings = {}
    t = time.perf_counter()
    results = run(train)
    timings["train"] = time.perf_counter() - t
    model = my_data / train[train.index("--output_dir") + 1]
    assert json.loads((model / "config.json").read_text())["id2label"] == {"0": "cyst", "1": "normal", "2": "tumour"}
    recipe = json.loads((model / "rcl_run.json").read_text())
    assert recipe["dataset"] == "imagefolder" and recipe["severity"]["labels"] == ["cyst", "normal", "tumour"]
    assert recipe["severity"]["critical"][2] == [True, True, False]  # tumour -> cyst / normal, reordered by name
    assert results["test"]["accuracy"] > 0.8  # the three patterns are easy
    assert (model / "ood_guard.safetensors").is_file()

    t = time.perf_counter()
    run(calibrate)
    timings["calibrate"] = time.perf_counter() - t
    cal = json.loads((model / "risk_calibration.json").read_text())
    assert cal["alpha"] == 0.2 and cal["risk_kind"] == "critical_miss" and cal["dataset"] == "imagefolder"
    assert cal["conditional"] == "class" and list(cal["per_class"]) == ["tumour"]  # the one critical class

    t = time.perf_counter()
    run(check)
    timings["check"] = time.perf_counter() - t
    report = json.loads((model / "check.json").read_text())
    assert report["dataset"] == "imagefolder" and report["test_images"] == recipe["split_sizes"]["test"]
    assert report["argmax"]["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-6)
    assert report["decision_layer"]["alpha"] == 0.2 and "ood" in report
    assert (model / "check.md").is_file()

    t = time.perf_counter()
    assert run(space) == 0
    demo = served["demo"]
    answer = space_app.analyze(my_data / "my_scans" / "tumour" / "tumour_000.png", "20%", demo.rcl_handlers.models[0])
    timings["space"] = time.perf_counter() - t
    one = answer["models"][0]
    assert one["certified"] and one["headline"] in ("tumour", "Refer to a specialist")
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})


def test_the_planner_line_of_the_page_parses():
    from rcl_hf.commands.args import parse_args
    from rcl_hf.commands.calibrate import CalibrateArguments
    from rcl_hf.train_args import DataArguments

    (plan,) = [c for c in page_commands("text") if "--plan" in c]
    args, data = parse_args((CalibrateArguments, DataArguments), plan[2:])
    assert args.plan is True and data.dataset == "imagefolder" and data.data_dir == "my_scans"


@pytest.mark.parametrize("labels, match", [
    (["normal", "cyst", "tumor"], r"classes without a severity row: \['tumour'\].*no dataset class: \['tumor'\]"),
    (["normal", "tumour"], r"Severity matrix has shape|classes without a severity row: \['cyst'\]"),
])
def test_a_severity_file_that_does_not_fit_the_folders_is_one_line(tmp_path, monkeypatch, capsys, labels, match):
    from rcl_hf.commands.train import train_main
    from rcl_hf.severity import SeverityMatrix

    make_scan_folder(tmp_path / "my_scans", {"normal": 6, "cyst": 6, "tumour": 6}, size=16)
    SeverityMatrix.from_groups(labels, [labels[-1]]).to_json(tmp_path / "bad.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RCL_HF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--dataset", "imagefolder", "--data_dir", "my_scans", "--severity", "bad.json",
                    "--output_dir", "runs/x", "--backbone", "hf-resnet", "--image_size", "16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err


def test_training_on_a_single_class_folder_is_one_line(tmp_path, monkeypatch, capsys):
    from rcl_hf.commands.train import train_main

    make_scan_folder(tmp_path / "my_scans", {"tumour": 6}, size=16)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train_main(["--dataset", "imagefolder", "--data_dir", "my_scans", "--severity", "synthetic",
                    "--output_dir", "runs/x"])
    assert "only one class folder ('tumour')" in capsys.readouterr().err
