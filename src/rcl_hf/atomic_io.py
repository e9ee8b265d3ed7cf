"""Atomic file I/O: a reader sees the old file (or folder) or the new one, never a prefix.

A run on a shared machine can be killed at any instant (``SIGKILL``, OOM killer,
pre-emption, a full disk).  Everything the library writes goes through here:

* **A single file is replaced whole** (:func:`atomic_write_bytes`,
  :func:`atomic_write_text`, :func:`atomic_write_json`): it is written into a
  temporary file in the same folder, flushed to disk (``fsync``) and renamed over
  the target with ``os.replace``; on any error the old content stays.
* **A folder appears whole or not at all.**  Every file is written into a hidden
  staging folder next to it (``.tmp-<name>``), ``fsync``-ed, and the folder is then
  renamed into place in one ``rename(2)`` (atomic within one file system, POSIX).
  A kill during the save leaves only a staging folder, which nothing reads and
  the next save removes (:func:`staging_dir`, :func:`commit_dir`,
  :func:`remove_stale_staging`); caches of deterministic content are published
  once by the first writer (:func:`publish_new_dir`).
* **A model folder is updated file by file** (:func:`atomic_replace_files`): each
  file is replaced with ``os.replace``, weights last but one and ``config.json``
  last, so a reader that finds the new ``config.json`` also finds the new weights.

Checkpoint integrity (which folders are complete enough to resume from) is
:mod:`rcl_hf.checkpoints`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable, List, Tuple, Union

logger = logging.getLogger(__name__)

__all__ = [
    "STAGING_PREFIX",
    "WEIGHT_FILES",
    "atomic_replace_files",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "commit_dir",
    "fsync_tree",
    "publish_new_dir",
    "remove_stale_staging",
    "staging_dir",
]

PathLike = Union[str, os.PathLike]

#: Prefix of staging folders; hidden, and never matched by ``checkpoint-*`` globs.
STAGING_PREFIX = ".tmp-"
#: File names of model weights (moved last but one by :func:`atomic_replace_files`).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
                "adapter_model.safetensors", "adapter_model.bin")
_SHARD_RE = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")


# ----------------------------------------------------------------------------- durable writes
def _fsync_path(path: PathLike, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (tmpfs, network mounts) refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(root: PathLike) -> None:
    """``fsync`` every file and folder under ``root`` (so a rename after it publishes durable data)."""
    for dirpath, _dirnames, filenames in os.walk(os.fspath(root)):
        for name in filenames:
            _fsync_path(os.path.join(dirpath, name))
        _fsync_path(dirpath, directory=True)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, ``fsync``, ``os.replace``.

    On any error the temporary file is removed and ``path`` keeps its old content.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=STAGING_PREFIX + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_path(folder, directory=True)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, data: Any, indent: int = 2) -> None:
    """:func:`atomic_write_bytes` of ``json.dumps(data)`` (NumPy scalars through ``float``)."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=float))


def publish_new_dir(final: PathLike, write: Callable[[str], Any]) -> bool:
    """Create the folder ``final`` once, atomically: ``write(tmp)`` fills a temporary sibling, which is
    fsynced and renamed into place.  If another process published ``final`` first, its copy wins and
    this one is discarded (caches of deterministic content).  Returns whether this call published it."""
    final = os.fspath(final)
    tmp = f"{final}.tmp{os.getpid()}"
    try:
        write(tmp)
        fsync_tree(tmp)
        if os.path.exists(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        os.replace(tmp, final)
        return True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def staging_dir(final: PathLike) -> str:
    """The hidden staging folder for ``final`` (``parent/.tmp-<name>``), created empty.

    A stale staging folder left by a killed save is removed first.
    """
    final = os.path.abspath(os.fspath(final))
    staging = os.path.join(os.path.dirname(final), STAGING_PREFIX + os.path.basename(final))
    if os.path.lexists(staging):
        shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def commit_dir(staging: PathLike, final: PathLike) -> str:
    """Publish ``staging`` as ``final`` in one rename (after ``fsync`` of its contents).

    When ``final`` exists (the same step saved again), it is first renamed aside and
    deleted after the new folder is in place, so at every instant ``final`` is either
    the old complete folder, absent, or the new complete folder.
    """
    staging, final = os.fspath(staging), os.fspath(final)
    fsync_tree(staging)
    parent = os.path.dirname(os.path.abspath(final))
    old = None
    if os.path.lexists(final):
        old = os.path.join(parent, f"{STAGING_PREFIX}old-{os.path.basename(final)}-{os.getpid()}")
        if os.path.lexists(old):
            shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_path(parent, directory=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_staging(folder: PathLike) -> List[str]:
    """Delete staging folders/files (``.tmp-*``) left in ``folder`` by killed saves; return their names."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        if not name.startswith(STAGING_PREFIX):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                continue
        removed.append(name)
    if removed:
        logger.warning("Removed %d unfinished save(s) left by an interrupted run in %s: %s", len(removed), folder, removed)
    return removed


def atomic_replace_files(staging: PathLike, target: PathLike, prune_stale_shards: bool = True) -> List[str]:
    """Move every file of the flat folder ``staging`` into ``target`` with ``os.replace`` (each atomic).

    Weight files go last but one and ``config.json`` last, so a reader that finds
    a new ``config.json`` also finds the new weights.  With ``prune_stale_shards``,
    weight shards and index files of an earlier save that the new save did not
    write are removed (what ``save_pretrained`` does in place).  ``staging`` is
    deleted.  Returns the moved file names.
    """
    staging, target = os.fspath(staging), os.fspath(target)
    os.makedirs(target, exist_ok=True)
    fsync_tree(staging)
    names = sorted(os.listdir(staging))
    for name in names:
        if os.path.isdir(os.path.join(staging, name)):
            raise ValueError(f"atomic_replace_files moves flat folders only; {name!r} in {staging!r} is a folder")

    def order(name: str) -> Tuple[int, str]:
        if name == "config.json":
            return (2, name)
        if name in WEIGHT_FILES or _SHARD_RE.match(name) or name.endswith(".safetensors"):
            return (1, name)
        return (0, name)

    names.sort(key=order)
    if prune_stale_shards:
        written = set(names)
        for name in os.listdir(target):
            stale_shard = _SHARD_RE.match(name) or name in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
            if stale_shard and name not in written:
                os.unlink(os.path.join(target, name))
    for name in names:
        os.replace(os.path.join(staging, name), os.path.join(target, name))
    _fsync_path(target, directory=True)
    shutil.rmtree(staging, ignore_errors=True)
    return names
