#!/usr/bin/env python
"""Run an experiment grid and write the matched-accuracy comparison (results.csv, results.md, plots).

    python scripts/run_experiments.py configs/experiments/synthetic_smoke.yaml
    python scripts/run_experiments.py configs/experiments/frozen_effnet_lite0.yaml --workers 2 \\
        --report_dir benchmarks/results/experiments/frozen_effnet_lite0
    python scripts/run_experiments.py configs/experiments/frozen_effnet_lite0.yaml --executor slurm \
        --slurm_partition gpu          # one Slurm job per cell (submitit job arrays)

Finished cells are skipped, so an interrupted grid resumes where it stopped.
"""

from rcl_hf.cli import run_experiments_main

if __name__ == "__main__":
    run_experiments_main()
