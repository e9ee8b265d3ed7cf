#!/usr/bin/env python
"""The main job: cross-entropy vs the risk-calibrated loss, each with the post-hoc rule, at matched accuracy.

    python scripts/main_job.py                          # embedded synthetic default (= make main)
    python scripts/main_job.py --seeds 0 1 2 3 4 --epochs 8 --output_dir runs/main5
    python scripts/main_job.py --verbose true           # the Trainers' per-step logs on the terminal
"""

import os

# Pin the thread pools before torch / numpy start them (torch.set_num_threads follows in the job).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from rcl_hf.main_job import main  # noqa: E402

if __name__ == "__main__":
    main()
