"""`ema_decay`: an exponential moving average of the weights, kept by Lightning's WeightAveraging callback.

The average is updated after every optimizer step with the decay ramped up as timm's model
EMA does, min(ema_decay, (1 + n) / (10 + n)) after n updates, so that a short fine-tune
(a few hundred steps) averages its recent weights instead of staying near the pretrained
ones. Validation (and so early stopping and the best checkpoint), every checkpoint's
`state_dict`, and the test after fit see the average; test/predict/export/serve load it
from the checkpoint like any other weights. The raw weights travel in the checkpoint too
(`current_model_state`), so a resumed run continues both exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

WARMUP = 10  # decay (1 + n) / (WARMUP + n) while that is below ema_decay


def decay_at(decay: float, num_averaged: int) -> float:
    """The decay applied at the update after `num_averaged` earlier ones."""
    return min(decay, (1 + num_averaged) / (WARMUP + num_averaged))


def ema_avg_fn(decay: float):
    """AveragedModel's avg_fn: averaged <- d * averaged + (1 - d) * current, d = decay_at(decay, n)."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = decay_at(decay, int(num_averaged))
        return averaged + (current - averaged) * (1.0 - d)

    return avg


class EMA(WeightAveraging):
    """Lightning's WeightAveraging with the ramped EMA above; see the module docstring."""

    def __init__(self, decay: float):
        super().__init__(avg_fn=ema_avg_fn(decay), use_buffers=True)
        self.decay = decay

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        # Lightning's callback swaps its average in for every validation loop, also a
        # trainer.validate(ckpt_path=best) after fit (calibration): that would score the last average
        # instead of the checkpoint just loaded. Only fit's own validation sees the running average.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Fitting (a resume): restore the average and the raw weights both. Testing the best
        # checkpoint after fit: its state_dict is the average, which is what must be tested, so the
        # raw weights (current_model_state) must not be put back as Lightning's callback would.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
