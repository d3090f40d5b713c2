"""Linear probe: the backbone is frozen for the whole run; only the head learns."""

from __future__ import annotations

from torch import nn

from tlcli.finetune.base import FinetuneStrategy, ParamGroup


class LinearProbe(FinetuneStrategy):
    def __init__(self, train_bn: bool = False, freeze_bn_stats: bool = False, recipe: dict | None = None):
        # recipe: read by tlcli.config.recipes before this strategy is built (cached features, probe LR)
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)

    def setup(self, module: nn.Module) -> None:
        # A whole-run freeze: requires_grad=False so backward skips the backbone entirely.
        module.backbone.requires_grad_(False)

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        return [ParamGroup("head", list(module.head.named_parameters()))]

    def frozen_modules(self, module: nn.Module, epoch: int) -> list[nn.Module]:
        return [module.backbone]
