"""``rcl-train`` (``scripts/train.py``): fine-tune an image classifier with a clinical loss.

:func:`train_main` parses the four argument groups (:class:`rcl_hf.train_args.ModelArguments`,
:class:`~rcl_hf.train_args.DataArguments`, :class:`rcl_hf.trainer.RiskArguments`, ``TrainingArguments``)
with this script's defaults (:data:`TRAIN_DEFAULTS`), runs :func:`rcl_hf.train_job.run_training` and prints
the metrics table; :func:`train_help` is the short ``--help``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict, Optional, Sequence

from .args import drop_ignored, one_line_errors, parse_args_explicit

__all__ = ["COMMON_TRAINING_FLAGS", "LOWER_IS_BETTER", "TRAIN_DEFAULTS", "greater_is_better_for", "train_help", "train_main"]


#: ``scripts/train.py`` defaults that differ from ``TrainingArguments``': evaluate (CER
#: metric) and save each epoch, keep the best checkpoint by expected cost, no trackers.
TRAIN_DEFAULTS: Dict[str, Any] = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "expected_cost",
    "report_to": "none",
    "logging_steps": 20,
    "remove_unused_columns": False,
}

#: Metrics where lower is better (``greater_is_better`` is inferred from the name
#: unless given); everything else (accuracy, balanced_accuracy, macro_f1) is higher-better.
LOWER_IS_BETTER = ("loss", "cer", "critical_miss_rate", "expected_cost", "n_critical")


def greater_is_better_for(metric: str) -> bool:
    """Whether a larger value of ``metric`` (``eval_`` / ``bayes_`` prefixes allowed) is better."""
    name = metric[len("eval_"):] if metric.startswith("eval_") else metric
    name = name[len("bayes_"):] if name.startswith("bayes_") else name
    return not (name in LOWER_IS_BETTER or name.endswith("loss"))


#: ``TrainingArguments`` flags shown by the short ``--help`` (``--help_all`` lists every one).
COMMON_TRAINING_FLAGS = ("output_dir", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
                         "per_device_eval_batch_size", "gradient_accumulation_steps", "weight_decay", "seed",
                         "eval_strategy", "save_strategy", "metric_for_best_model", "resume_from_checkpoint",
                         "do_train", "bf16", "use_cpu", "push_to_hub", "hub_model_id")


def train_help(dataclass_types: Sequence[type]) -> str:
    """The short ``--help``: our flags by group, then the common ``TrainingArguments`` flags."""
    import argparse

    from transformers import HfArgumentParser

    *ours, training = dataclass_types
    parts = ["usage: scripts/train.py [CONFIG.yaml] [--flag value ...]",
             "Fine-tune an image classifier with a clinical loss. A first positional .yaml/.json config supplies "
             "values; flags after it override them. Aliases of transformers' run_image_classification.py: "
             "--dataset_name (= --dataset), --model_name_or_path (= --backbone), --train_dir, --validation_dir, "
             "--image_column_name, --label_column_name; --ignore_mismatched_sizes is accepted (always on)."]
    for cls in ours:
        parser = HfArgumentParser(cls)
        parser.usage = argparse.SUPPRESS
        text = parser.format_help()
        body = text.split("options:", 1)[-1].split("\n", 1)[-1]
        body = "\n".join(ln for ln in body.splitlines() if not ln.strip().startswith(("-h, --help", "show this help")))
        parts.append(f"\n{cls.__name__} ({(cls.__doc__ or '').strip().splitlines()[0]}):\n{body.rstrip()}")
    lines = [f"  --{f.name:<30} {' '.join(str(f.metadata.get('help', '')).split())[:100]}"
             for f in dataclasses.fields(training) if f.name in COMMON_TRAINING_FLAGS]
    parts.append(f"\nCommon {training.__name__} flags (defaults of this script differ: evaluate and save each epoch, "
                 "keep the best checkpoint by expected_cost; learning rate and epochs per mode unless given):\n"
                 + "\n".join(lines))
    parts.append("\nAll TrainingArguments flags (~200): scripts/train.py --help_all")
    return "\n".join(parts)


def train_main(argv: Optional[Sequence[str]] = None) -> dict:
    from transformers import TrainingArguments

    from ..train_args import first_run_defaults
    from ..formatting import format_risk_control, format_table
    from ..train_job import DataArguments, ModelArguments, multiprocess_cpu_launch, run_training
    from ..trainer import RiskArguments

    types = (ModelArguments, DataArguments, RiskArguments, TrainingArguments)
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--help_all" in raw:
        from transformers import HfArgumentParser

        HfArgumentParser(types).print_help()
        raise SystemExit(0)
    if "-h" in raw or "--help" in raw:
        print(train_help(types))
        raise SystemExit(0)

    def go():
        defaults = dict(TRAIN_DEFAULTS)
        if multiprocess_cpu_launch():  # accelerate launch --multi_gpu / torchrun without a GPU: gloo DDP
            defaults["use_cpu"] = True
        (model_args, data_args, risk_args, training_args), given = parse_args_explicit(
            types, drop_ignored(raw), defaults=defaults)
        model_over, training_over = first_run_defaults(model_args, data_args, given)
        if model_over or training_over:
            for key, value in model_over.items():
                setattr(model_args, key, value)
            # rebuild TrainingArguments so its __post_init__ sees the new values (e.g. warmup_steps < 1)
            training_args = TrainingArguments(**{**_init_fields(training_args), **training_over})
            import logging

            logging.getLogger(__name__).info("defaults for this mode (flags you did not give): %s",
                                                 ", ".join(f"{k}={v}" for k, v in {**model_over, **training_over}.items()))
        if "output_dir" not in given:
            training_args.output_dir = os.path.join("runs", f"{data_args.dataset.rstrip('/').split('/')[-1]}_{risk_args.loss}")
        if "do_train" in given and not training_args.do_train:  # --do_train false: evaluate a given model only
            model_args.eval_only = True
        if training_args.metric_for_best_model and "greater_is_better" not in given:
            training_args.greater_is_better = greater_is_better_for(training_args.metric_for_best_model)
        results = run_training(model_args, data_args, risk_args, training_args)
        if training_args.process_index == 0:
            rows = {f"{split} ({risk_args.loss})": results[split] for split in ("validation", "test") if split in results}
            print("\n" + format_table(rows))
            if "risk_control" in results:
                print("\n" + format_risk_control(results["risk_control"], results.get("guarantees")))
            print(f"\nSaved to {results['output_dir']}")
        return results

    return one_line_errors(go)


def _init_fields(args: Any) -> Dict[str, Any]:
    """The ``__init__`` fields of a dataclass instance (``TrainingArguments``), as given."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}


if __name__ == "__main__":
    train_main()
