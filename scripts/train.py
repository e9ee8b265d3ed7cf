#!/usr/bin/env python
"""Fine-tune an image classifier with a clinical loss (HF example-script style).

    python scripts/train.py --dataset synthetic --loss rcl --lam 1 --output_dir runs/rcl
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py configs/synthetic_rcl.yaml
    python scripts/train.py configs/brain_tumor_mri_rcl.yaml --data_dir ../shared/data/brain_tumor_mri
    accelerate launch --config_file configs/accelerate/cpu_ddp_2proc.yaml scripts/train.py configs/synthetic_rcl.yaml

A single JSON or YAML file may replace the flags; flags given after it override it.
"""

from rcl_hf.cli import train_main

if __name__ == "__main__":
    train_main()
