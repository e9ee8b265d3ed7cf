"""Parser plumbing shared by the console commands: ``HfArgumentParser`` over dataclasses, a first positional
``.yaml`` / ``.json`` config whose values later flags override, the flag aliases of transformers'
``run_image_classification.py``, and errors as one stderr line with exit code 2 (argparse's usage-error code).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

__all__ = ["FLAG_ALIASES", "IGNORED_FLAGS", "drop_ignored", "exit2", "expand_argv", "one_line", "one_line_errors",
           "parse_args", "parse_args_explicit", "read_config", "split_config"]


def exit2(message: str) -> "NoReturn":
    """Print ``error: <message>`` as one stderr line and exit with code 2 (argparse's usage-error code)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def one_line(message: str, max_parts: int = 6) -> str:
    """A multi-line message on one line: its lines joined with `` | `` (at most ``max_parts``)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    more = len(lines) - max_parts
    return " | ".join(lines[:max_parts]) + (f" | (+{more} more lines)" if more > 0 else "")


def read_config(path: str) -> Dict[str, Any]:
    """The mapping of argument names to values in a ``.json`` / ``.yaml`` config (exit 2 when unreadable)."""
    if not os.path.exists(path):
        exit2(f"config file {path} not found")
    try:
        with open(path, encoding="utf-8") as fh:
            if path.endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(fh)
            else:
                data = json.load(fh)
    except (OSError, ValueError) as err:  # unreadable, bad JSON
        exit2(f"cannot read config {path}: {one_line(err)}")
    except Exception as err:  # yaml.YAMLError
        exit2(f"cannot parse config {path}: {one_line(err)}")
    if not isinstance(data, dict):
        exit2(f"config {path} must hold a mapping of argument names to values, got {type(data).__name__}")
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
        exit2(f"unknown key(s) in the config: {', '.join(unknown)} (see --help)")
    parser = HfArgumentParser(tuple(dataclass_types))
    parser.set_defaults(**{**(defaults or {}), **config})
    *parsed, remaining = parser.parse_args_into_dataclasses(args=flags, return_remaining_strings=True)
    if remaining:  # one line, not argparse's whole usage block
        exit2(f"unrecognized arguments: {' '.join(remaining)} (see --help)")
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


def drop_ignored(flags: List[str]) -> List[str]:
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


def one_line_errors(fn):
    """Run ``fn``; a ``ValueError``, a missing file or a model that is neither a folder nor in the Hub cache
    (:class:`~rcl_hf.offline.HubUnavailableError`) exits 2 with one line."""
    from ..offline import HubUnavailableError

    try:
        return fn()
    except (ValueError, FileNotFoundError, HubUnavailableError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except FloatingPointError as err:  # NonFiniteLossError: the run diverged
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
