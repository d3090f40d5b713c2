"""Full fine-tuning: every parameter trains at the base LR."""

from __future__ import annotations

from tlcli.finetune.base import FinetuneStrategy


class Full(FinetuneStrategy):
    """Train backbone and head together, with an optional lower backbone LR."""

    def __init__(self, backbone_lr_mult: float = 1.0, train_bn: bool = True, freeze_bn_stats: bool = False):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)
        self.backbone_lr_mult = backbone_lr_mult

    def lr_factor(self, group: str, epoch: int) -> float:
        return self.backbone_lr_mult if group == "backbone" else 1.0
