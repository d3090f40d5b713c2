"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018): the head first, then backbone layer
groups from the top down, one more every `every` epochs (or at explicit `milestones`)."""

from __future__ import annotations

import logging
import math

from torch import nn

from tlcli.errors import ConfigError
from tlcli.finetune.base import FinetuneStrategy, ParamGroup
from tlcli.finetune.groups import covering_modules, head_group, labels, layer_param_groups

log = logging.getLogger(__name__)


class GradualUnfreeze(FinetuneStrategy):
    """Every backbone layer group is in the optimizer from the start, gated by LR factor 0
    until its epoch. Groups that `milestones` never reaches are frozen for the whole run
    (requires_grad=False), so backward skips them.
    """

    def __init__(
        self, every: int = 1, milestones: list[int] | None = None, train_bn: bool = False, freeze_bn_stats: bool = False
    ):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)
        if milestones is None and every < 1:
            raise ConfigError(f"finetune.every={every} must be >= 1 (epochs between two unfreezes)")
        if milestones is not None:
            milestones = [int(m) for m in milestones]
            if any(m < 0 for m in milestones) or milestones != sorted(milestones):
                raise ConfigError(
                    f"finetune.milestones={milestones} must be non-decreasing epochs >= 0: "
                    "the epoch at which each next backbone layer group, top-down, unfreezes"
                )
        self.every, self.milestones = every, milestones
        self.unfreeze_at: dict[str, float] = {}  # group name -> first epoch it trains

    def setup(self, module: nn.Module) -> None:
        groups = layer_param_groups(module)
        n = len(groups)
        epochs = self.milestones if self.milestones is not None else [(k + 1) * self.every for k in range(n)]
        if len(epochs) > n:
            raise ConfigError(
                f"finetune.milestones has {len(epochs)} entries but the backbone has {n} layer groups "
                f"({labels(groups)}): give at most {n}"
            )
        top_down = groups[::-1]
        self.unfreeze_at = {g.name: float(epochs[k]) if k < len(epochs) else math.inf for k, g in enumerate(top_down)}
        for g in groups:
            if self.unfreeze_at[g.name] == math.inf:  # never unfreezes: a whole-run freeze
                for _, p in g.params:
                    p.requires_grad_(False)
        plan = ", ".join(f"{g.name}@{self.unfreeze_at[g.name]:g}" for g in top_down)
        log.info("gradual_unfreeze: head from epoch 0, then %s", plan)

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        return layer_param_groups(module) + [head_group(module)]

    def lr_factor(self, group: str, epoch: int) -> float:
        if group == "head":
            return 1.0
        return 1.0 if epoch >= self.unfreeze_at[group] else 0.0

    def frozen_modules(self, module: nn.Module, epoch: int) -> list[nn.Module]:
        frozen = {n for g in layer_param_groups(module) if epoch < self.unfreeze_at[g.name] for n, _ in g.params}
        return covering_modules(module.backbone, frozen)
