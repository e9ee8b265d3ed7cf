"""``rcl-ood-guard``: fit (or fit again) the out-of-distribution guard of a saved model.

    rcl-ood-guard --model runs/brain_tumor_mri_cpu --dataset brain_tumor_mri \
        --data_dir ../shared/data/brain_tumor_mri --split_seed 0 --seed 0

The dataset arguments are ``scripts/train.py``'s (:class:`rcl_hf.train_args.DataArguments`), so the run's
own arguments give the run's splits; with the run's ``--seed`` the guard is the one its training job fits
(:func:`rcl_hf.ood_fit.fit_ood_guard`, the training job's sample size and rule by default). The guard file in
the model folder is replaced and what it holds is printed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..ood import DEFAULT_FALSE_ALARM_DELTA, DEFAULT_FALSE_ALARM_RATE
from ..train_args import DataArguments, ModelArguments

__all__ = ["GuardArguments", "main"]


@dataclass
class GuardArguments:
    """Which model gets a guard, and how it is fitted (the training job's defaults)."""

    model: str = field(metadata={"help": "Model folder saved by rcl_hf (its ood_guard.safetensors is replaced)."})
    max_samples: Optional[int] = field(default=ModelArguments.__dataclass_fields__["ood_guard_samples"].default, metadata={
        "help": "Training images for the class means and covariance (a seeded sample; the training job's --ood_guard_samples)."})
    false_alarm_rate: float = field(default=DEFAULT_FALSE_ALARM_RATE, metadata={"help": "Share of in-domain images flagged."})
    delta: Optional[float] = field(default=DEFAULT_FALSE_ALARM_DELTA, metadata={
        "help": "... at most false_alarm_rate with probability 1 - delta (None: on average, split-conformal)."})
    seed: int = field(default=0, metadata={"help": "Seed of the samples (the run's --seed gives the run's guard)."})
    batch_size: int = field(default=32, metadata={"help": "Images per forward pass."})


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Fit the guard of ``--model`` on the training and validation splits of the dataset given (the run's
    ``DataArguments``: the same splits as its training) and print what it holds."""
    from ..ood import OODGuard
    from ..ood_fit import fit_ood_guard
    from ..train_data import load_data, run_splits
    from .args import one_line_errors, parse_args

    def go() -> Path:
        args, data_args = parse_args((GuardArguments, DataArguments), list(sys.argv[1:] if argv is None else argv))
        splits = run_splits(load_data(data_args)[0], data_args)
        if "validation" not in splits:
            raise ValueError(f"the dataset has no validation split (it has {list(splits)}) to place the threshold on")
        path = fit_ood_guard(args.model, splits["train"], splits["validation"], false_alarm_rate=args.false_alarm_rate,
                             delta=args.delta, max_samples=args.max_samples, batch_size=args.batch_size, seed=args.seed)
        guard = OODGuard.load(path)
        print(f"{path}: {guard.guarantee()}")
        print(f"(threshold {guard.threshold:.6g}, {guard.meta['validation_flagged']:.2%} of the validation images above "
              f"it; class means and covariance from {guard.meta['n_fit']} training images)")
        return path

    return one_line_errors(go)


if __name__ == "__main__":
    main()
