"""Console entry points (``rcl-train``, ...); ``scripts/*.py`` are thin wrappers around them."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

__all__ = ["parse_args", "parse_args_explicit", "read_config", "expand_argv", "greater_is_better_for", "train_main"]


def _exit2(message: str) -> "NoReturn":
    """Print ``error: <message>`` as one stderr line and exit with code 2 (argparse's usage-error code)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _one_line(message: str, max_parts: int = 6) -> str:
    """A multi-line message on one line: its lines joined with `` | `` (at most ``max_parts``)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    more = len(lines) - max_parts
    return " | ".join(lines[:max_parts]) + (f" | (+{more} more lines)" if more > 0 else "")


def read_config(path: str) -> Dict[str, Any]:
    """The mapping of argument names to values in a ``.json`` / ``.yaml`` config (exit 2 when unreadable)."""
    if not os.path.exists(path):
        _exit2(f"config file {path} not found")
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
    return {FLAG_ALIASES.get(k, k): v for k, v in data.items() if v is not None}


def split_config(argv: Optional[Sequence[str]] = None) -> Tuple[Dict[str, Any], List[str]]:
    """``(config values, remaining flags)``: a first positional ``.json``/``.yaml`` argument is a config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        return read_config(argv[0]), argv[1:]
    return {}, argv


def expand_argv(argv: Optional[Sequence[str]] = None) -> List[str]:
    """``argv`` with a first positional config expanded into ``--key value`` flags (config first; later flags win)."""
    config, rest = split_config(argv)
    flags: List[str] = []
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            flags += [f"--{key}", *[str(v) for v in value]]
        else:
            flags += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags + rest


def _flag_names(flags: Sequence[str]) -> List[str]:
    return [f[2:].split("=", 1)[0].replace("-", "_") for f in flags if f.startswith("--")]


def parse_args_explicit(
    dataclass_types: Sequence[type],
    argv: Optional[Sequence[str]] = None,
    defaults: Optional[Dict[str, Any]] = None,
) -> Tuple[Tuple, set]:
    """:func:`parse_args`, plus the set of argument names the user gave (config keys and flags).

    The config's values become the parser's defaults (``set_defaults``; argparse converts
    string values with each field's type), so every later flag overrides them.
    ``HfArgumentParser.parse_yaml_file`` / ``parse_dict`` are not used: they build the
    dataclasses from the file alone and cannot merge command-line flags.
    """
    from transformers import HfArgumentParser

    config, flags = split_config(argv)
    flags = [_alias(f) for f in flags]
    names = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    unknown = sorted(set(config) - names)
    if unknown:
        _exit2(f"unknown key(s) in the config: {', '.join(unknown)} (see --help)")
    parser = HfArgumentParser(tuple(dataclass_types))
    parser.set_defaults(**{**(defaults or {}), **config})
    *parsed, remaining = parser.parse_args_into_dataclasses(args=flags, return_remaining_strings=True)
    if remaining:  # one line, not argparse's whole usage block
        _exit2(f"unrecognized arguments: {' '.join(remaining)} (see --help)")
    given = set(config) | {n[3:] if n.startswith("no_") and n[3:] in names else n for n in _flag_names(flags)}
    return tuple(parsed), given


def parse_args(
    dataclass_types: Sequence[type],
    argv: Optional[Sequence[str]] = None,
    defaults: Optional[Dict[str, Any]] = None,
) -> Tuple:
    """``HfArgumentParser`` over ``dataclass_types``; a first positional ``.json``/``.yaml``
    config supplies values that later flags override; ``defaults`` replace the
    dataclasses' own defaults (``parser.set_defaults``). Unknown flags exit with code 2."""
    return parse_args_explicit(dataclass_types, argv, defaults)[0]


#: Flags of transformers' ``examples/pytorch/image-classification/run_image_classification.py``
#: and ours: ``--train_dir``, ``--validation_dir``, ``--image_column_name``, ``--label_column_name``
#: are ``DataArguments`` fields under the same names.
FLAG_ALIASES: Dict[str, str] = {"dataset_name": "dataset", "model_name_or_path": "backbone"}
#: Flags accepted and ignored, with why (one line on stderr).
IGNORED_FLAGS: Dict[str, str] = {
    "ignore_mismatched_sizes": "always on here: the classification head is rebuilt for the dataset's labels",
}


def _alias(flag: str) -> str:
    if not flag.startswith("--"):
        return flag
    name, eq, value = flag[2:].partition("=")
    key = name.replace("-", "_")
    return f"--{FLAG_ALIASES[key]}{eq}{value}" if key in FLAG_ALIASES else flag


def _drop_ignored(flags: List[str]) -> List[str]:
    out: List[str] = []
    skip_value = False
    for flag in flags:
        if skip_value:
            skip_value = False
            if flag.lower() in ("true", "false", "1", "0", "yes", "no"):
                continue
        name = flag[2:].split("=", 1)[0].replace("-", "_") if flag.startswith("--") else None
        if name in IGNORED_FLAGS:
            print(f"note: --{name} {IGNORED_FLAGS[name]}; flag ignored", file=sys.stderr)
            skip_value = "=" not in flag
            continue
        out.append(flag)
    return out


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
    """Run ``fn``; a ``ValueError``, a missing file or a model that is neither a folder nor in the Hub cache
    (:class:`~rcl_hf.offline.HubUnavailableError`) exits 2 with one line."""
    from .offline import HubUnavailableError

    try:
        return fn()
    except (ValueError, FileNotFoundError, HubUnavailableError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except FloatingPointError as err:  # NonFiniteLossError: the run diverged
        print(f"error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None


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

    from .train_args import first_run_defaults
    from .formatting import format_risk_control, format_table
    from .train_job import DataArguments, ModelArguments, multiprocess_cpu_launch, run_training
    from .trainer import RiskArguments

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
            types, _drop_ignored(raw), defaults=defaults)
        model_over, training_over = first_run_defaults(model_args, data_args, given)
        if model_over or training_over:
            for key, value in model_over.items():
                setattr(model_args, key, value)
            # rebuild TrainingArguments so its __post_init__ sees the new values (e.g. warmup_steps < 1)
            training_args = TrainingArguments(**{**_init_fields(training_args), **training_over})
            import logging

            logging.getLogger("rcl_hf.cli").info("defaults for this mode (flags you did not give): %s",
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
                print("\n" + format_risk_control(results["risk_control"]))
            print(f"\nSaved to {results['output_dir']}")
        return results

    return _one_line_errors(go)


def _init_fields(args: Any) -> Dict[str, Any]:
    """The ``__init__`` fields of a dataclass instance (``TrainingArguments``), as given."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
