"""Freeze, then unfreeze: train the head alone, then everything with a lower backbone LR."""

from __future__ import annotations

from torch import nn

from tlcli.errors import ConfigError
from tlcli.finetune.base import FinetuneStrategy


class FreezeUnfreeze(FinetuneStrategy):
    """Backbone LR factor is 0 before `unfreeze_epoch`, then `backbone_lr_mult`.

    The head warms up on frozen features first, so the randomly initialised head does
    not send large gradients into the pretrained weights.
    """

    def __init__(
        self,
        unfreeze_epoch: int = 2,
        backbone_lr_mult: float = 0.1,
        train_bn: bool = False,
        freeze_bn_stats: bool = False,
    ):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)
        if unfreeze_epoch < 0:
            raise ConfigError(f"finetune.unfreeze_epoch={unfreeze_epoch} must be >= 0 (0 = no frozen phase)")
        self.unfreeze_epoch = unfreeze_epoch
        self.backbone_lr_mult = backbone_lr_mult

    def lr_factor(self, group: str, epoch: int) -> float:
        if group != "backbone":
            return 1.0
        return 0.0 if epoch < self.unfreeze_epoch else self.backbone_lr_mult

    def frozen_modules(self, module: nn.Module, epoch: int) -> list[nn.Module]:
        return [module.backbone] if epoch < self.unfreeze_epoch else []
