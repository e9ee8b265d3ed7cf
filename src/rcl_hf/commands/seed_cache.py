"""``rcl-seed-cache``: put the models shipped in this repository into the local Hugging Face cache.

    rcl-seed-cache                      # models/<name>/ -> rcl-hf/<name> in $HF_HUB_CACHE (default ~/.cache/huggingface/hub)
    rcl-seed-cache --source DIR --cache_dir DIR --namespace OWNER

Afterwards ``rcl_hf.load_model("rcl-hf/brain-tumor-mri-efficientnet-lite0")`` works with ``HF_HUB_OFFLINE=1``, as
after ``hf download`` of the same id (:func:`rcl_hf.hub.seed_cache`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from ..hub.cache_seed import SHIPPED_NAMESPACE, seed_cache

__all__ = ["SeedArguments", "main", "cli"]


@dataclass
class SeedArguments:
    """What to seed, and where."""

    source: Optional[str] = field(default=None, metadata={
        "help": "Folder of model folders (default: the repository's models/)."})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "The Hugging Face cache (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."})
    namespace: str = field(default=SHIPPED_NAMESPACE, metadata={"help": "Hub owner of the ids (models/<name> -> OWNER/<name>)."})


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Seed the cache; prints one line per id, or one error line (exit status 2)."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(SeedArguments).parse_args_into_dataclasses(args=argv)
    try:
        ids = seed_cache(args.source, args.cache_dir, args.namespace)
    except (FileNotFoundError, ValueError) as err:
        print(f"rcl-seed-cache: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for repo_id in ids:
        print(f"seeded {repo_id}")
    return ids


def cli() -> None:
    """The ``rcl-seed-cache`` console script: :func:`main`, exit status 0 (a console script's return value is its
    exit status, so the list of ids is not returned)."""
    main()


if __name__ == "__main__":
    cli()
