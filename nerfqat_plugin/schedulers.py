"""Learning-rate schedule whose state survives ``torch.load(weights_only=True)``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Type

from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer, lr_scheduler


@dataclass
class ExponentialLRConfig(SchedulerConfig):
    """Exponential decay from the optimizer's learning rate to ``lr_final`` over ``max_steps`` (then constant).

    nerfstudio's ExponentialDecayScheduler computes with numpy, stores numpy floats in the scheduler state and
    then fails to load under ``weights_only=True``; this one keeps plain Python floats.
    """

    _target: Type = field(default_factory=lambda: ExponentialLR)
    lr_final: float = 5e-5
    """Learning rate reached at ``max_steps``."""
    max_steps: int = 250000
    """Steps over which the rate decays."""


class ExponentialLR(Scheduler):
    """Scheduler built from ``ExponentialLRConfig``."""

    config: ExponentialLRConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        log_ratio = math.log(self.config.lr_final / lr_init)
        max_steps = max(self.config.max_steps, 1)

        def factor(step: int) -> float:
            return math.exp(log_ratio * min(step / max_steps, 1.0))

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
