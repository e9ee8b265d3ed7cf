"""Checkpoint integrity: which ``checkpoint-N`` folders are complete, which one to resume from, finite weights.

A run killed during a save leaves the previous checkpoint loadable, because each
checkpoint is staged and renamed into place in one step (:mod:`rcl_hf.atomic_io`).
Two more rules keep a killed run resumable:

1. **Resuming uses the newest *complete* checkpoint.**  Folders written by
   other tools, copied by hand or damaged on disk are checked before use
   (:func:`checkpoint_problem`): ``trainer_state.json`` parses, the weights
   exist and every ``.safetensors`` file is as long as its header says, every
   ``torch.save`` file (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``)
   is a complete zip archive.  :func:`last_complete_checkpoint` skips the
   others with a warning naming each and why; :func:`resolve_resume_checkpoint`
   refuses an explicitly named incomplete one.
2. **No non-finite weights are saved or returned** (:func:`nonfinite_parameters`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from typing import Iterable, List, Optional, Tuple, Union

from .atomic_io import WEIGHT_FILES

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "IncompleteCheckpointError",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "list_checkpoints",
    "nonfinite_parameters",
    "resolve_resume_checkpoint",
    "safetensors_problem",
]

PathLike = Union[str, os.PathLike]

#: transformers' checkpoint folder prefix (``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR``).
CHECKPOINT_PREFIX = "checkpoint"
_CHECKPOINT_RE = re.compile(r"^" + CHECKPOINT_PREFIX + r"-(\d+)$")
_RESUME_LATEST = ("true", "last", "latest")


class IncompleteCheckpointError(ValueError):
    """A checkpoint folder named for resuming is missing files or holds truncated ones."""


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
    if not (names & set(WEIGHT_FILES)) and not any(n.endswith(".safetensors") for n in names):
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
