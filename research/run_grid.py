"""``python -m research.run_grid GRID.yaml [--flags]``: run a grid, then select on validation, evaluate on
test and write ``results.csv`` / ``results.md`` / plots.

    python -m research.run_grid research/configs/synthetic_smoke.yaml
    python -m research.run_grid research/configs/frozen_effnet_lite0.yaml --workers 2 \\
        --report_dir research/results/frozen_effnet_lite0
    python -m research.run_grid GRID.yaml --skip_run     # report from the finished cells only
    python -m research.run_grid GRID.yaml --executor slurm --slurm_partition gpu   # one Slurm job per cell
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

__all__ = ["ExperimentCLIArguments", "main"]


@dataclass
class ExperimentCLIArguments:
    """Flags after the grid file."""

    workers: int = field(default=1, metadata={"help": "Cells run in parallel (processes); 1 = in this process."})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Override the grid's output_dir (cell folders)."})
    report_dir: Optional[str] = field(default=None, metadata={"help": "Where results go (default: <output_dir>/report)."})
    only: Optional[List[str]] = field(default=None, metadata={"help": "Run only cells whose id contains one of these."})
    skip_run: bool = field(default=False, metadata={"help": "Do not train: report from the cells already done."})
    no_report: bool = field(default=False, metadata={"help": "Train only; write no report."})
    no_plots: bool = field(default=False, metadata={"help": "Write tables but no figures."})
    n_boot: Optional[int] = field(default=None, metadata={"help": "Bootstrap replicates (default: the grid's, 1000)."})
    title: Optional[str] = field(default=None, metadata={"help": "Title of results.md."})
    notes: Optional[str] = field(default=None, metadata={"help": "A markdown file whose text goes under the title."})
    dry_run: bool = field(default=False, metadata={"help": "List the cells (done or to do) and exit."})
    executor: str = field(default="local", metadata={
        "help": "Where cells run: local (the worker pool of --workers on this machine), slurm (one Slurm job per "
                "cell, submitted as job arrays through submitit), submitit_local (the same jobs as processes on "
                "this machine, without Slurm).", "choices": ["local", "slurm", "submitit_local"]})
    slurm_partition: Optional[str] = field(default=None, metadata={"help": "Slurm partition of the cell jobs."})
    slurm_time_min: int = field(default=240, metadata={"help": "Time limit of one cell job, in minutes."})
    slurm_gpus_per_node: int = field(default=1, metadata={"help": "GPUs of one cell job (slurm)."})
    slurm_cpus_per_task: int = field(default=8, metadata={"help": "CPUs of one cell job (also its torch threads)."})
    slurm_array_parallelism: int = field(default=64, metadata={"help": "Cell jobs of an array running at once."})
    slurm_mem_gb: Optional[float] = field(default=None, metadata={"help": "Memory of one cell job (GB)."})
    slurm_log_dir: Optional[str] = field(default=None, metadata={
        "help": "Job scripts and logs of the submitit engines (default: <output_dir>/submitit_logs)."})
    cell_processes: int = field(default=1, metadata={
        "help": "Processes of one cell job: 1 = a plain python call; N > 1 = accelerate launch on N GPUs."})


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Entry point of ``python -m research.run_grid``; returns a summary dict."""
    from transformers import HfArgumentParser

    from .grid import is_done, load_grid, run_grid
    from .comparison import compare_pipelines

    from .report import load_runs, write_results

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            HfArgumentParser(ExperimentCLIArguments).print_help()
            raise SystemExit(0)
        print("error: the first argument must be a grid YAML file (see research/configs/)", file=sys.stderr)
        raise SystemExit(2)
    grid_path, rest = argv[0], argv[1:]
    (args,) = HfArgumentParser(ExperimentCLIArguments).parse_args_into_dataclasses(args=rest)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        grid = load_grid(grid_path, output_dir=args.output_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    out: dict = {"grid": grid.name, "cells": len(grid.cells)}
    if args.dry_run:
        for c in grid.cells:
            print(("done " if is_done(c) else "todo ") + c.cell_id)
        return out
    t0 = time.time()
    if not args.skip_run:
        res = run_grid(grid, workers=args.workers, only=args.only, engine=_engine(args, grid))
        out.update(res)
        print(f"{grid.name}: ran {len(res['ran'])}, skipped {len(res['skipped'])} (done), failed {len(res['failed'])} "
              f"cells in {res['wall_time_s']:.0f} s", file=sys.stderr)
        for cid, err in res["failed"].items():
            print(f"FAILED {cid}: {err.strip().splitlines()[-1]} (log: {res['logs'][cid]})", file=sys.stderr)
    if not args.no_report:
        runs = load_runs(grid)
        if not runs:
            print("error: no finished cell to report on", file=sys.stderr)
            raise SystemExit(1)
        comparison = compare_pipelines(runs, grid.blend_weights, reference=grid.reference, tolerance=grid.tolerance,
                             n_boot=args.n_boot or grid.n_boot, baselines=grid.baselines, post_hoc=grid.post_hoc)
        notes = None
        if args.notes:
            with open(args.notes, encoding="utf-8") as fh:
                notes = fh.read()
        report_dir = args.report_dir or os.path.join(grid.output_dir, "report")
        paths = write_results(comparison, report_dir, grid, title=args.title, baselines=grid.baselines,
                              post_hoc=grid.post_hoc, plots=not args.no_plots, notes=notes)
        out["report"] = paths
        out["verdicts"] = comparison.verdicts
        print(f"results: {paths['results.md']} ({time.time() - t0:.0f} s)", file=sys.stderr)
    if out.get("failed"):
        raise SystemExit(1)
    return out


def _engine(args: ExperimentCLIArguments, grid):
    """The submitit engine of ``--executor slurm`` / ``submitit_local``; ``None`` for the local pool."""
    if args.executor == "local":
        if args.cell_processes > 1:
            print("error: --cell_processes > 1 launches each cell as a job: give --executor slurm or submitit_local",
                  file=sys.stderr)
            raise SystemExit(2)
        return None
    from .executors import SubmititEngine, SubmititOptions

    try:
        import submitit  # noqa: F401
    except ImportError:
        print(f"error: --executor {args.executor} needs submitit: pip install 'rcl_hf[cluster]'", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        options = SubmititOptions(
            executor=args.executor, partition=args.slurm_partition, time_min=args.slurm_time_min,
            gpus_per_node=args.slurm_gpus_per_node, cpus_per_task=args.slurm_cpus_per_task,
            array_parallelism=args.slurm_array_parallelism, mem_gb=args.slurm_mem_gb,
            cell_processes=args.cell_processes, log_dir=args.slurm_log_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return SubmititEngine(options, grid.output_dir, name=f"rcl_{grid.name}")


if __name__ == "__main__":
    main()
