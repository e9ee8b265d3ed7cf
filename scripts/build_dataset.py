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
(``huggingface_hub.get_token()``), and reports any failure as one line.
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
    perceptual: bool = field(default=False, metadata={"help": "also audit perceptual (dHash) duplicates"})
    official_splits: bool = field(default=True, metadata={"help": "use the dataset's official splits (--no_official_splits to re-split)"})
    fold: Optional[int] = field(default=None, metadata={"help": "BreaKHis Folds.csv fold (1-5) / SICAPv2 Val fold (1-4)"})
    magnification: Optional[int] = field(default=None, metadata={"help": "BreaKHis: 40, 100, 200 or 400"})
    save_to_disk: bool = field(default=True, metadata={"help": "write the save_to_disk folders (--no_save_to_disk to skip)"})
    parquet: bool = field(default=False, metadata={"help": "also export data/<split>-*.parquet"})
    push_to_hub: Optional[str] = field(default=None, metadata={"help": "REPO_ID to push the dataset and its card to"})
    private: bool = field(default=False, metadata={"help": "create the Hub repository as private"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "image-check cache (default ~/.cache/rcl_hf)"})
    num_workers: Optional[int] = field(default=None, metadata={"help": "threads for the image check"})


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _hub_ready() -> Optional[str]:
    """``None`` when a push can be attempted, else the reason it cannot."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        return "cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1)"
    if get_token() is None:
        return "cannot push to the Hub: no Hugging Face token (run `hf auth login` or set HF_TOKEN)"
    return None


def _hub_errors() -> tuple:
    from huggingface_hub import errors

    types: List[type] = [errors.HfHubHTTPError, errors.OfflineModeIsEnabled, errors.LocalTokenNotFoundError, OSError]
    for mod, name in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            types.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _embedded(ds):
    """The split with image bytes embedded (paths alone are useless in a Parquet file)."""
    from datasets.table import embed_table_storage

    return ds.with_format("arrow").map(embed_table_storage, batched=True, desc=f"Encoding {ds.split}").with_format(None)


def push(dsd, card, repo_id: str, private: bool) -> None:
    """Push the splits, then the card merged with the YAML that ``push_to_hub`` wrote."""
    from huggingface_hub import DatasetCard, DatasetCardData

    dsd.push_to_hub(repo_id, private=private)
    try:
        remote = DatasetCard.load(repo_id, repo_type="dataset")
        data = remote.data.to_dict()
    except _hub_errors():
        data = {}
    data.update({k: v for k, v in card.data.to_dict().items() if v is not None})
    merged_card = DatasetCard(f"---\n{DatasetCardData(**data).to_yaml()}\n---\n{card.text}")
    merged_card.push_to_hub(repo_id, repo_type="dataset")


def main(argv: Optional[List[str]] = None) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(BuildDatasetArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.push_to_hub:
        why = _hub_ready()
        if why:
            return _fail(why, 2)

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
    card = build_dataset_card(dsd, repo_id=args.push_to_hub, report=report)
    if args.save_to_disk:
        dsd.save_to_disk(str(out))
        logger.info("saved to %s", out)
    if args.parquet:
        (out / "data").mkdir(exist_ok=True)
        for split, ds in dsd.items():
            target = out / "data" / f"{split}-00000-of-00001.parquet"
            _embedded(ds).to_parquet(str(target))
            logger.info("wrote %s (%d rows)", target, len(ds))
    card.save(str(out / "README.md"))
    severity_for(dsd).to_json(out / "severity.json")
    with open(out / "load_report.json", "w", encoding="utf-8") as fh:
        json.dump(report.to_dict(), fh, indent=1)
    print(report.summary())
    for split, ds in dsd.items():
        print(f"{split}: {len(ds)} images")

    if args.push_to_hub:
        try:
            push(dsd, card, args.push_to_hub, args.private)
        except _hub_errors() as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return _fail(f"push to {args.push_to_hub} failed: {type(err).__name__}: {first}", 3)
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
