"""The Hugging Face Hub: model cards, pushes with dry runs, and offline-safe access checks.

Three kinds of repository leave this package, each with a dry run (``dry_run_dir``: the exact
folder that would be uploaded, written and checked offline):

* **model** (:func:`push_model`, :mod:`.push`): the checkpoint folder, its metrics, plots and a
  ``README.md`` model card (:func:`build_model_card`, :mod:`.cards`; checks in :mod:`.card_checks`)
  whose ``model-index`` lists accuracy, CER, CMR and expected cost for every evaluated split;
* **dataset** (:func:`push_dataset`, :mod:`.dataset_push`): a ``DatasetDict`` as Parquet shards
  with its dataset card;
* **space** (:func:`push_space`, :mod:`.space_push`): the Gradio demo folder with rcl_hf and the
  served models inside, so that it builds on the Hub on its own.

A real push first calls :func:`check_hub_access`: a missing token, offline mode
(``huggingface_hub.constants.HF_HUB_OFFLINE``, read in :func:`rcl_hf.offline.is_offline` only) or an
unreachable Hub becomes one :class:`HubUnavailableError` line. Tokens are never printed, logged
or written into a card; staged folders are scanned for them before upload. ``scripts/push_to_hub.py``
is :func:`rcl_hf.commands.push.main`. Loading goes the other way: :func:`rcl_hf.inference.load_model` (a folder or a
Hub id through the cache, :mod:`rcl_hf.model_source`); :func:`seed_cache` (:mod:`.cache_seed`, ``rcl-seed-cache``) puts
the models shipped in ``models/`` into that cache under their ids.

Only :mod:`.errors` is imported eagerly; the rest loads on first use. Model loading does not import
this package: its offline errors live in :mod:`rcl_hf.offline`, re-exported here.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..offline import HubUnavailableError, offline_error
from .errors import CardValidationError

#: public name -> submodule that defines it
_EXPORTS = {
    "BASE_TAGS": "cards", "DEFAULT_LICENSE": "cards", "build_model_card": "cards",
    "model_card_template_path": "cards", "usage_snippets": "cards", "write_model_card": "cards",
    "LIBRARY_NAME": "card_checks", "PIPELINE_TAG": "card_checks", "check_repo_id": "card_checks",
    "front_matter": "card_checks", "validate_model_card": "card_checks",
    "MODEL_CARD_METRICS": "run_folder", "collect_results": "run_folder", "list_files": "run_folder", "load_run_info": "run_folder",
    "check_hub_access": "push", "prepare_model_folder": "push", "push_model": "push",
    "prepare_dataset_folder": "dataset_push", "push_dataset": "dataset_push",
    "write_parquet_shards": "dataset_push",
    "SPACE_CONFIG": "space_push", "build_wheel": "space_push", "prepare_space_folder": "space_push",
    "push_space": "space_push", "validate_space_folder": "space_push",
    "SHIPPED_NAMESPACE": "cache_seed", "folder_revision": "cache_seed", "seed_cache": "cache_seed",
    "shipped_models": "cache_seed", "shipped_models_dir": "cache_seed",
}

__all__ = sorted(["CardValidationError", "HubUnavailableError", "offline_error", *_EXPORTS])


_SUBMODULES = ("cache_seed", "card_checks", "cards", "dataset_push", "errors", "push", "run_folder", "space_push")


def __getattr__(name: str) -> Any:
    """Load the submodule that defines ``name`` (or the submodule ``name``) on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return __all__
