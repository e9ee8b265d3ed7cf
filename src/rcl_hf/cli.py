"""Console entry points (``rcl-train``, ...); ``scripts/*.py`` are thin wrappers around them."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

__all__ = ["parse_args", "expand_argv", "greater_is_better_for", "train_main", "compare_main", "run_experiments_main"]


def _exit2(message: str) -> "NoReturn":
    """Print ``error: <message>`` as one stderr line and exit with code 2 (argparse's usage-error code)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _one_line(message: str, max_parts: int = 6) -> str:
    """A multi-line message on one line: its lines joined with `` | `` (at most ``max_parts``)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    more = len(lines) - max_parts
    return " | ".join(lines[:max_parts]) + (f" | (+{more} more lines)" if more > 0 else "")


def _config_to_argv(path: str) -> List[str]:
    """Turn a JSON / YAML config into ``--key value`` flags (lists expand, booleans as values)."""
    try:
        with open(path, encoding="utf-8") as fh:
            if path.endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(fh)
            else:
                data = json.load(fh)
    except (OSError, ValueError) as err:  # unreadable, bad JSON
        _exit2(f"cannot read config {path}: {_one_line(err)}")
    except Exception as err:  # yaml.YAMLError
        _exit2(f"cannot parse config {path}: {_one_line(err)}")
    if not isinstance(data, dict):
        _exit2(f"config {path} must hold a mapping of argument names to values, got {type(data).__name__}")
    argv: List[str] = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *[str(v) for v in value]]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def expand_argv(argv: Optional[Sequence[str]] = None) -> List[str]:
    """``argv`` with a first positional ``.json``/``.yaml`` config expanded into flags (config first)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        if not os.path.exists(argv[0]):
            _exit2(f"config file {argv[0]} not found")
        argv = _config_to_argv(argv[0]) + argv[1:]
    return argv


def parse_args(
    dataclass_types: Sequence[type],
    argv: Optional[Sequence[str]] = None,
    defaults: Optional[Dict[str, Any]] = None,
) -> Tuple:
    """``HfArgumentParser`` over ``dataclass_types``; a first positional ``.json``/``.yaml``
    config supplies values that later flags override; ``defaults`` replace the
    dataclasses' own defaults (``parser.set_defaults``). Unknown flags exit with code 2."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(tuple(dataclass_types))
    if defaults:
        parser.set_defaults(**defaults)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=expand_argv(argv), return_remaining_strings=True)
    if remaining:  # one line, not argparse's whole usage block
        _exit2(f"unrecognized arguments: {' '.join(remaining)} (see --help)")
    return tuple(parsed)


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


def _one_line_errors(fn):
    """Run ``fn``; a ``ValueError``/``OSError`` of the user's input exits 2 with one line."""
    try:
        return fn()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except FloatingPointError as err:  # NonFiniteLossError: the run diverged
        print(f"error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None


def train_main(argv: Optional[Sequence[str]] = None) -> dict:
    from transformers import TrainingArguments

    from .train_job import DataArguments, ModelArguments, format_table, multiprocess_cpu_launch, run_training
    from .trainer import RiskArguments

    def go():
        flags = expand_argv(argv)
        defaults = dict(TRAIN_DEFAULTS)
        if multiprocess_cpu_launch():  # accelerate launch --multi_gpu / torchrun without a GPU: gloo DDP
            defaults["use_cpu"] = True
        model_args, data_args, risk_args, training_args = parse_args(
            (ModelArguments, DataArguments, RiskArguments, TrainingArguments), flags, defaults=defaults
        )
        if training_args.metric_for_best_model and not any(
            f.split("=", 1)[0] in ("--greater_is_better", "--greater-is-better") for f in flags
        ):
            training_args.greater_is_better = greater_is_better_for(training_args.metric_for_best_model)
        results = run_training(model_args, data_args, risk_args, training_args)
        if training_args.process_index == 0:
            rows = {f"{split} ({risk_args.loss})": results[split] for split in ("validation", "test") if split in results}
            print("\n" + format_table(rows))
            print(f"\nSaved to {results['output_dir']}")
        return results

    return _one_line_errors(go)


def run_experiments_main(argv: Optional[Sequence[str]] = None) -> None:
    from .experiments.command import main

    main(argv)


def compare_main(argv: Optional[Sequence[str]] = None) -> dict:
    """The main job: CE vs the risk-calibrated loss on the embedded default (no arguments needed)."""
    from .main_job import CompareArguments, run_comparison

    def go():
        (args,) = parse_args((CompareArguments,), argv)
        summary = run_comparison(args)
        print("\n" + summary["header"] + summary["table"])
        print(f"\nRuns, comparison.json/.md and cer_accuracy.png in {args.output_dir}")
        return summary

    return _one_line_errors(go)
