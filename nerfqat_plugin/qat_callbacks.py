"""The QAT schedule as nerfstudio training callbacks, shared by every quantization-aware model of the plugin."""

from __future__ import annotations

from typing import List

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from torch import nn

from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.distributed import data_parallel, sync_observers
from nerfqat_plugin.quant.layers import set_quant_state


def apply_schedule(module: nn.Module, quant: QuantConfig, step: int) -> None:
    """Fake quantization on from ``quant_start_step`` (when enabled); observers move until
    ``freeze_observers_step``."""
    active = quant.enabled and step >= quant.quant_start_step
    observe = quant.freeze_observers_step < 0 or step < quant.freeze_observers_step
    set_quant_state(module, active=active, observe=observe)


def schedule_callbacks(model) -> List[TrainingCallback]:
    """``model.update_to_step`` before every iteration; with several processes, every rank folds the same
    all-reduced activation ranges after every iteration."""
    callbacks = [
        TrainingCallback(
            where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
            update_every_num_iters=1,
            func=model.update_to_step,
        )
    ]
    if data_parallel():
        callbacks.append(
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=lambda step: sync_observers(model),
            )
        )
    return callbacks
