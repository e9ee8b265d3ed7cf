#!/usr/bin/env python
"""The main job: cross-entropy vs risk-calibrated loss, same seed and budget.

    python scripts/main_job.py                         # embedded synthetic default
    python scripts/main_job.py --losses ce focal rcl --lam 2 --epochs 8
"""

from rcl_hf.cli import compare_main

if __name__ == "__main__":
    compare_main()
