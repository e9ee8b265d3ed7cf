"""``TrainerCallback``s that keep a :class:`~rcl_hf.trainer.RiskCalibratedTrainer` run numerically safe.

:class:`NonFiniteStepGuard` runs in ``on_pre_optimizer_step``, the public hook
between the gradient clipping and ``optimizer.step()``:

* a non-finite gradient norm (``||g||_2`` over every parameter's gradient,
  ``torch.nn.utils.get_total_norm``) with a finite loss either raises
  :class:`NonFiniteLossError` naming the step (``nonfinite_loss="raise"``) or skips
  the step (``"skip"``);
* a step whose loss was non-finite in skip mode (``compute_loss`` then returns a NaN
  surrogate so that every gradient, and under DDP the all-reduced one on every
  process, is NaN) is skipped the same way: gradients set to ``None``, so
  ``optimizer.step()`` leaves every parameter unchanged, as ``torch.amp.GradScaler``
  does on overflow;
* in skip mode the model's floating-point buffers (BatchNorm running statistics) are
  snapshotted in ``on_step_begin`` and restored when the step is skipped: a skipped
  optimizer step leaves parameters *and* buffers as they were.

With fp16 (a ``GradScaler``) or DeepSpeed the check is left to their own overflow
handling.
"""

from __future__ import annotations

import logging
import math
from typing import Any, List, Optional, Tuple

import torch
from transformers import TrainerCallback

logger = logging.getLogger("rcl_hf.trainer")

__all__ = ["NonFiniteLossError", "NonFiniteStepGuard", "BroadcastBuffersCallback"]


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss or gradient norm is NaN or inf (see ``RiskArguments.nonfinite_loss``)."""


class NonFiniteStepGuard(TrainerCallback):
    """Skip or refuse optimizer steps whose gradients are not finite (see the module docstring).

    Args:
        trainer: the trainer whose ``risk_args``, counters and state it reads and updates.
    """

    def __init__(self, trainer: Any) -> None:  # an rcl_hf.trainer.RiskCalibratedTrainer (it imports this module)
        self.trainer = trainer
        self._buffers: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.trainer.risk_args.nonfinite_loss == "skip" and model is not None:
            self._buffers = [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        loss_skipped, trainer._loss_skipped_in_step = trainer._loss_skipped_in_step, False
        micro_batches, trainer._micro_batch = trainer._micro_batch, 0
        if model is None or trainer.accelerator.scaler is not None or trainer.is_deepspeed_enabled:
            return  # fp16: GradScaler skips overflowing steps; DeepSpeed has its own overflow check
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        value = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        if math.isfinite(value):
            trainer._grad_streak = 0
            return
        where = (f"at global step {state.global_step} (optimizer step {state.global_step + 1} over "
                 f"{micro_batches} micro-batch(es), epoch {state.epoch or 0:.3f})")
        if not loss_skipped and trainer.risk_args.nonfinite_loss == "raise":
            raise NonFiniteLossError(
                f"Gradient norm is {value} {where} although the loss is finite. Lower the learning rate, set "
                "max_grad_norm, or pass --nonfinite_loss skip to skip such steps."
            )
        model.zero_grad(set_to_none=True)  # optimizer.step() then leaves every parameter unchanged
        if self._buffers is not None:
            with torch.no_grad():
                for buffer, saved in self._buffers:
                    buffer.copy_(saved)
        trainer.skipped_optimizer_steps += 1
        if not loss_skipped:
            trainer._grad_streak += 1
            logger.warning("Skipping the optimizer step: gradient norm is %s %s", value, where)
            if trainer._grad_streak > trainer.risk_args.max_nonfinite_skips:
                raise NonFiniteLossError(f"{trainer._grad_streak} consecutive non-finite gradient norms up to {where}: "
                                         "the model has diverged.")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._buffers = None


class BroadcastBuffersCallback(TrainerCallback):
    """Under DDP, give every process the buffers of process 0 before it evaluates or saves, and at the end.

    DDP broadcasts buffers (BatchNorm running statistics) from rank 0 at the start
    of each training forward, after which every rank updates them with its own
    micro-batch: at an evaluation the ranks would hold different statistics, the
    sharded evaluation would mix models, and its metrics would not be those of the
    saved (rank-0) model.  Broadcasting them first makes distributed evaluation
    score exactly the model that is saved (tested: 2 gloo processes vs 1).
    """

    @staticmethod
    def _sync(model: Optional[torch.nn.Module]) -> None:
        import torch.distributed as dist

        if model is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_evaluate or control.should_save:
            self._sync(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if control.should_evaluate or control.should_save:
            self._sync(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._sync(model)
