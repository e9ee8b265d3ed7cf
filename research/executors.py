"""Run a grid's cells as cluster jobs with ``submitit``, for a study that outgrows one machine.

:func:`research.grid.run_grid` runs cells in a local worker pool; given a
:class:`SubmititEngine` it submits them instead, all at once as one job array
(``executor.map_array``), and waits for them. Each job calls the function the local pool calls,
:func:`research.grid._run_cell_safe` (one process), or, when a cell asks for several
processes (``cell_processes > 1``, one per GPU), runs that same function under
``accelerate launch`` (:func:`run_cell_job`). Everything else is the grid's: done cells are
skipped before submission (so a resubmitted grid resumes), a failed cell gets its ``cell.json``
marked ``failed`` and is reported with the path of its log, and the report reads the finished cells.

Engines (``research/run_grid.py --executor``):

* ``local`` — the worker pool on this machine (``--workers``); no submitit.
* ``slurm`` — Slurm job arrays (``--slurm_partition``, ``--slurm_time_min``, ``--slurm_gpus_per_node``,
  ``--slurm_cpus_per_task``, ``--slurm_array_parallelism``).
* ``submitit_local`` — submitit's ``LocalExecutor``: every cell a job in its own process on this
  machine, exactly as on Slurm but without it (what the tests run).

Job scripts, pickles and logs go to ``<output_dir>/submitit_logs`` unless ``--slurm_log_dir`` is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .grid import DONE_FILE, Cell, _run_cell_safe, _worker_init, _write_marker

__all__ = ["EXECUTORS", "SubmititOptions", "SubmititEngine", "run_cell_job", "executor_parameters"]

#: ``--executor`` values: the local pool, Slurm, and submitit's local executor.
EXECUTORS = ("local", "slurm", "submitit_local")
CellResult = Tuple[str, Optional[Dict[str, Any]], Optional[str]]


@dataclass
class SubmititOptions:
    """Where and how the jobs run (``--executor`` and the ``--slurm_*`` flags)."""

    executor: str = "slurm"
    partition: Optional[str] = None
    time_min: int = 240
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    array_parallelism: int = 64
    mem_gb: Optional[float] = None
    cell_processes: int = 1
    log_dir: Optional[str] = None
    poll_s: Optional[float] = None  # how often to check on the jobs (default 1 s locally, 30 s on Slurm)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS[1:]:
            raise ValueError(f"a submitit engine runs {EXECUTORS[1:]}, not {self.executor!r}")
        for name in ("time_min", "cpus_per_task", "array_parallelism", "cell_processes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node!r}")
        if self.cell_processes > 1 and self.executor == "slurm" and self.gpus_per_node < self.cell_processes:
            raise ValueError(f"cell_processes={self.cell_processes} launches one process per GPU: "
                             f"ask for as many GPUs (slurm_gpus_per_node={self.gpus_per_node})")


def executor_parameters(options: SubmititOptions, name: str) -> Dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords: the generic ones, plus ``slurm_*`` ones (ignored locally)."""
    # (submitit_local gives every job CUDA_VISIBLE_DEVICES=0..gpus_per_node-1: 0 would hide the GPUs of this machine)
    params: Dict[str, Any] = {"name": name, "timeout_min": int(options.time_min),
                              "gpus_per_node": int(options.gpus_per_node), "cpus_per_task": int(options.cpus_per_task),
                              "tasks_per_node": 1, "nodes": 1}
    if options.executor == "slurm":
        params["slurm_array_parallelism"] = int(options.array_parallelism)
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.mem_gb:
            params["mem_gb"] = options.mem_gb
    return params


def run_cell_job(cell: Cell, keep_models: bool, threads: int = 0, processes: int = 1) -> CellResult:
    """What one job runs: the local pool's cell function (:func:`research.grid._run_cell_safe`), in
    this process, or under ``accelerate launch --num_processes processes`` (one process per GPU)."""
    if processes <= 1:
        if threads > 0:
            _worker_init(threads)
        result = _run_cell_safe(cell, keep_models)
        if result[2] is not None:  # the job's log then holds the traceback (the Trainer's output: the cell's train.log)
            print(f"cell {cell.cell_id} failed:\n{result[2]}", file=sys.stderr, flush=True)
        return result
    if os.path.isdir(cell.output_dir):  # a half-finished earlier attempt: cleaned here, before any rank starts
        shutil.rmtree(cell.output_dir)
    os.makedirs(cell.output_dir, exist_ok=True)
    spec = os.path.join(cell.output_dir, "launch_cell.json")
    with open(spec, "w", encoding="utf-8") as fh:
        json.dump({"cell": dataclasses.asdict(cell), "keep_models": keep_models}, fh, default=str)
    study_on_pythonpath()
    cmd = launch_command(spec, processes)
    print("launching:", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, check=False).returncode
    os.remove(spec)
    result = _launched_result(cell, code)
    if result[2] is not None:
        print(f"cell {cell.cell_id} failed:\n{result[2]}", file=sys.stderr, flush=True)
    return result


def study_on_pythonpath() -> str:
    """Put the folder that holds the ``research`` package on ``PYTHONPATH`` (for this process's children):
    the study is not installed, so a job interpreter (submitit, ``accelerate launch``) finds it only there."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return root


def launch_command(spec: str, processes: int) -> List[str]:
    """``accelerate launch`` of this module's ``__main__`` (one cell, ``spec`` its JSON) on ``processes`` GPUs."""
    with socket.socket() as s:  # jobs of one array may share a node: each its own rendezvous port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(port), "-m", __name__, spec]


def _launched_result(cell: Cell, code: int) -> CellResult:
    try:
        with open(os.path.join(cell.output_dir, DONE_FILE), encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        info = {}
    if code == 0 and info.get("status") == "done":
        return cell.cell_id, info, None
    err = info.get("error") or f"accelerate launch exited with code {code} and wrote no done-marker"
    if info.get("status") != "failed":
        _write_marker(cell, {"status": "failed", "error": err})
    return cell.cell_id, None, err


class SubmititEngine:
    """Runs batches of cells as submitit job arrays, ``run_grid(grid, engine=SubmititEngine(options, grid.output_dir))``

    ``logs`` maps each submitted cell id to its job's log file (stderr; stdout lies beside it).
    ``job_fn`` is the function every job calls with ``(cell, keep_models, threads, processes)``.
    """

    def __init__(self, options: SubmititOptions, output_dir: str, name: str = "rcl_grid",
                 job_fn: Callable[..., CellResult] = run_cell_job) -> None:
        self.options = options
        self.folder = options.log_dir or os.path.join(output_dir, "submitit_logs")
        self.name = name
        self.job_fn = job_fn
        self.logs: Dict[str, str] = {}
        self.job_ids: Dict[str, str] = {}

    def executor(self) -> Any:
        import submitit

        study_on_pythonpath()  # the job interpreters unpickle functions of the research package
        cluster = "local" if self.options.executor == "submitit_local" else "slurm"
        ex = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        ex.update_parameters(**executor_parameters(self.options, self.name))
        return ex

    def map(self, cells: Sequence[Cell], keep_models: bool) -> Iterator[CellResult]:
        """Submit ``cells`` as one job array; yield ``(cell_id, info, error)`` as each job ends."""
        if not cells:
            return
        from submitit.helpers import as_completed

        n = len(cells)
        threads = self.options.cpus_per_task if self.options.executor == "slurm" else 0
        jobs = self.executor().map_array(self.job_fn, list(cells), [keep_models] * n, [threads] * n,
                                         [self.options.cell_processes] * n)
        cell_of = {}
        for cell, job in zip(cells, jobs):
            cell_of[job.job_id] = cell
            self.job_ids[cell.cell_id] = job.job_id
            self.logs[cell.cell_id] = str(job.paths.stderr)
        print(f"submitted {n} cell job(s) ({self.options.executor}, array {jobs[0].job_id.split('_')[0]}); "
              f"logs under {self.folder}", file=sys.stderr, flush=True)
        poll = self.options.poll_s or (1.0 if self.options.executor == "submitit_local" else 30.0)
        for job in as_completed(jobs, poll_frequency=poll):
            cell = cell_of[job.job_id]
            try:
                yield job.result()
            except Exception as err:  # noqa: BLE001 - the job died (killed, timed out, out of memory, node failure)
                text = f"job {job.job_id} did not finish: {type(err).__name__}: {err}".strip()
                try:
                    _write_marker(cell, {"status": "failed", "error": text[-4000:], "job_id": job.job_id,
                                         "log": self.logs[cell.cell_id]})
                except OSError:
                    pass
                yield cell.cell_id, None, text


def _main(argv: Sequence[str]) -> int:
    """One rank of an ``accelerate launch``-ed cell: the cell of a JSON spec through the local pool's cell function."""
    with open(argv[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    return 0 if _run_cell_safe(Cell(**spec["cell"]), bool(spec["keep_models"]))[2] is None else 1


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
