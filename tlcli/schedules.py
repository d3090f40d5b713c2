"""Base LR schedules, as multipliers of each group's LR at a given optimizer step."""

from __future__ import annotations

import math


class WarmupCosine:
    """Linear warmup over `warmup_epochs`, then cosine decay from 1 to `min_lr_ratio`.

    `min_lr_ratio=1` with no warmup is a constant LR.
    """

    def __init__(self, warmup_epochs: float = 1.0, min_lr_ratio: float = 0.01):
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        warmup = int(round(self.warmup_epochs * steps_per_epoch))
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
