#!/usr/bin/env python
"""Calibrate and certify the decision layer of any image classifier (see rcl_hf.commands.calibrate).

    python scripts/calibrate.py --model runs/isic2018_rcl --dataset isic2018 --data_dir ../shared/data/isic2018_task3
"""

from rcl_hf.commands.calibrate import main

if __name__ == "__main__":
    main()
