"""The benchmark harness (benchmarks/), its throughput callback, and the GPU-path decisions (rcl_hf.gpu_defaults).

No test here fails on timing: the harness runs at tiny sizes and its numbers are
checked for sanity (positive, finite, each ratio equal to a / b of medians taken
from the same run's raw timings). The GPU path's decisions are tested with the
machine's facts mocked (CUDA present or not, bf16, CPU count).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402
from benchmarks import interleave, make_ratio, stats  # noqa: E402
from benchmarks.throughput import ThroughputCallback  # noqa: E402
from rcl_hf.gpu_defaults import GpuPlan, apply_gpu_path, is_convolutional, plan_gpu_path  # noqa: E402


# ----------------------------------------------------------------------------- harness units
def test_interleave_alternates_order_and_counts():
    calls = []
    clock = iter(range(1000))
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1,
                       timer=lambda: float(next(clock)))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B | B A | A B
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t == 1.0 for v in times.values() for t in v)  # one tick between the two timer reads
    with pytest.raises(ValueError, match="repeats"):
        interleave({"a": lambda: None}, repeats=0)


def test_stats_and_ratio():
    s = stats([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 4
    assert s["p10"] <= s["median"] <= s["p90"]
    for bad in ([1.0, float("nan")], [0.0], [-1.0], []):
        with pytest.raises(ValueError):
            stats(bad)
    r = make_ratio("x", "a", "b", 3.0, 2.0, 1.02, "<=")
    assert r["value"] == 1.5 and r["meets"] is False
    assert make_ratio("x", "a", "b", 3.0, 2.0, 1.0, ">=")["meets"] is True
    assert make_ratio("x", "a", "b", 3.0, 2.0)["meets"] is None
    with pytest.raises(ValueError, match="positive finite"):
        make_ratio("x", "a", "b", 1.0, 0.0)
    with pytest.raises(ValueError, match="direction"):
        make_ratio("x", "a", "b", 1.0, 1.0, 1.0, "<")


def test_results_files_and_index(tmp_path):
    import time

    raw = {"benchmark": "metric_speed", "title": "t", "config": {"n": 1},
           "ratios": [make_ratio("r", "a", "b", 2.0, 4.0, 1.0, "<=")],
           "table": {"columns": ["what", "ms"], "rows": [["x", 1.5]]}, "findings": ["f"]}
    result = benchmarks.finish(raw, started=time.perf_counter(), load_before=benchmarks.load_average(), argv=["metric_speed"])
    for key in ("cpu", "logical_cpus", "torch_threads"):
        assert key in result["machine"]
    assert result["versions"]["torch"] == torch.__version__
    assert result["command"].endswith("python -m benchmarks metric_speed")
    paths = benchmarks.write_result(result, tmp_path)
    back = json.loads(paths["json"].read_text())
    assert back["ratios"][0]["value"] == 0.5
    md = paths["md"].read_text()
    assert "| r | a / b | 0.500 | <= 1.0 | met |" in md and "load average" in md
    index = benchmarks.write_index(tmp_path).read_text()
    assert "[metric_speed](metric_speed.md)" in index and "0.500" in index


# ----------------------------------------------------------------------------- GPU path decisions
def _args(**kw):
    base = dict(fp16=False, bf16=False, tf32=None, dataloader_num_workers=0, dataloader_pin_memory=True,
                torch_compile=False, use_cpu=False)
    base.update(kw)
    return SimpleNamespace(**base)


CNN = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1))


class _PatchOnly(torch.nn.Module):  # a ViT-like stem: one conv with kernel == stride
    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 16, 16, stride=16)
        self.head = torch.nn.Linear(16, 4)


def test_is_convolutional():
    assert is_convolutional(CNN)
    assert not is_convolutional(_PatchOnly())
    assert not is_convolutional(torch.nn.Linear(3, 3))


def test_plan_cpu_keeps_defaults():
    plan = plan_gpu_path(CNN, _args(), cuda_available=False)
    assert plan.empty and plan.device == "cpu"
    assert plan_gpu_path(CNN, _args(), cuda_available=True, enabled=False).empty
    assert plan_gpu_path(CNN, _args(use_cpu=True), cuda_available=True, bf16_supported=True).empty


def test_plan_with_cuda(monkeypatch):
    plan = plan_gpu_path(CNN, _args(), cuda_available=True, bf16_supported=True, tf32_supported=True, cpu_count=16,
                         local_processes=1)
    assert plan.training_args == {"bf16": True, "tf32": True, "dataloader_num_workers": 8,
                                  "dataloader_persistent_workers": True}
    assert plan.channels_last and plan.non_blocking and plan.device == "cuda"
    # a ViT gets no channels_last; two processes on 6 CPUs get 2 workers each; no bf16 -> fp16
    plan = plan_gpu_path(_PatchOnly(), _args(), cuda_available=True, bf16_supported=False, tf32_supported=False,
                         cpu_count=6, local_processes=2)
    assert plan.training_args == {"fp16": True, "dataloader_num_workers": 2, "dataloader_persistent_workers": True}
    assert not plan.channels_last
    # the user's choices stand
    plan = plan_gpu_path(CNN, _args(fp16=True, tf32=False, dataloader_num_workers=3, dataloader_pin_memory=False),
                         cuda_available=True, bf16_supported=True, tf32_supported=True, cpu_count=16)
    assert plan.training_args == {} and not plan.non_blocking and plan.channels_last
    assert plan_gpu_path(CNN, _args(), cuda_available=True, bf16_supported=True, tf32_supported=True,
                         cpu_count=1).training_args["dataloader_num_workers"] == 1
    # facts read from torch when not given: mocked CUDA availability
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr("transformers.utils.is_torch_tf32_available", lambda: False)
    plan = plan_gpu_path(CNN, _args(), cpu_count=4)
    assert plan.device == "cuda" and plan.training_args["bf16"] is True and "tf32" not in plan.training_args
    assert plan.training_args["dataloader_num_workers"] == 3


def test_apply_gpu_path_rebuilds_training_arguments(tmp_path):
    from rcl_hf.train_job import default_training_args

    args = default_training_args(str(tmp_path), eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
                                 use_cpu=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    plan = GpuPlan(device="cuda", training_args={"bf16": True, "dataloader_num_workers": 3,
                                                 "dataloader_persistent_workers": True},
                   channels_last=True, non_blocking=True)
    new, model = apply_gpu_path(plan, args, model)
    assert new is not args and not args.bf16 and args.mixed_precision == "no"
    assert new.bf16 and new.mixed_precision == "bf16"  # derived in __post_init__, not just assigned
    assert new.dataloader_num_workers == 3 and new.dataloader_persistent_workers
    assert new.accelerator_config.non_blocking and not args.accelerator_config.non_blocking
    assert new.remove_unused_columns is False and new.label_names == ["labels"]
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    same, _ = apply_gpu_path(GpuPlan(), args, None)
    assert same is args  # the CPU plan changes nothing


def test_throughput_callback(monkeypatch):
    ticks = iter([10.0, 11.0, 11.5, 12.0, 12.5])
    monkeypatch.setattr("benchmarks.throughput.time.perf_counter", lambda: next(ticks))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cb = ThroughputCallback(samples_per_step=8, skip=2)
    cb.on_train_begin(None, None, None)
    for step in range(1, 6):
        cb.on_step_end(None, SimpleNamespace(global_step=step, max_steps=5), None)
    assert cb.measured_steps == 3 and cb.seconds == 1.5  # from the end of step 2 (11.0) to step 5 (12.5)
    assert cb.samples_per_second == 8 * 3 / 1.5
    with pytest.raises(ValueError, match="skip"):
        ThroughputCallback(8, skip=0)


# ----------------------------------------------------------------------------- harness end to end
def _check_result(result):
    for r in result["ratios"]:
        assert math.isfinite(r["value"]) and r["value"] > 0 and r["a"] > 0 and r["b"] > 0
        assert r["value"] == r["a"] / r["b"]
    for row in result["table"]["rows"]:
        for cell in row:
            if isinstance(cell, float):
                assert math.isfinite(cell), row


def test_quick_run_writes_sane_results(tmp_path):
    from benchmarks.__main__ import main

    results = main(["loss_overhead", "metric_speed", "--quick", "--repeats", "2", "--output_dir", str(tmp_path)])
    assert [r["benchmark"] for r in results] == ["loss_overhead", "metric_speed"]
    for r in results:
        _check_result(r)
    loss = results[0]
    # the ratio's a and b are the medians of this run's own raw step times
    raw = loss["raw"]["step_s"]
    assert len(raw["ce"]) == len(raw["rcl"]) == 2
    assert loss["ratios"][0]["a"] == pytest.approx(statistics.median(raw["rcl"]) * 1e3, rel=1e-12)
    assert loss["ratios"][0]["b"] == pytest.approx(statistics.median(raw["ce"]) * 1e3, rel=1e-12)
    assert loss["ratios"][3]["a"] == pytest.approx(statistics.median(raw["ce (A/A)"]) * 1e3, rel=1e-12)
    assert all(t > 0 for v in raw.values() for t in v)
    metric = results[1]
    assert metric["ratios"][1]["b"] == pytest.approx(statistics.median(metric["raw"]["seconds"]["core"]), rel=1e-12)
    assert 0 <= metric["raw"]["core_result"]["cer"] <= 1
    written = json.loads((tmp_path / "loss_overhead.json").read_text())
    assert written["ratios"] == json.loads(json.dumps(loss["ratios"]))
    assert written["load_average"]["before"] is None or len(written["load_average"]["before"]) == 3
    assert "loss_overhead" in (tmp_path / "README.md").read_text()


def test_unknown_benchmark_is_rejected(capsys):
    from benchmarks.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["no_such_benchmark"])
    assert "unknown benchmark" in capsys.readouterr().err
    # a smoke run never overwrites the recorded results
    assert Path(parse_args(["--quick"]).output_dir) != benchmarks.RESULTS_DIR
    assert Path(parse_args([]).output_dir) == benchmarks.RESULTS_DIR


@pytest.mark.slow
def test_quick_run_trainer_data_inference(tmp_path):
    from benchmarks.__main__ import main

    results = main(["trainer_throughput", "data_pipeline", "inference_latency", "--quick", "--output_dir", str(tmp_path)])
    for r in results:
        _check_result(r)
    tp = results[0]
    ips = tp["raw"]["images_per_s"]
    assert tp["ratios"][0]["a"] == statistics.median(ips["rcl_trainer"])
    assert tp["ratios"][0]["b"] == statistics.median(ips["hf_trainer_ce"])
    assert tp["ratios"][1]["a"] == statistics.median(ips["hf_trainer_ce (A/A)"])
    assert results[2]["raw"]["agree"] is True  # predict() and the transformers pipeline agree


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--output_dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check_cpu_smoke.json").read_text())
    _check_result(result)
    assert "| resnet18 | rcl Trainer, RCL |" in proc.stdout and "efficientnet_lite0 fine-tune" in proc.stdout


def test_gpu_check_refuses_cpu_without_flag():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from benchmarks.gpu_check import main

    with pytest.raises(SystemExit) as err:
        main([])
    assert err.value.code == 2


# ----------------------------------------------------------------------------- data scaling
def test_data_scaling_exponent_and_generated_folder(tmp_path):
    from benchmarks.data_scaling import exponent, link_subset, make_folder

    ns = [1000, 4000, 16000]
    assert exponent(ns, [2e-6 * n ** 1.5 for n in ns]) == pytest.approx(1.5)
    assert exponent(ns, [3.0, 3.0, 3.0]) == pytest.approx(0.0, abs=1e-12)
    assert exponent(ns, [1.0, None, 0.0]) is None  # fewer than two positive values
    make_folder(200, 32, tmp_path / "full", workers=1)
    files = sorted((tmp_path / "full" / "Training").glob("*/*.jpg"))
    assert len(files) == 200 and len({f.read_bytes() for f in files}) == 200
    link_subset(tmp_path / "full", 50, tmp_path / "n50")
    linked = sorted((tmp_path / "n50" / "Training").glob("*/*.jpg"))
    assert len(linked) == 50 and all(f.stat().st_nlink == 2 for f in linked)


@pytest.mark.slow
def test_data_scaling_quick_run(tmp_path):
    from benchmarks.data_scaling import STAGES, main

    result = main(["--quick", "--output_dir", str(tmp_path)])
    _check_result(result)
    assert [r["n"] for r in result["raw"]] == [60, 120]
    assert set(result["exponents"]) == set(STAGES)
    assert all(r["stages"]["one epoch"]["s"] > 0 and r["epoch_images"] == r["splits"]["train"] for r in result["raw"])
    md = (tmp_path / "data_scaling.md").read_text()
    assert "python benchmarks/data_scaling.py --quick" in md and "| one epoch | exponent |" in md


def _load_level(clients, rps, p95=0.4, errors=0, cores=1.0):
    return {"clients": clients, "requests": 64, "ok": 64 - errors, "errors": errors, "busy": 0, "p50_s": p95 / 2,
            "p95_s": p95, "throughput_rps": rps, "rss_before_mb": 1000.0, "rss_after_mb": 1010.0,
            "server_cpu_ms_per_request": 40.0, "client_cpu_ms_per_request": 6.0, "cores_busy": cores}


def _load_result(now_1, now_8, before_1, p95_8=0.4, cores_1=0.8):
    from benchmarks.space_load import _ratio
    from benchmarks.space_load_report import goal_met

    now = [_load_level(1, now_1, cores=cores_1), _load_level(8, now_8, p95=p95_8, cores=1.5)]
    before = [_load_level(1, before_1), _load_level(8, before_1)]
    cfg = {"workers": None, "max_batch_size": None, "max_waiting": None, "queue_poll_ms": None}
    return {"command": "python benchmarks/space_load.py", "date": "2026-12-03", "machine": {"cpu": "x", "logical_cpus": 2},
            "load_average_before": [0.1] * 3, "load_average_after": [0.2] * 3, "model": "m", "images": "i", "risk": "10%",
            "queue": {**cfg, "torch_threads": 1}, "levels": now, "analysis_in_process": {"median_ms": 70, "p95_ms": 80},
            "configs": [{**cfg, "levels": now, "speedup_8_vs_1": _ratio(now[1], now[0])},
                        {**cfg, "label": "commit abc", "levels": before, "speedup_8_vs_1": 1.0}],
            "speedup_8_vs_1": _ratio(now[1], now[0]), "speedup_8_vs_baseline_1": _ratio(now[1], before[0]),
            "speedup_ceiling_8_vs_1": 2 / cores_1,
            "goal": {"met_vs_1_client": goal_met(_ratio(now[1], now[0]), now[1]),
                     "met_vs_baseline_1_client": goal_met(_ratio(now[1], before[0]), now[1])}}


@pytest.mark.parametrize("now_8, before_1, p95_8, against_before", [
    (30.0, 8.0, 0.4, "3.75x (at least 3x with p95 <= 2 s and no error: **met**)"),
    (30.0, 12.0, 0.4, "2.50x (at least 3x with p95 <= 2 s and no error: **not met**)"),
    (30.0, 8.0, 2.5, "3.75x (at least 3x with p95 <= 2 s and no error: **not met**)"),  # too slow at p95
])
def test_space_load_findings_give_the_goal_verdicts_and_the_machine_ceiling(now_8, before_1, p95_8, against_before):
    from benchmarks.space_load_report import findings, markdown

    result = _load_result(16.0, now_8, before_1, p95_8=p95_8, cores_1=0.8)
    lines = findings(result)
    assert against_before in lines[0] and "commit abc" in lines[0]
    assert f"{now_8 / 16.0:.2f}x" in lines[1] and "**not met**" in lines[1]  # 1.88x against today's one client
    assert "2 / 0.80 = 2.50x" in lines[2]  # one client keeps 0.8 of 2 CPUs busy: no more than 2.5x
    assert "## Findings (computed from the tables of this run)" in markdown(result)


def test_space_load_ratio_of_a_level_that_served_nothing_is_none():
    from benchmarks.space_load import _ratio

    assert _ratio(_load_level(8, 20.0), _load_level(1, 0.0)) is None
    assert _ratio(_load_level(8, 20.0), None) is None
    assert _ratio(_load_level(8, 20.0), _load_level(1, 10.0)) == 2.0


def test_space_load_findings_compare_repeated_settings_by_their_median():
    from benchmarks.space_load_report import findings

    result = _load_result(16.0, 30.0, 8.0)
    base = result["configs"][0]
    alt = {**base, "max_batch_size": 4}
    result["configs"] = [base, {**alt, "levels": [_load_level(1, 16.0), _load_level(8, 40.0)]},
                         {**base, "levels": [_load_level(1, 16.0), _load_level(8, 31.0)]},
                         {**alt, "levels": [_load_level(1, 16.0), _load_level(8, 29.0)]},
                         {**base, "levels": [_load_level(1, 16.0), _load_level(8, 32.0)]},
                         {**alt, "levels": [_load_level(1, 16.0), _load_level(8, 28.0)]}, result["configs"][1]]
    line = findings(result)[-1]
    assert "workers default, batch default, waiting default, poll default: 31.00 (30.00, 31.00, 32.00)" in line
    assert "batch 4, waiting default, poll default: 29.00 (40.00, 29.00, 28.00)" in line  # one lucky run is not enough
    assert line.endswith("Highest: workers default, batch default, waiting default, poll default.")


def test_space_load_findings_survive_a_baseline_that_served_nothing():
    from benchmarks.space_load_report import findings

    result = _load_result(16.0, 30.0, 0.0)  # every baseline request failed: throughput 0, no ratio
    result["configs"][1]["levels"][0]["error_examples"] = ["ComponentProcessingError: Expected a float"]
    lines = findings(result)
    assert lines[0].startswith("The Space before this work (commit abc) served no request with one client: no ratio")
    assert "Expected a float" in lines[0] and "1.88x" in lines[1]


def test_the_docs_quote_the_space_default_start_from_its_result():
    """docs/benchmarks.md states the no-argument Space start as the benchmark's own finding (no hand-typed figure)."""
    result = json.loads((ROOT / "benchmarks" / "results" / "space_default_start.json").read_text())
    assert result["goal"] == {"seconds": 15.0, "met": result["table"]["rows"][3][1] <= 15.0}
    assert result["findings"][0] in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
