"""Where a model lives: a local folder, or a Hub id resolved to a snapshot folder of the Hugging Face cache.

Every loader of rcl_hf (:func:`rcl_hf.load_model`, :meth:`rcl_hf.DecisionLayer.from_pretrained`, the Space) calls
:func:`resolve_model_folder` first and then reads one folder, so the weights, the processor, the decision layer
(``risk_calibration.json``, ``ood_guard.safetensors``) and the Space's per-risk calibrations
(``risk_calibrations/``) always come from the same snapshot.

A Hub id resolves the way ``huggingface_hub`` resolves it (``snapshot_download``: the cache layout
``models--owner--name/{blobs,refs,snapshots}``, ``HF_HOME`` / ``HF_HUB_CACHE``, revisions, ``HF_HUB_OFFLINE``),
with one choice of ours: a snapshot already in the cache is used without asking the Hub for a newer one (as
``local_files_only=True`` does), so a model seeded from this repository (``rcl-seed-cache``) loads the same with
or without a network; ``hf download ID`` refreshes it. Only an id missing from the cache is downloaded, and only
when not offline.
"""

from __future__ import annotations

import os
from typing import List, Optional

from .offline import HubUnavailableError, is_offline, offline_error

__all__ = ["is_hub_id", "resolve_model_folder", "cached_revisions"]


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not an existing path (``./x``, ``/x``, ``~/x`` and ``a/b/c`` are paths)."""
    name = os.fspath(name)
    return (not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/", "~", "\\"))
            and all(part.strip() for part in name.split("/")))


def cached_revisions(repo_id: str, cache_dir: Optional[str] = None) -> List[str]:
    """The revisions of ``repo_id`` in the Hugging Face cache: branch / tag names under ``refs/`` and snapshot
    commit hashes (empty when the model is not cached)."""
    from huggingface_hub import constants

    root = os.path.join(cache_dir or constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    refs = []
    for base, _dirs, files in os.walk(os.path.join(root, "refs")):
        refs += [os.path.relpath(os.path.join(base, f), os.path.join(root, "refs")).replace(os.sep, "/") for f in files]
    snaps = sorted(os.listdir(os.path.join(root, "snapshots"))) if os.path.isdir(os.path.join(root, "snapshots")) else []
    return sorted(refs) + snaps


def resolve_model_folder(name_or_path: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> str:
    """A local folder holding the model ``name_or_path``: the folder itself, or the cached snapshot of a Hub id.

    Args:
        name_or_path: a model folder, or a Hub id ``owner/name``.
        revision: a branch, tag or commit of a Hub id (default ``main``); ignored for a folder.
        cache_dir: the Hugging Face cache (default ``HF_HUB_CACHE``).

    Raises:
        HubUnavailableError: one line: not a folder and not an id; an id not in the cache while offline or with the
            Hub unreachable; a revision that neither the cache nor the Hub has (the cached ones are listed).
    """
    name = os.fspath(name_or_path)
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if not is_hub_id(name):
        raise offline_error(name, FileNotFoundError(name))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RevisionNotFoundError

    try:
        return snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError as err:
        cached = cached_revisions(name, cache_dir)
        if cached and revision is not None and is_offline():
            raise HubUnavailableError(
                f"Revision {revision!r} of {name!r} is not in the local Hugging Face cache (it has: "
                f"{', '.join(cached)}) and HF_HUB_OFFLINE is set.") from None
        if is_offline():
            raise offline_error(name, err) from None
    try:
        return snapshot_download(name, revision=revision, cache_dir=cache_dir)
    except RevisionNotFoundError:
        cached = cached_revisions(name, cache_dir)
        have = f" (the local cache has: {', '.join(cached)})" if cached else ""
        raise HubUnavailableError(f"{name!r} has no revision {revision!r}{have}.") from None
    except (OSError, ValueError) as err:  # HTTP errors and LocalEntryNotFoundError derive from OSError
        raise offline_error(name, err) from None
