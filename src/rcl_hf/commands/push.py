"""``scripts/push_to_hub.py``: push a model, a dataset or the demo Space, or dry-run it (:mod:`rcl_hf.hub`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..hub.cards import DEFAULT_LICENSE
from ..hub.dataset_push import push_dataset
from ..hub.errors import CardValidationError, HubUnavailableError, one_line, redact
from ..hub.push import push_model
from ..hub.run_folder import list_files
from ..hub.space_push import push_space

__all__ = ["PushArguments", "main", "run_push"]


@dataclass
class PushArguments:
    """Arguments of ``scripts/push_to_hub.py`` (``HfArgumentParser``). The token comes from
    ``HF_TOKEN`` or ``hf auth login``, never from the command line."""

    repo_id: str = field(metadata={"help": "Target repository, 'owner/name'."})
    kind: str = field(default="model", metadata={"help": "What to push: model, dataset or space."})
    model_dir: Optional[str] = field(default=None, metadata={"help": "Model / training output folder (kind=model)."})
    dataset_dir: Optional[str] = field(default=None, metadata={"help": "save_to_disk folder of a DatasetDict (kind=dataset)."})
    space_dir: str = field(default="spaces_demo", metadata={"help": "Gradio Space folder (kind=space)."})
    space_models: Optional[List[str]] = field(default=None, metadata={
        "help": "kind=space: the model the Space serves and an optional comparison, each a model folder "
                "(shipped under models/ with its card) or a Hub id."})
    allow_synthetic_models: bool = field(default=False, metadata={
        "help": "kind=space: accept models trained on rcl_hf's synthetic images (test Spaces only)."})
    wheel: Optional[str] = field(default=None, metadata={
        "help": "kind=space: an rcl_hf wheel to ship in the Space (default: built from this checkout)."})
    dry_run_dir: Optional[str] = field(default=None, metadata={"help": "Write the folder that would be uploaded here; upload nothing."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    license: Optional[str] = field(default=None, metadata={"help": f"Hub license id (models default to {DEFAULT_LICENSE})."})
    dataset_repo_id: Optional[str] = field(default=None, metadata={"help": "Hub dataset id for the model card's 'datasets'."})
    base_model: Optional[str] = field(default=None, metadata={"help": "Hub id the model was fine-tuned from."})
    dataset_card: Optional[str] = field(default=None, metadata={"help": "README.md to use as the dataset card (kind=dataset)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --dry_run_dir."})

    def __post_init__(self) -> None:
        if self.kind not in ("model", "dataset", "space"):
            raise ValueError(f"--kind must be model, dataset or space, got {self.kind!r}")


def run_push(args: PushArguments, checks: Optional[List[str]] = None) -> str:
    """Do what ``args`` asks; returns the dry-run folder or the Hub URL. ``checks`` receives one
    line per check a Space push made."""
    if args.kind == "model":
        if not args.model_dir:
            raise ValueError("--kind model needs --model_dir")
        kwargs: Dict[str, Any] = {}
        if args.license:
            kwargs["license"] = args.license
        if args.dataset_repo_id:
            kwargs["datasets"] = args.dataset_repo_id
        if args.base_model:
            kwargs["base_model"] = args.base_model
        return push_model(args.model_dir, args.repo_id, args.dry_run_dir, private=args.private,
                          overwrite=args.overwrite, **kwargs)
    if args.kind == "dataset":
        source = args.dataset_dir or args.model_dir
        if not source:
            raise ValueError("--kind dataset needs --dataset_dir (a DatasetDict saved with save_to_disk)")
        return push_dataset(source, args.repo_id, args.dry_run_dir, private=args.private, card=args.dataset_card,
                            license=args.license, overwrite=args.overwrite)
    return push_space(args.space_dir, args.repo_id, args.dry_run_dir, private=args.private, overwrite=args.overwrite,
                      models=args.space_models or (), wheel=args.wheel,
                      allow_synthetic=args.allow_synthetic_models, checks=checks)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: parse :class:`PushArguments`, push, print the result.

    Returns 0 on success; on a known failure prints ``error: <one line>`` to stderr and returns 2.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PushArguments)
    checks: List[str] = []
    try:
        (args,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
        result = run_push(args, checks)
    except (HubUnavailableError, CardValidationError, ValueError, OSError, RuntimeError) as err:
        print(f"error: {one_line(redact(str(err)))}", file=sys.stderr)
        return 2
    if args.dry_run_dir:
        files = list_files(result)
        what = {"model": "model card metadata and model-index checked against the results",
                "dataset": "dataset card metadata checked; load_dataset(folder) reads it",
                "space": "Space checked"}[args.kind]
        print(f"Dry run: wrote {len(files)} files to {result} ({what}); nothing was uploaded.")
        for line in checks:
            print(f"  checked: {line}")
        for rel in files:
            if not rel.startswith(("rcl_hf/", "rcl_hf-")):
                print(f"  {rel}")
        if any(rel.startswith("rcl_hf/") for rel in files):
            print(f"  rcl_hf/ ({sum(rel.startswith('rcl_hf/') for rel in files)} files of the package)")
    else:
        print(f"Pushed {args.kind} to {result}")
    return 0
