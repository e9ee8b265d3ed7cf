#!/usr/bin/env python
"""Fine-tune an image classifier with a clinical loss (HF example-script style).

    python scripts/train.py --dataset brain_tumor_mri --data_dir ../shared/data/brain_tumor_mri   # sensible defaults
    python scripts/train.py configs/isic2018.yaml --data_dir PATH --loss focal                   # one config per dataset
    python scripts/train.py --dataset synthetic --loss rcl --lam 1 --output_dir runs/rcl
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py configs/synthetic.yaml --loss ce
    python scripts/train.py --help        # our flags, grouped; --help_all lists every TrainingArguments flag

A single JSON or YAML file may replace the flags; flags given after it override it.
"""

from rcl_hf.commands.train import train_main

if __name__ == "__main__":
    train_main()
