"""LP-FT (Kumar et al., ICLR 2022): linear probe first, then fine-tune everything at a small LR.

Fine-tuning from a random head distorts the pretrained features; fine-tuning from a
probed head barely does. The fine-tune phase lowers the LR of the head too, so the good
head found by the probe is refined rather than destroyed.
"""

from __future__ import annotations

from torch import nn

from tlcli.errors import ConfigError
from tlcli.finetune.base import FinetuneStrategy


class LPFT(FinetuneStrategy):
    """Epochs < probe_epochs: backbone LR factor 0 (BN in eval), head 1.
    From probe_epochs on: backbone and head both at LR x ft_lr_mult."""

    def __init__(
        self, probe_epochs: int = 2, ft_lr_mult: float = 0.1, train_bn: bool = False, freeze_bn_stats: bool = False
    ):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)
        if probe_epochs < 0:
            raise ConfigError(f"finetune.probe_epochs={probe_epochs} must be >= 0 (epochs of linear probing)")
        if ft_lr_mult <= 0:
            raise ConfigError(f"finetune.ft_lr_mult={ft_lr_mult} must be > 0 (LR factor of the fine-tune phase)")
        self.probe_epochs, self.ft_lr_mult = probe_epochs, ft_lr_mult

    def lr_factor(self, group: str, epoch: int) -> float:
        if epoch >= self.probe_epochs:
            return self.ft_lr_mult
        return 0.0 if group == "backbone" else 1.0

    def frozen_modules(self, module: nn.Module, epoch: int) -> list[nn.Module]:
        return [module.backbone] if epoch < self.probe_epochs else []
