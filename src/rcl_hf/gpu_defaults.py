"""The GPU path: what the Trainer turns on when a CUDA device is present.

:func:`plan_gpu_path` decides, :func:`apply_gpu_path` applies; on a machine
without CUDA the plan is empty and training runs exactly as before (fp32, no
workers, default memory format).  With CUDA:

* **mixed precision**: ``bf16=True`` (autocast to bfloat16, no loss scaling) when
  the device supports it (Ampere and newer), else ``fp16=True`` with
  ``torch.amp.GradScaler`` (the Trainer's).  Every loss in :mod:`rcl_hf.losses`
  casts the logits to float32 first, so the risk term is computed in fp32 under
  autocast.  A user's own ``fp16``/``bf16`` choice is kept;
* **TF32** matmuls and convolutions (``tf32=True``) where available and not set;
* **channels_last** weights for convolutional backbones (:func:`is_convolutional`:
  at least one ``Conv2d`` that is not a patchify stem with ``kernel == stride``),
  so cuDNN picks NHWC kernels (tensor cores; PyTorch "channels last" tutorial);
  ViT/Swin-style models are left alone;
* **loaders**: ``dataloader_num_workers = min(8, CPUs per process - 1)`` (at least
  1) when it is 0, ``persistent_workers`` (no re-spawn per epoch/evaluation),
  pinned memory (the ``TrainingArguments`` default) with non-blocking
  host-to-device copies;
* **torch.compile** stays the user's choice (``TrainingArguments.torch_compile``):
  its compile time (tens of seconds) only pays off on long runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

__all__ = ["GpuPlan", "apply_gpu_path", "available_cpus", "is_convolutional", "plan_gpu_path"]

MAX_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may run on (``sched_getaffinity``; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def is_convolutional(model: torch.nn.Module) -> bool:
    """True when ``model`` has a ``Conv2d`` that is not a patchify stem (``kernel == stride``, no padding).

    ResNet, EfficientNet, ConvNeXt (7x7 depthwise) and hybrid ViTs are
    convolutional; ViT, DeiT and Swin (a single patch-embedding conv) are not.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            patchify = tuple(module.kernel_size) == tuple(module.stride) and all(p == 0 for p in _padding(module))
            if not patchify:
                return True
    return False


def _padding(conv: torch.nn.Conv2d) -> Tuple[int, ...]:
    pad = conv.padding
    if isinstance(pad, str):  # "same" pads a kernel > 1; "valid" does not
        return (0, 0) if pad == "valid" or max(conv.kernel_size) == 1 else (1, 1)
    return tuple(pad)


@dataclass
class GpuPlan:
    """What the GPU path changes: ``TrainingArguments`` fields, the model's memory format, and why."""

    device: str = "cpu"
    training_args: Dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    non_blocking: bool = False
    notes: List[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.training_args or self.channels_last or self.non_blocking)


def plan_gpu_path(
    model: Optional[torch.nn.Module],
    training_args: Any,
    *,
    enabled: bool = True,
    cuda_available: Optional[bool] = None,
    bf16_supported: Optional[bool] = None,
    tf32_supported: Optional[bool] = None,
    cpu_count: Optional[int] = None,
    local_processes: Optional[int] = None,
) -> GpuPlan:
    """Decide the GPU-path settings for ``model`` trained with ``training_args``.

    Args:
        model: the network (``None``: no memory-format decision).
        training_args: the run's ``TrainingArguments``; only fields still at their
            defaults are changed (``fp16``/``bf16`` unset, ``tf32`` unset,
            ``dataloader_num_workers == 0``), and nothing when ``use_cpu`` is set.
        enabled: ``False`` returns an empty plan.
        cuda_available, bf16_supported, tf32_supported, cpu_count, local_processes:
            facts of the machine; ``None`` asks torch / the OS (tests pass them).

    Returns:
        A :class:`GpuPlan`; empty without CUDA, so the CPU default is unchanged.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    plan = GpuPlan(device="cuda" if cuda_available else "cpu")
    if not enabled:
        plan.notes.append("GPU path disabled")
        return plan
    if not cuda_available:
        plan.notes.append("no CUDA device: CPU defaults kept")
        return plan
    if getattr(training_args, "use_cpu", False):
        plan.device = "cpu"
        plan.notes.append("use_cpu is set: CPU defaults kept")
        return plan
    if bf16_supported is None:
        bf16_supported = bool(torch.cuda.is_bf16_supported())
    if tf32_supported is None:
        from transformers.utils import is_torch_tf32_available

        tf32_supported = bool(is_torch_tf32_available())
    if cpu_count is None:
        cpu_count = available_cpus()
    if local_processes is None:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))

    changes: Dict[str, Any] = {}
    if training_args.fp16 or training_args.bf16:
        plan.notes.append(f"mixed precision kept as set ({'fp16' if training_args.fp16 else 'bf16'})")
    elif bf16_supported:
        changes["bf16"] = True
        plan.notes.append("bf16 autocast (device supports bfloat16)")
    else:
        changes["fp16"] = True
        plan.notes.append("fp16 autocast with GradScaler (no bfloat16 on this device)")
    if getattr(training_args, "tf32", None) is None and tf32_supported:
        changes["tf32"] = True
        plan.notes.append("TF32 matmuls/convolutions")
    if training_args.dataloader_num_workers == 0:
        per_process = max(1, int(cpu_count) // max(1, int(local_processes)))
        workers = max(1, min(MAX_WORKERS, per_process - 1))
        changes["dataloader_num_workers"] = workers
        changes["dataloader_persistent_workers"] = True
        plan.notes.append(f"{workers} dataloader workers ({cpu_count} CPUs, {local_processes} process(es)), persistent")
    if training_args.dataloader_pin_memory:
        plan.non_blocking = True
        plan.notes.append("pinned memory, non-blocking host-to-device copies")
    if model is not None and is_convolutional(model):
        plan.channels_last = True
        plan.notes.append("channels_last weights (convolutional backbone)")
    if training_args.torch_compile:
        plan.notes.append("torch.compile as requested (TrainingArguments.torch_compile)")
    plan.training_args = changes
    return plan


def apply_gpu_path(plan: GpuPlan, training_args: Any, model: Optional[torch.nn.Module] = None) -> Tuple[Any, Optional[torch.nn.Module]]:
    """Apply ``plan``: a new ``TrainingArguments`` (validated again) and the model in its memory format.

    ``TrainingArguments`` derives state in ``__post_init__`` (``mixed_precision``
    from ``bf16``/``fp16``, TF32 switches), so fields are changed with
    ``dataclasses.replace``, never by assignment. The input object is left as is.
    """
    args = dataclasses.replace(training_args, **plan.training_args) if plan.training_args else training_args
    if plan.non_blocking and not args.accelerator_config.non_blocking:
        if args is training_args:
            args = dataclasses.replace(training_args)
        args.accelerator_config = dataclasses.replace(args.accelerator_config, non_blocking=True)
    if model is not None and plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    for note in plan.notes:
        logger.info("GPU path: %s", note)
    return args, model
