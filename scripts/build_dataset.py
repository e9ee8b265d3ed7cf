#!/usr/bin/env python
"""Raw download folder -> ``save_to_disk`` and/or Parquet, with a dataset card; optionally push to the Hub.

Examples::

    python scripts/build_dataset.py --name brain_tumor_mri --data_dir ../shared/data/brain_tumor_mri \\
        --output_dir outputs/datasets/brain_tumor_mri --parquet
    python scripts/build_dataset.py --name isic2018 --data_dir ../shared/data/isic2018_task3 \\
        --drop_cross_split_duplicates --push_to_hub me/isic2018-rcl

Writes into ``output_dir``: the ``save_to_disk`` folders (``dataset_dict.json``,
one folder per split, images embedded), ``data/<split>-00000-of-00001.parquet``
(with ``--parquet``; images embedded, the Hub's Parquet layout), ``README.md``
(the dataset card), ``severity.json`` and ``load_report.json`` (every skipped,
converted or dropped file with its reason, and the duplicate audit).

``--push_to_hub REPO_ID`` checks first for offline mode and a token
(``huggingface_hub.get_token()``), then pushes with :func:`rcl_hf.hub.push_dataset` (the same
card and Parquet layout as ``scripts/push_to_hub.py --kind dataset``), and reports any failure
as one line.
Exit codes: 0 ok, 1 data error, 2 Hub unavailable (offline / no token), 3 push failed.
"""


import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

logger = logging.getLogger("build_dataset")


@dataclass
class BuildDatasetArguments:
    name: str = field(metadata={"help": "brain_tumor_mri, isic2018, breakhis, sicapv2 or synthetic"})
    data_dir: Optional[str] = field(default=None, metadata={"help": "folder of the original download"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "default: outputs/datasets/<name>"})
    seed: int = field(default=0, metadata={"help": "seed of derived splits"})
    val_size: float = field(default=0.15, metadata={"help": "validation fraction when derived"})
    test_size: Optional[float] = field(default=None, metadata={"help": "test fraction when derived (default 0.15)"})
    strict: bool = field(default=False, metadata={"help": "fail on any bad file instead of skipping it"})
    drop_cross_split_duplicates: bool = field(default=False, metadata={"help": "drop copies of training images from validation/test"})
    perceptual: Optional[bool] = field(
        default=None, metadata={"help": "group perceptual (dHash) near-copies; default: the dataset's own (on for brain_tumor_mri)"}
    )
    official_splits: bool = field(default=True, metadata={"help": "use the dataset's official splits (--no_official_splits to re-split)"})
    fold: Optional[int] = field(default=None, metadata={"help": "BreaKHis Folds.csv fold (1-5) / SICAPv2 Val fold (1-4)"})
    magnification: Optional[int] = field(default=None, metadata={"help": "BreaKHis: 40, 100, 200 or 400"})
    save_to_disk: bool = field(default=True, metadata={"help": "write the save_to_disk folders (--no_save_to_disk to skip)"})
    parquet: bool = field(default=False, metadata={"help": "also export data/<split>-*.parquet"})
    push_to_hub: Optional[str] = field(default=None, metadata={"help": "REPO_ID to push the dataset and its card to"})
    private: bool = field(default=False, metadata={"help": "create the Hub repository as private"})
    dry_run_dir: Optional[str] = field(default=None, metadata={"help": "with --push_to_hub: write the folder that would be uploaded here, upload nothing"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "image-check cache (default ~/.cache/rcl_hf)"})
    num_workers: Optional[int] = field(default=None, metadata={"help": "threads for the image check"})


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _hub_ready() -> Optional[str]:
    """``None`` when a push can be attempted, else the reason it cannot (checked before any work, no network)."""
    import huggingface_hub

    from rcl_hf.offline import is_offline

    if is_offline():
        return "cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1)"
    if huggingface_hub.get_token() is None:
        return "cannot push to the Hub: no Hugging Face token (run `hf auth login` or set HF_TOKEN)"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(BuildDatasetArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.push_to_hub and not args.dry_run_dir:
        why = _hub_ready()
        if why:
            return _fail(why, 2)

    from rcl_hf import hub
    from rcl_hf.atomic_io import atomic_write_bytes
    from rcl_hf.data import build_dataset_card, load_dataset, severity_for

    options = {}
    if args.fold is not None:
        options["fold"] = args.fold
    if args.magnification is not None:
        options["magnification"] = args.magnification
    try:
        if args.name == "synthetic":
            dsd, report = load_dataset("synthetic", seed=args.seed, return_report=True, **options)
        else:
            dsd, report = load_dataset(
                args.name,
                args.data_dir,
                seed=args.seed,
                val_size=args.val_size,
                test_size=args.test_size,
                strict=args.strict,
                drop_cross_split_duplicates=args.drop_cross_split_duplicates,
                perceptual=args.perceptual,
                official_splits=args.official_splits,
                cache_dir=args.cache_dir,
                num_workers=args.num_workers,
                return_report=True,
                **options,
            )
    except ValueError as err:
        return _fail(str(err), 1)

    out = Path(args.output_dir or f"outputs/datasets/{args.name}")
    out.mkdir(parents=True, exist_ok=True)
    card = build_dataset_card(dsd, repo_id=args.push_to_hub or f"<owner>/{args.name}", report=report)
    if args.save_to_disk:
        dsd.save_to_disk(str(out))
        logger.info("saved to %s", out)
    if args.parquet:  # the Hub's layout, written by the same code as a push
        info = hub.write_parquet_shards(dsd, out)
        logger.info("wrote %s (%s rows)", out / "data", {s: i.num_examples for s, i in info.splits.items()})
    card.save(str(out / "README.md"))
    severity_for(dsd).to_json(out / "severity.json")
    atomic_write_bytes(out / "load_report.json", json.dumps(report.to_dict(), indent=1).encode("utf-8"))
    print(report.summary())
    for split, ds in dsd.items():
        print(f"{split}: {len(ds)} images")

    if args.push_to_hub:
        try:
            url = hub.push_dataset(dsd, args.push_to_hub, args.dry_run_dir, private=args.private, card=card)
        except (hub.HubUnavailableError, OSError, ValueError) as err:
            return _fail(f"push to {args.push_to_hub} failed: {' '.join(str(err).split())}", 3)
        print(f"dry run: wrote the upload folder to {url}" if args.dry_run_dir else f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
