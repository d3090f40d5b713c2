"""Layer-wise LR decay: the deeper (closer to the input) a backbone layer, the lower its LR."""

from __future__ import annotations

import logging

from torch import nn

from tlcli.errors import ConfigError
from tlcli.finetune.base import FinetuneStrategy, ParamGroup
from tlcli.finetune.groups import head_group, layer_param_groups

log = logging.getLogger(__name__)


class LayerDecay(FinetuneStrategy):
    """Backbone layer group i of n (input side first) gets LR x decay ** (n - i); the head 1.0.

    The top backbone group gets decay^1, the stem decay^n. Each group carries its LR
    explicitly (ParamGroup.lr_mult); timm's `lr_scale` is read only by timm's own scheduler.
    """

    def __init__(self, decay: float = 0.75, train_bn: bool = True, freeze_bn_stats: bool = False):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"finetune.decay={decay} must be in (0, 1] (1 = no decay; 0.65-0.85 is typical)")
        self.decay = decay

    def setup(self, module: nn.Module) -> None:
        groups = layer_param_groups(module)
        if len(groups) < 2:
            name = getattr(module.backbone, "name", type(module.backbone).__name__)
            raise ConfigError(
                f"finetune=llrd needs a backbone with layer structure, but '{name}' (backbone.name) has a single "
                "layer group: use finetune=full with finetune.backbone_lr_mult=0.1 for one lower backbone LR"
            )
        n = len(groups)
        log.info(
            "llrd: %d backbone layer groups, LR x %.3g (input side) ... x %.3g (top)", n, self.decay**n, self.decay
        )

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        groups = layer_param_groups(module)
        n = len(groups)
        for i, g in enumerate(groups):
            g.lr_mult = self.decay ** (n - i)
        return groups + [head_group(module)]
