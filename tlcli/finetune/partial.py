"""Partial freeze: the first `frozen_groups` backbone layer groups (input side) never train."""

from __future__ import annotations

import logging

from torch import nn

from tlcli.errors import ConfigError
from tlcli.finetune.base import FinetuneStrategy
from tlcli.finetune.groups import covering_modules, labels, layer_param_groups

log = logging.getLogger(__name__)


class Partial(FinetuneStrategy):
    """Generic low-level features (edges, textures, sub-words) transfer as they are; the
    upper layers adapt. The freeze lasts the whole run: requires_grad=False, so backward
    stops early and the frozen part needs no gradients or optimizer state.
    """

    def __init__(self, frozen_groups: int = 2, train_bn: bool = False, freeze_bn_stats: bool = False):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)
        if frozen_groups < 0:
            raise ConfigError(f"finetune.frozen_groups={frozen_groups} must be >= 0 (0 = nothing frozen)")
        self.frozen_groups = frozen_groups
        self.frozen: set[str] = set()  # backbone parameter names

    def setup(self, module: nn.Module) -> None:
        groups = layer_param_groups(module)
        n = len(groups)
        if self.frozen_groups >= n:
            raise ConfigError(
                f"finetune.frozen_groups={self.frozen_groups} would freeze the whole backbone, which has {n} "
                f"layer groups ({labels(groups)}): use at most {n - 1}, or finetune=linear_probe"
            )
        self.frozen = {name for g in groups[: self.frozen_groups] for name, _ in g.params}
        for name, p in module.backbone.named_parameters():
            if name in self.frozen:
                p.requires_grad_(False)
        log.info(
            "partial: frozen %s; training %s",
            labels(groups[: self.frozen_groups]) or "nothing",
            labels(groups[self.frozen_groups :]),
        )

    def frozen_modules(self, module: nn.Module, epoch: int) -> list[nn.Module]:
        return covering_modules(module.backbone, self.frozen)
