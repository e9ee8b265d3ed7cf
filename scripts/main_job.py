#!/usr/bin/env python
"""The main job: cross-entropy vs the risk-calibrated loss, each with the post-hoc rule, at matched accuracy.

    python scripts/main_job.py                          # embedded synthetic default (= make main)
    python scripts/main_job.py --seeds 0 1 2 3 4 --epochs 8 --output_dir runs/main5
    python scripts/main_job.py --verbose true           # the Trainers' per-step logs on the terminal

The job is part of the study (``research/main_job.py``, not installed with the library), so this script puts
the repository root on ``sys.path`` first; the spawned training processes inherit it.
"""

import os
import sys
from pathlib import Path

# Pin the thread pools before torch / numpy start them (torch.set_num_threads follows in the job).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from research.main_job import main  # noqa: E402

if __name__ == "__main__":
    main()
