"""Crash safety for training runs: atomic folders, complete-checkpoint checks, finite weights.

A run on a shared machine can be killed at any instant (``SIGKILL``, OOM killer,
pre-emption, a full disk).  Three rules keep a killed run resumable:

1. **A checkpoint folder appears whole or not at all.**  Every file is written
   into a hidden staging folder next to it (``.tmp-checkpoint-N``), flushed to
   disk (``fsync``), and the folder is then renamed to ``checkpoint-N`` in one
   ``rename(2)`` (atomic within one file system, POSIX).  A kill during the save
   leaves only a staging folder, which nothing reads and the next save or
   resume removes; the previous ``checkpoint-M`` is untouched.
   (:func:`staging_dir`, :func:`commit_dir`.)
2. **Resuming uses the newest *complete* checkpoint.**  Folders written by
   other tools, copied by hand or damaged on disk are checked before use
   (:func:`checkpoint_problem`): ``trainer_state.json`` parses, the weights
   exist and every ``.safetensors`` file is as long as its header says, every
   ``torch.save`` file (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``)
   is a complete zip archive.  :func:`last_complete_checkpoint` skips the
   others with a warning naming each and why; :func:`resolve_resume_checkpoint`
   refuses an explicitly named incomplete one.
3. **No non-finite weights are saved or returned** (:func:`nonfinite_parameters`).

Files outside checkpoints (the final model, JSON results) are replaced file by
file with :func:`atomic_replace_files` / :func:`atomic_write_bytes`: a reader
sees the old file or the new one, never a prefix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tempfile
import zipfile
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "STAGING_PREFIX",
    "IncompleteCheckpointError",
    "atomic_replace_files",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "checkpoint_problem",
    "commit_dir",
    "fsync_tree",
    "last_complete_checkpoint",
    "list_checkpoints",
    "nonfinite_parameters",
    "remove_stale_staging",
    "resolve_resume_checkpoint",
    "safetensors_problem",
    "staging_dir",
]

PathLike = Union[str, os.PathLike]

#: transformers' checkpoint folder prefix (``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR``).
CHECKPOINT_PREFIX = "checkpoint"
#: Prefix of staging folders; hidden, and never matched by ``checkpoint-*`` globs.
STAGING_PREFIX = ".tmp-"
_CHECKPOINT_RE = re.compile(r"^" + CHECKPOINT_PREFIX + r"-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
                 "adapter_model.safetensors", "adapter_model.bin")
_SHARD_RE = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")
_RESUME_LATEST = ("true", "last", "latest")


class IncompleteCheckpointError(ValueError):
    """A checkpoint folder named for resuming is missing files or holds truncated ones."""


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
        if name in _WEIGHT_FILES or _SHARD_RE.match(name) or name.endswith(".safetensors"):
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


# ----------------------------------------------------------------------------- complete checkpoints
def safetensors_problem(path: PathLike) -> Optional[str]:
    """``None`` when ``path`` is a complete safetensors file, else what is wrong.

    Format (https://github.com/huggingface/safetensors): 8-byte little-endian header
    length ``n``, ``n`` bytes of JSON header whose tensors carry ``data_offsets``
    ``[begin, end)``, then the data; a complete file is exactly
    ``8 + n + max(end)`` bytes long.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{os.path.basename(path)} is {size} bytes, too short for a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{os.path.basename(path)} is truncated (header of {n} bytes, file of {size})"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"{os.path.basename(path)} has an unreadable header ({type(err).__name__}: {err})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + n + (max(ends) if ends else 0)
    if size != expected:
        return f"{os.path.basename(path)} is {size} bytes, its header describes {expected}: truncated or damaged"
    return None


def checkpoint_problem(folder: PathLike) -> Optional[str]:
    """``None`` when ``folder`` is a complete Trainer checkpoint, else a one-line reason.

    Checks: ``trainer_state.json`` parses and has ``global_step``; model weights exist
    (safetensors, sharded index with every shard, ``pytorch_model.bin``, or an adapter);
    each ``.safetensors`` file is complete (:func:`safetensors_problem`); each
    ``.pt`` / ``.pth`` / ``.bin`` file is a complete ``torch.save`` zip archive.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return "not a folder"
    state_path = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(state_path):
        return "no trainer_state.json (the save did not finish)"
    try:
        with open(state_path, encoding="utf-8") as fh:
            state = json.load(fh)
        int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"trainer_state.json is unreadable ({type(err).__name__}: {err})"
    names = set(os.listdir(folder))
    if not (names & set(_WEIGHT_FILES)) and not any(n.endswith(".safetensors") for n in names):
        return "no model weights (model.safetensors / pytorch_model.bin)"
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index_name in names:
            try:
                with open(os.path.join(folder, index_name), encoding="utf-8") as fh:
                    shards = set(json.load(fh)["weight_map"].values())
            except (OSError, ValueError, KeyError) as err:
                return f"{index_name} is unreadable ({type(err).__name__})"
            missing = sorted(shards - names)
            if missing:
                return f"weight shard(s) {missing} listed in {index_name} are missing"
    for name in sorted(names):
        path = os.path.join(folder, name)
        if name.endswith(".safetensors"):
            problem = safetensors_problem(path)
            if problem:
                return problem
        elif name.endswith((".pt", ".pth", ".bin")) and os.path.isfile(path):
            if not zipfile.is_zipfile(path):
                return f"{name} is truncated (not a complete torch.save zip archive)"
    return None


def list_checkpoints(output_dir: PathLike) -> List[Tuple[int, str]]:
    """``[(step, path), ...]`` of ``checkpoint-<step>`` folders in ``output_dir``, oldest first
    (``transformers.trainer_utils.sort_checkpoints``, by step number)."""
    from transformers.trainer_utils import sort_checkpoints

    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return []
    found = []
    for path in sort_checkpoints(output_dir, checkpoint_prefix=CHECKPOINT_PREFIX):
        m = _CHECKPOINT_RE.match(os.path.basename(path))
        if m:  # sort_checkpoints globs ``checkpoint-*``; keep exact ``checkpoint-<int>`` names only
            found.append((int(m.group(1)), path))
    return found


def last_complete_checkpoint(output_dir: PathLike) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """The newest complete checkpoint in ``output_dir`` and the ``(path, reason)`` of each newer one skipped.

    ``transformers.trainer_utils.get_last_checkpoint`` gives the newest; when
    :func:`checkpoint_problem` rejects it, older ones are tried in turn.
    """
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None, []
    newest = get_last_checkpoint(output_dir)
    if newest is not None and checkpoint_problem(newest) is None:
        return newest, []
    skipped: List[Tuple[str, str]] = []
    for _step, path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def resolve_resume_checkpoint(spec: Union[None, bool, str, os.PathLike], output_dir: PathLike) -> Optional[str]:
    """Turn ``resume_from_checkpoint`` into a complete checkpoint folder (or ``None``).

    Accepted values:

    * ``None`` / ``False`` / ``""``: start fresh;
    * ``True`` or the strings ``"true"``, ``"last"``, ``"latest"`` (what a command line
      can pass): the newest complete checkpoint in ``output_dir``;
    * a run folder holding ``checkpoint-*`` folders: the newest complete one in it;
    * a checkpoint folder: used as is when complete.

    Incomplete newer checkpoints are skipped with a warning that names each one and
    why; an explicitly named incomplete checkpoint raises.

    Raises:
        IncompleteCheckpointError: the named checkpoint is incomplete (the message
            names the newest complete one, when there is one).
        ValueError: nothing to resume from.
    """
    if spec is None or spec is False or (isinstance(spec, str) and spec.strip() == ""):
        return None
    if spec is True or (isinstance(spec, str) and spec.strip().lower() in _RESUME_LATEST):
        run_dir = os.fspath(output_dir)
        named = False
    else:
        path = os.fspath(spec)
        if not os.path.isdir(path):
            raise ValueError(f"resume_from_checkpoint {path!r} does not exist (or is not a folder)")
        if os.path.isfile(os.path.join(path, "trainer_state.json")) or _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path))):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            latest, _ = last_complete_checkpoint(os.path.dirname(os.path.abspath(path)))
            hint = f"; the newest complete checkpoint beside it is {latest!r}" if latest else ""
            raise IncompleteCheckpointError(f"Cannot resume from {path!r}: incomplete checkpoint ({problem}){hint}")
        run_dir, named = path, True
    latest, skipped = last_complete_checkpoint(run_dir)
    for path, problem in skipped:
        logger.warning("Skipping incomplete checkpoint %s: %s", path, problem)
    if latest is None:
        what = f"{len(skipped)} incomplete checkpoint(s) and no complete one" if skipped else "no checkpoint-* folder"
        raise ValueError(f"Cannot resume: {run_dir!r} holds {what}" + ("" if named else " (pass a checkpoint path, or start fresh)"))
    if skipped:
        logger.warning("Resuming from %s, the newest complete checkpoint", latest)
    return latest


# ----------------------------------------------------------------------------- finite weights
def nonfinite_parameters(module, limit: int = 5) -> List[str]:
    """Names of up to ``limit`` parameters or floating-point buffers holding NaN or inf."""
    import torch

    bad: List[str] = []
    tensors: Iterable = list(module.named_parameters()) + [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
    for name, tensor in tensors:
        if tensor.numel() and not bool(torch.isfinite(tensor.detach()).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad
