"""The strategy protocol.

All optimizer parameter groups are built once (param_groups), and freezing or
unfreezing over time is expressed as a per-group LR factor (lr_factor) inside one
LambdaLR. Nothing is added to the optimizer or toggled mid-run, so LR schedules,
resume and DDP see the same groups throughout. requires_grad=False is used only for
freezes that last the whole run (setup).

What LR gating leaves running, by design: a group at LR factor 0 still receives
gradients, so Adam moments accumulate while it is gated (the weights do not move:
AdamW and SGD scale both the step and the decoupled weight decay by the LR).
BatchNorm statistics of a frozen part are pinned by putting it in eval mode unless
`train_bn=true`; `freeze_bn_stats=true` pins those of the whole backbone for the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tlcli.errors import ConfigError


@dataclass
class ParamGroup:
    name: str
    params: list[tuple[str, nn.Parameter]]
    lr_mult: float = 1.0
    # Weight decay of the group's weight matrices; None = the optimizer's configured value.
    # A strategy that regularises weights itself (L2-SP) sets 0 so plain decay does not pull toward 0.
    weight_decay: float | None = None


class FinetuneStrategy:
    """Default behaviour: everything trains at the base LR."""

    def __init__(self, train_bn: bool = True, freeze_bn_stats: bool = False):
        # Whether frozen parts keep BatchNorm (and dropout) in train mode.
        self.train_bn = train_bn
        # Every BatchNorm of the backbone keeps its pretrained running statistics (eval mode)
        # all run long, trainable or not; its scale and shift still train if unfrozen.
        self.freeze_bn_stats = freeze_bn_stats
        if train_bn and freeze_bn_stats:
            raise ConfigError(
                "finetune.train_bn=true (BatchNorm statistics update even in frozen parts) and "
                "finetune.freeze_bn_stats=true (they never update) contradict each other: set one of them to false"
            )

    def setup(self, module: nn.Module) -> None:
        """Apply freezes that last the whole run (requires_grad=False)."""

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        return [
            ParamGroup("backbone", list(module.backbone.named_parameters())),
            ParamGroup("head", list(module.head.named_parameters())),
        ]

    def lr_factor(self, group: str, epoch: int) -> float:
        """Multiplier on the group's LR during `epoch` (0 gates the group off)."""
        return 1.0

    def regularizer(self, module: nn.Module) -> torch.Tensor | None:
        """An extra term added to the training loss (e.g. L2-SP), or None."""
        return None

    def merge(self, module: nn.Module) -> None:
        """Fold anything the strategy added (adapters) into plain weights, before export."""

    def frozen_modules(self, module: nn.Module, epoch: int) -> list[nn.Module]:
        """Modules that are frozen during `epoch` (kept in eval mode unless train_bn)."""
        return []

    def describe(self, epoch: int = 0) -> str:
        return type(self).__name__
