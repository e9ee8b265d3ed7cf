"""Seed the local Hugging Face cache with the models shipped in this repository (``models/<name>/``).

After :func:`seed_cache` (or ``rcl-seed-cache``), ``rcl_hf.load_model("rcl-hf/<name>")``,
``pipeline("risk-aware-image-classification", model="rcl-hf/<name>")`` and the Space load the shipped model by its
Hub id, with ``HF_HUB_OFFLINE=1``, exactly as a user who downloaded it from the Hub (``hf download rcl-hf/<name>``)
does: the same line works for both.

Why hand-written: ``huggingface_hub`` fills its cache only from a Hub download and has no public call to add local
files to it. This module writes the documented cache layout
(https://huggingface.co/docs/huggingface_hub/guides/manage-cache) and nothing else: ``blobs/<hash>`` (the git blob
SHA-1 of a regular file, the SHA-256 of a file the Hub stores in LFS, as the Hub's ETags are), ``snapshots/<commit>/``
with relative symlinks to the blobs (copies where the file system has no symlinks), and ``refs/main``. The commit is
a SHA-1 over the folder's paths and blob hashes, so seeding the same folder twice gives the same revision and a
changed folder a new one; loading reads it back through ``huggingface_hub.snapshot_download``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..atomic_io import atomic_write_text
from .card_checks import check_repo_id
from .run_folder import check_model_source, list_files

__all__ = ["SHIPPED_NAMESPACE", "shipped_models_dir", "shipped_models", "seed_cache", "folder_revision"]

#: The Hub namespace of the models shipped in ``models/``: ``models/<name>`` is ``rcl-hf/<name>``.
SHIPPED_NAMESPACE = "rcl-hf"
#: Files the Hub keeps in LFS (the Hub's default ``.gitattributes`` patterns that our folders use).
_LFS_SUFFIXES = (".safetensors", ".bin", ".npz", ".npy", ".pt", ".pth", ".onnx", ".png", ".jpg", ".jpeg")

PathLike = Union[str, "os.PathLike[str]"]


def shipped_models_dir() -> Path:
    """``models/`` of the repository checkout this package runs from (an editable install)."""
    return Path(__file__).resolve().parents[3] / "models"


def shipped_models(source: Optional[PathLike] = None, namespace: str = SHIPPED_NAMESPACE) -> Dict[str, Path]:
    """``{hub id: folder}`` of the model folders under ``source`` (default :func:`shipped_models_dir`)."""
    root = Path(source) if source is not None else shipped_models_dir()
    if not root.is_dir():
        raise FileNotFoundError(
            f"No shipped models at {str(root)!r}: seed from a checkout of the rcl_hf repository (its models/ folder) "
            "or pass the folder that holds the model folders.")
    found = {f"{namespace}/{p.name}": p for p in sorted(root.iterdir()) if (p / "config.json").is_file()}
    if not found:
        raise FileNotFoundError(f"{str(root)!r} holds no model folder (a folder with config.json)")
    return found


def _blob_hash(path: Path) -> str:
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    if path.suffix.lower() in _LFS_SUFFIXES:
        with open(path, "rb") as f:
            return sha_fileobj(f).hex()
    return git_hash(path.read_bytes())


def _blob_hashes(folder: Path) -> Dict[str, str]:
    """Each file's blob hash, by sorted relative path."""
    return {rel: _blob_hash(folder / rel) for rel in list_files(folder)}


def _commit_hash(hashes: Dict[str, str]) -> str:
    return hashlib.sha1("".join(f"{rel}\0{blob}\n" for rel, blob in hashes.items()).encode()).hexdigest()


def folder_revision(folder: PathLike) -> str:
    """The commit hash :func:`seed_cache` gives ``folder``: SHA-1 over its sorted relative paths and blob hashes."""
    return _commit_hash(_blob_hashes(Path(folder)))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        os.symlink(os.path.relpath(target, link.parent), link)
    except OSError:  # no symlinks (some Windows set-ups): huggingface_hub then copies too
        shutil.copy2(target, link)


def _seed_one(repo_id: str, folder: Path, cache: Path) -> str:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    hashes = _blob_hashes(folder)
    commit = _commit_hash(hashes)
    snapshot = repo / "snapshots" / commit
    for rel, blob_hash in hashes.items():
        blob = repo / "blobs" / blob_hash
        if not blob.is_file():
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_name(blob.name + ".incomplete")
            shutil.copyfile(folder / rel, tmp)
            os.replace(tmp, blob)
        _link(blob, snapshot / rel)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(repo / "refs" / "main", commit)  # last: a half-seeded snapshot is never "main"
    return commit


def seed_cache(source: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None,
               namespace: str = SHIPPED_NAMESPACE) -> List[str]:
    """Put each model folder under ``source`` into the Hugging Face cache as ``<namespace>/<folder name>`` at
    revision ``main``; returns the ids seeded.

    Args:
        source: a folder of model folders (default: the repository's ``models/``).
        cache_dir: the cache (default ``huggingface_hub.constants.HF_HUB_CACHE``: ``$HF_HUB_CACHE``, else
            ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).
        namespace: the Hub owner of the ids.

    Raises:
        FileNotFoundError: ``source`` is missing or holds no model folder; a folder is not a loadable model.
    """
    from huggingface_hub import constants

    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    seeded = []
    for repo_id, folder in shipped_models(source, namespace).items():
        check_repo_id(repo_id)
        check_model_source(folder)
        _seed_one(repo_id, folder, cache)
        seeded.append(repo_id)
    return seeded
