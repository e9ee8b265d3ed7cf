"""The main job: cross-entropy vs the risk-calibrated loss, same seed and budget.

``python scripts/main_job.py`` (no arguments) trains both on the embedded synthetic
dataset and prints one table: accuracy, balanced accuracy, CER, CMR and expected
cost on the test split, for the argmax decision of each model and for the
Bayes-risk decision applied to each (the post-hoc alternative, shown for honesty).
Everything lands in ``output_dir``: one sub-folder per run, ``comparison.json``,
``comparison.md`` and ``cer_accuracy.png``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional

from .train_job import DataArguments, ModelArguments, default_training_args, format_table, run_training
from .trainer import RiskArguments

__all__ = ["CompareArguments", "run_comparison"]


@dataclass
class CompareArguments:
    """The main job's knobs; every run gets the same seed, epochs and batch size."""

    output_dir: str = field(default="runs/main", metadata={"help": "Where runs and the comparison go."})
    losses: List[str] = field(default_factory=lambda: ["ce", "rcl_log"], metadata={"help": "Losses to compare."})
    lam: float = field(default=1.0, metadata={"help": "λ of the risk-calibrated losses."})
    backbone: str = field(default="resnet18", metadata={"help": "Backbone (see scripts/train.py --help)."})
    pretrained: Optional[str] = field(default=None, metadata={"help": "Offline weights, e.g. efficientnet-lite0-package."})
    freeze_backbone: bool = field(default=False, metadata={"help": "Train only the head on cached embeddings."})
    dataset: str = field(default="synthetic", metadata={"help": "Dataset name, save_to_disk folder or Hub id."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Raw data folder for a registered loader."})
    image_size: Optional[int] = field(default=None, metadata={"help": "Input size (default 32 synthetic, 224 otherwise)."})
    epochs: float = field(default=5.0, metadata={"help": "Training epochs of each run."})
    batch_size: int = field(default=64, metadata={"help": "Per-device batch size."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (AdamW, linear decay)."})
    seed: int = field(default=0, metadata={"help": "Seed of every run (weights, order, augmentation)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate training data."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate evaluation data."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide progress bars."})


def run_comparison(args: CompareArguments) -> Dict[str, Any]:
    """Train one model per loss; return ``{"rows": {name: test metrics}, "table": markdown, ...}``."""
    t0 = time.time()
    os.makedirs(args.output_dir, exist_ok=True)
    rows: Dict[str, Dict[str, float]] = {}
    runs: Dict[str, Any] = {}
    results: Dict[str, Any] = {}
    for loss in args.losses:
        run_dir = os.path.join(args.output_dir, loss)
        training_args = default_training_args(
            run_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=max(args.batch_size, 64), learning_rate=args.learning_rate, weight_decay=0.05,
            warmup_steps=0.05, seed=args.seed, disable_tqdm=args.disable_tqdm, logging_steps=50,
            save_total_limit=1,
            save_only_model=True,  # the best epoch is all a comparison needs (no optimizer state to resume)
        )
        result = run_training(
            ModelArguments(backbone=args.backbone, pretrained=args.pretrained, image_size=args.image_size,
                           freeze_backbone=args.freeze_backbone),
            DataArguments(dataset=args.dataset, data_dir=args.data_dir, split_seed=args.seed,
                          max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples),
            RiskArguments(loss=loss, lam=args.lam),
            training_args,
        )
        results[loss] = result
        test = result.get("test") or result.get("validation")
        runs[loss] = {k: v for k, v in test.items() if not isinstance(v, (dict, list))}
        rows[f"{loss} (argmax)"] = test
        rows[f"{loss} + Bayes-risk rule"] = {k[len("bayes_"):]: v for k, v in test.items() if k.startswith("bayes_")}
    table = format_table(rows)
    elapsed = time.time() - t0
    summary = {"arguments": vars(args), "rows": {k: {m: v for m, v in r.items() if not isinstance(v, (dict, list))}
                                                 for k, r in rows.items()},
               "wall_time_s": round(elapsed, 1)}
    with open(os.path.join(args.output_dir, "comparison.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    backbone = args.backbone + (f" ({args.pretrained} weights)" if args.pretrained else "") + (
        ", frozen (head trained on cached embeddings)" if args.freeze_backbone else "")
    split = "Test" if all("test" in r for r in results.values()) else "Validation"
    sizes = next(iter(results.values())).get("split_sizes", {})
    header = (f"{split} split, {args.dataset} ({', '.join(f'{k} {v}' for k, v in sizes.items())}), backbone {backbone}, "
              f"seed {args.seed}, {args.epochs:g} epochs each, λ={args.lam:g}; rates in percent. "
              f"Wall time {elapsed:.0f} s.\n\n")
    with open(os.path.join(args.output_dir, "comparison.md"), "w", encoding="utf-8") as fh:
        fh.write(header + table + "\n")
    _plot(rows, os.path.join(args.output_dir, "cer_accuracy.png"))
    summary["table"] = table
    summary["header"] = header
    return summary


def _plot(rows: Dict[str, Dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, m in rows.items():
        marker = "o" if "argmax" in name else "s"
        ax.scatter(100 * m["accuracy"], 100 * m["cer"], s=60, marker=marker, label=name)
    ax.set_xlabel("accuracy (%)  → better")
    ax.set_ylabel("critical error rate (%)  ↓ better")
    ax.set_title("CER vs accuracy (test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
