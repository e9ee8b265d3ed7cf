"""Dataset pushes: a ``DatasetDict`` as Parquet shards with its dataset card, with dry runs.

The layout is the one ``DatasetDict.push_to_hub`` produces (``data/<split>-0000i-of-0000n.parquet``
with image bytes embedded, and a ``README.md`` whose YAML carries ``dataset_info`` and
``configs``), so ``datasets.load_dataset(dry_run_dir)`` reads the dry run back.
The card is :func:`rcl_hf.data.build_dataset_card` unless one is given; ``scripts/build_dataset.py``
uses the same card, shard writer and push.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, Union

from .card_checks import check_repo_id, front_matter, with_namespace
from .errors import TOKEN_PATTERN, hub_error, network_error_types
from .push import check_hub_access, endpoint_url, prepare_output_dir, scan_for_tokens

__all__ = ["prepare_dataset_folder", "push_dataset", "write_parquet_shards"]

PathLike = Union[str, "os.PathLike[str]"]
ShardSize = Optional[Union[int, str]]


def as_dataset_dict(dataset: Any) -> Any:
    """A ``DatasetDict`` from a ``DatasetDict``, a ``Dataset`` (one split) or a ``save_to_disk`` folder."""
    import datasets as hf_datasets

    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Dataset folder {path!r} does not exist")
        try:
            dataset = hf_datasets.load_from_disk(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{path!r} is not a dataset saved with save_to_disk: {' '.join(str(err).split())}") from None
    if isinstance(dataset, hf_datasets.Dataset):
        dataset = hf_datasets.DatasetDict({str(dataset.split or "train"): dataset})
    if not isinstance(dataset, hf_datasets.DatasetDict):
        raise TypeError(f"push_dataset needs a DatasetDict, a Dataset or a save_to_disk folder, got {type(dataset).__name__}")
    if not len(dataset):
        raise ValueError("The DatasetDict has no splits")
    for split in dataset:
        if not re.match(r"^\w+(\.\w+)*$", split):
            raise ValueError(f"Split name {split!r} is not valid on the Hub (letters, digits, '_' and '.')")
    return dataset


def _push_card(dsd: Any, repo_id: str, *, license: Optional[str], card: Any, report: Any):
    """The dataset card of a push: ``card`` when given (a ``DatasetCard``, README text, or a path to a
    README), else :func:`rcl_hf.data.build_dataset_card` (``report``: the load report of data loaded
    through :func:`rcl_hf.data.load_dataset`; ``license`` set on the card it builds)."""
    from huggingface_hub import DatasetCard

    from ..data.card import build_dataset_card

    if card is not None:
        if isinstance(card, os.PathLike) or (isinstance(card, str) and "\n" not in card and os.path.isfile(card)):
            card = Path(card).read_text(encoding="utf-8")
        return card if isinstance(card, DatasetCard) else DatasetCard(str(card))
    return build_dataset_card(dsd, repo_id=repo_id, report=report, license=license)


def _num_shards(ds: Any, max_shard_size: ShardSize) -> int:
    from datasets import config as ds_config
    from datasets.utils.py_utils import convert_file_size_to_int

    estimate = getattr(ds, "_estimate_nbytes", None)
    nbytes = estimate() if callable(estimate) else ds.data.nbytes
    return int(nbytes / convert_file_size_to_int(max_shard_size or ds_config.MAX_SHARD_SIZE)) + 1


def write_parquet_shards(dataset: Any, out_dir: PathLike, max_shard_size: ShardSize = None) -> Any:
    """Write ``out_dir/data/<split>-<i:05d>-of-<n:05d>.parquet`` as ``push_to_hub`` would, with external
    image files embedded as bytes (``embed_table_storage``); return the ``DatasetInfo`` (splits, sizes)."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.table import embed_table_storage

    dsd = as_dataset_dict(dataset)
    data_dir = Path(out_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    first = next(iter(dsd.values()))
    info = DatasetInfo(config_name="default", features=first.features, splits=SplitDict(), download_size=0, dataset_size=0)
    for split, ds in dsd.items():
        if ds.features != first.features:
            raise ValueError(f"Split {split!r} has other features than the first split; all splits must share them")
        n = _num_shards(ds, max_shard_size)
        for i in range(n):
            shard = ds.shard(num_shards=n, index=i, contiguous=True).with_format("arrow")
            shard = shard.map(embed_table_storage, batched=True, keep_in_memory=True)
            path = data_dir / f"{split}-{i:05d}-of-{n:05d}.parquet"
            shard.to_parquet(str(path))
            info.download_size += path.stat().st_size
        info.splits.add(SplitInfo(name=split, num_bytes=ds.data.nbytes, num_examples=len(ds)))
        info.dataset_size += ds.data.nbytes
    info.size_in_bytes = info.download_size + info.dataset_size
    return info


def prepare_dataset_folder(dataset: Any, out_dir: PathLike, repo_id: str, *, card: Any = None,
                           license: Optional[str] = None, max_shard_size: ShardSize = None,
                           overwrite: bool = False, report: Any = None) -> Path:
    """Write the repository ``DatasetDict.push_to_hub`` would produce, into ``out_dir``.

    Parquet shards (:func:`write_parquet_shards`) and ``README.md`` = the dataset card (``card``, else
    :func:`rcl_hf.data.build_dataset_card`) whose YAML carries ``dataset_info`` (features, splits) and
    ``configs`` (the data file patterns), so ``load_dataset(out_dir)`` reads it back with its
    ``ClassLabel`` names.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    check_repo_id(repo_id)
    dsd = as_dataset_dict(dataset)
    dataset_card = _push_card(dsd, repo_id, license=license, card=card, report=report)
    out = prepare_output_dir(out_dir, overwrite)
    info = write_parquet_shards(dsd, out, max_shard_size)
    card_data = dataset_card.data
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    MetadataConfigs({"default": {"data_files": [{"split": s, "path": f"data/{s}-*"} for s in dsd]}}).to_dataset_card_data(card_data)
    dataset_card.data = card_data
    text = str(dataset_card)
    front_matter(text)
    (out / "README.md").write_text(text, encoding="utf-8")
    scan_for_tokens(out, None)
    return out


def push_dataset(
    dataset: Any,
    repo_id: str,
    dry_run_dir: Optional[PathLike] = None,
    token: Optional[str] = None,
    private: bool = False,
    *,
    card: Any = None,
    license: Optional[str] = None,
    max_shard_size: ShardSize = None,
    commit_message: str = "Upload rcl_hf dataset",
    overwrite: bool = False,
    report: Any = None,
) -> str:
    """Upload a :class:`datasets.DatasetDict` (or a ``save_to_disk`` folder) with its dataset card.

    The real push creates the dataset repository, uploads the card, then calls
    ``DatasetDict.push_to_hub`` with the shard counts of the dry run, which adds the Parquet
    shards and merges ``dataset_info`` / ``configs`` into the card: the result is the folder
    :func:`prepare_dataset_folder` writes for ``dry_run_dir``.

    Args:
        dataset: a ``DatasetDict``, a ``Dataset`` (pushed as its split, default ``train``) or a folder.
        repo_id: ``owner/name`` of the dataset repository.
        dry_run_dir: write the upload folder there and upload nothing (works offline).
        token, private: as for :func:`~rcl_hf.hub.push_model`.
        card: a ``DatasetCard``, README text or path (default: :func:`rcl_hf.data.build_dataset_card`).
        license: Hub license id for a generated card.
        max_shard_size: Parquet shard size (default: datasets' 500MB).
        report: the ``LoadReport`` of :func:`rcl_hf.data.load_dataset`, for the card's skipped files.

    Returns:
        The dry-run folder, or the URL of the dataset commit.
    """
    if dry_run_dir is not None:
        return str(prepare_dataset_folder(dataset, dry_run_dir, repo_id, card=card, license=license,
                                          max_shard_size=max_shard_size, overwrite=overwrite, report=report))
    from huggingface_hub import HfApi

    with_namespace(repo_id, "user")
    dsd = as_dataset_dict(dataset)
    user, token = check_hub_access(token)
    repo_id = with_namespace(repo_id, user)
    text = str(_push_card(dsd, repo_id, license=license, card=card, report=report))
    if token in text or TOKEN_PATTERN.search(text):
        raise ValueError("Refusing to upload a dataset card that contains a Hugging Face access token")
    endpoint = endpoint_url()
    api = HfApi(endpoint=endpoint, token=token, library_name="rcl_hf")
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_file(path_or_fileobj=text.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                        repo_type="dataset", commit_message=f"{commit_message} (card)")
        info = dsd.push_to_hub(repo_id, token=token, private=private, commit_message=commit_message,
                               num_shards={s: _num_shards(ds, max_shard_size) for s, ds in dsd.items()})
    except network_error_types() as err:
        raise hub_error(err, f"upload to the dataset repository {repo_id!r}", endpoint, token) from None
    return str(getattr(info, "commit_url", None) or f"{endpoint}/datasets/{repo_id}")
