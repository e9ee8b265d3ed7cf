"""research.executors: grid cells as submitit jobs (Slurm job arrays; here submitit's LocalExecutor,
no Slurm). The jobs give the local pool's results table, a rerun skips done cells, and a failed job's cell is
reported with its log while the other cells finish."""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("submitit")

from research import grid as grid_mod  # noqa: E402
from research.run_grid import main  # noqa: E402
from research.executors import (  # noqa: E402
    SubmititEngine,
    SubmititOptions,
    executor_parameters,
    launch_command,
    run_cell_job,
)
from research.grid import is_done, load_grid, run_grid  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_smoke_grid(tmp_path, methods=None) -> str:
    """research/configs/synthetic_smoke.yaml cut to a tiny dataset, 1 epoch, one seed and 2 cells."""
    with open(os.path.join(REPO, "research", "configs", "synthetic_smoke.yaml"), encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    raw["seeds"] = [0]
    raw["data"].update({"max_train_samples": 64, "max_eval_samples": 32, "cache_dir": None})
    raw["training"].update({"num_train_epochs": 1, "per_device_train_batch_size": 32})
    raw["methods"] = methods or [{"name": "ce", "loss": "ce"}, {"name": "rcl", "loss": "rcl", "lam": 2.0}]
    raw["report"] = {"n_boot": 50, "baselines": ["ce"]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _jobs(folder) -> list:
    return sorted(glob.glob(os.path.join(folder, "*_submitted.pkl")))


def test_submitit_jobs_give_the_local_pools_table_and_a_rerun_skips_done_cells(tmp_path):
    grid_file = tiny_smoke_grid(tmp_path)
    local = main([grid_file, "--output_dir", str(tmp_path / "pool"), "--no_plots"])
    jobs = main([grid_file, "--output_dir", str(tmp_path / "jobs"), "--no_plots", "--executor", "submitit_local"])
    assert len(local["ran"]) == len(jobs["ran"]) == 2 and local["failed"] == jobs["failed"] == {}
    logs = str(tmp_path / "jobs" / "submitit_logs")
    assert len(_jobs(logs)) == 2  # one job per cell

    def table(run):
        return pd.read_csv(os.path.join(run["report"]["results.csv"])).drop(columns=["wall_time_s"])

    a, b = table(local), table(jobs)
    assert len(a) == 2 and list(a.columns) == list(b.columns)
    numeric = a.select_dtypes("number").columns
    pd.testing.assert_frame_equal(a.drop(columns=numeric), b.drop(columns=numeric))
    np.testing.assert_allclose(a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=1e-6, equal_nan=True)

    again = main([grid_file, "--output_dir", str(tmp_path / "jobs"), "--no_plots", "--executor", "submitit_local"])
    assert again["ran"] == [] and len(again["skipped"]) == 2 and len(_jobs(logs)) == 2  # nothing resubmitted
    pd.testing.assert_frame_equal(table(again), b)


# Jobs of the failure test: pickled by value (see below), so that the job processes need not import this file.
def _fake_or_die(cell, keep_models, threads, processes):
    if cell.method == "dies":
        os._exit(3)  # the job process ends without a result (as when killed or out of memory)
    if cell.method == "raises":
        return run_cell_job(cell, keep_models, threads, processes)  # its training raises: a cell failure
    os.makedirs(cell.output_dir, exist_ok=True)
    for f in grid_mod.PREDICTION_FILES:
        np.savez(os.path.join(cell.output_dir, f), logits=np.zeros((2, 4)), labels=np.zeros(2))
    grid_mod._write_marker(cell, {"status": "done"})
    return cell.cell_id, {"status": "done"}, None


@pytest.mark.slow  # 25-35 s of subprocesses; CI runs it (make test-slow)
def test_a_failed_job_is_reported_with_its_log_and_the_other_cells_finish(tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        g = load_grid(tiny_smoke_grid(tmp_path, methods=[
            {"name": "ce", "loss": "ce"},
            {"name": "raises", "loss": "ce", "data": {"max_train_samples": 2}},  # classes without a training sample
            {"name": "dies", "loss": "ce"}]), output_dir=str(tmp_path / "runs"))
        engine = SubmititEngine(SubmititOptions(executor="submitit_local"), g.output_dir, job_fn=_fake_or_die)
        res = run_grid(g, engine=engine, progress=False)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ok, raises, dies = g.cells
    assert res["ran"] == [ok.cell_id] and is_done(ok)
    assert sorted(res["failed"]) == sorted([raises.cell_id, dies.cell_id])
    assert "have no training sample" in res["failed"][raises.cell_id]
    assert "did not finish" in res["failed"][dies.cell_id]
    for cell in (raises, dies):
        log = res["logs"][cell.cell_id]
        assert log == engine.logs[cell.cell_id] and log.startswith(g.output_dir) and os.path.exists(log)
        marker = json.loads(open(os.path.join(cell.output_dir, "cell.json"), encoding="utf-8").read())
        assert marker["status"] == "failed" and not is_done(cell)
    assert "have no training sample" in open(res["logs"][raises.cell_id], encoding="utf-8").read()
    assert json.loads(open(os.path.join(dies.output_dir, "cell.json")).read())["log"] == res["logs"][dies.cell_id]


def test_slurm_parameters_and_the_sbatch_script(tmp_path, monkeypatch):
    import submitit

    opts = SubmititOptions(executor="slurm", partition="gpu", time_min=30, gpus_per_node=2, cpus_per_task=4,
                           array_parallelism=16, mem_gb=32)
    params = executor_parameters(opts, "rcl_grid")
    assert params == {"name": "rcl_grid", "timeout_min": 30, "cpus_per_task": 4, "tasks_per_node": 1, "nodes": 1,
                      "gpus_per_node": 2, "slurm_array_parallelism": 16, "slurm_partition": "gpu", "mem_gb": 32}
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    engine = SubmititEngine(opts, str(tmp_path), name="rcl_grid")
    ex = engine.executor()
    assert ex.cluster == "slurm" and ex._executor.folder == tmp_path / "submitit_logs"
    text = ex._executor._make_submission_file_text("python -m submitit.core._submit X", "uid")
    for line in ("--partition=gpu", "--time=30", "--gpus-per-node=2", "--cpus-per-task=4", "--mem=32GB",
                 "--job-name=rcl_grid"):
        assert f"#SBATCH {line}" in text, line
    # 300 cells: one array job, at most 16 of its tasks at once
    from submitit.slurm.slurm import _make_sbatch_string

    array = _make_sbatch_string(command="x", folder=str(tmp_path), map_count=300, **ex._executor.parameters)
    assert "#SBATCH --array=0-299%16" in array
    # the local test engine runs the same jobs without Slurm: no slurm-only parameter
    local = executor_parameters(SubmititOptions(executor="submitit_local", partition="gpu", mem_gb=8), "g")
    assert not any(k.startswith("slurm_") for k in local) and "mem_gb" not in local and local["gpus_per_node"] == 1


def test_options_and_cli_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="not 'local'"):
        SubmititOptions(executor="local")
    with pytest.raises(ValueError, match="time_min"):
        SubmititOptions(time_min=0)
    with pytest.raises(ValueError, match="one process per GPU"):
        SubmititOptions(cell_processes=2, gpus_per_node=1)
    grid_file = tiny_smoke_grid(tmp_path)
    for flags, msg in ((["--cell_processes", "2"], "--cell_processes > 1"),
                       (["--executor", "slurm", "--slurm_time_min", "0"], "time_min")):
        with pytest.raises(SystemExit) as e:
            main([grid_file, "--output_dir", str(tmp_path / "x"), *flags])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse's choices
        main([grid_file, "--executor", "pbs"])
    assert e.value.code == 2


def test_launch_command_runs_this_module_under_accelerate(tmp_path):
    cmd = launch_command(str(tmp_path / "launch_cell.json"), 4)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and "--multi_gpu" in cmd
    assert cmd[-3:] == ["-m", "research.executors", str(tmp_path / "launch_cell.json")]
    assert 0 < int(cmd[cmd.index("--main_process_port") + 1]) < 65536


@pytest.mark.slow
def test_a_cell_job_under_accelerate_launch_trains_on_two_processes(tmp_path):
    """cell_processes=2: the job runs the cell under ``accelerate launch`` (here gloo DDP on CPU)."""
    grid_file = tiny_smoke_grid(tmp_path, methods=[{"name": "ce", "loss": "ce"}])
    out = main([grid_file, "--output_dir", str(tmp_path / "ddp"), "--no_plots", "--executor", "submitit_local",
                "--cell_processes", "2"])
    assert len(out["ran"]) == 1 and out["failed"] == {}
    cell = load_grid(grid_file, output_dir=str(tmp_path / "ddp")).cells[0]
    assert is_done(cell) and not os.path.exists(os.path.join(cell.output_dir, "launch_cell.json"))
    assert json.loads(open(os.path.join(cell.output_dir, "rcl_run.json")).read())["world_size"] == 2
    assert os.path.exists(os.path.join(cell.output_dir, "train.rank1.log"))
