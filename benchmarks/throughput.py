"""Steady-state training throughput of a Trainer run (images/s), for the benchmarks that time training
(``benchmarks/trainer_throughput.py``, ``benchmarks/gpu_check.py``).

:class:`ThroughputCallback` is a ``TrainerCallback``: it records the time at the end of every
optimizer step and reports samples per second between the end of the warm-up and the last step.
"""

from __future__ import annotations

import time
from typing import List

import torch
from transformers import TrainerCallback

__all__ = ["ThroughputCallback"]


class ThroughputCallback(TrainerCallback):
    """Steady-state training throughput: samples/s between the end of step ``skip`` and the last step.

    The first ``skip`` optimizer steps (warm-up: allocator, cuDNN autotuning,
    worker start, compilation) are left out. Each interval holds one data fetch,
    forward, backward and optimizer step. With CUDA, the device is synchronised at
    the two boundary steps only, so queued work is inside the window and the
    steps in between run as in normal training.

    Args:
        samples_per_step: images per optimizer step (batch x accumulation x processes).
        skip: warm-up steps to leave out (>= 1).
    """

    def __init__(self, samples_per_step: int, skip: int = 2) -> None:
        if samples_per_step <= 0:
            raise ValueError(f"samples_per_step must be positive, got {samples_per_step}")
        if skip < 1:
            raise ValueError(f"skip must be >= 1 (the first step holds the warm-up), got {skip}")
        self.samples_per_step = int(samples_per_step)
        self.skip = int(skip)
        self.times: List[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and (len(self.times) + 1 == self.skip or state.global_step >= state.max_steps):
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    @property
    def measured_steps(self) -> int:
        return max(0, len(self.times) - self.skip)

    @property
    def seconds(self) -> float:
        if self.measured_steps < 1:
            raise ValueError(f"ThroughputCallback saw {len(self.times)} steps; needs more than skip={self.skip}")
        return self.times[-1] - self.times[self.skip - 1]

    @property
    def samples_per_second(self) -> float:
        """``samples_per_step x measured steps / seconds``."""
        return self.samples_per_step * self.measured_steps / self.seconds
