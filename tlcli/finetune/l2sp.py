"""L2-SP (Li, Grandvalet & Davoine, ICML 2018): decay toward the pretrained weights, not toward 0.

loss += alpha/2 * ||w_backbone - w_pretrained||^2 + beta/2 * ||W_head||^2
"""

from __future__ import annotations

import torch
from torch import nn

from tlcli.errors import ConfigError
from tlcli.finetune.base import FinetuneStrategy, ParamGroup
from tlcli.finetune.groups import head_group


class L2SP(FinetuneStrategy):
    """Every trainable backbone parameter is pulled toward its value at setup (the pretrained
    weights); the head's weight matrices (not its biases) toward 0. The penalty replaces the
    optimizer's weight decay: both groups get weight_decay 0, else plain decay would still
    pull the backbone toward 0 and the head would be decayed twice.
    """

    def __init__(self, alpha: float = 0.01, beta: float = 0.01, train_bn: bool = True, freeze_bn_stats: bool = False):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)
        for key, value in (("alpha", alpha), ("beta", beta)):
            if value < 0:
                raise ConfigError(f"finetune.{key}={value} must be >= 0 (0 turns that term off)")
        self.alpha, self.beta = alpha, beta
        self.reference: dict[str, torch.Tensor] = {}

    def setup(self, module: nn.Module) -> None:
        # A frozen copy outside the module: not a parameter (no optimizer state, no
        # gradients), not in the checkpoint, not broadcast by DDP. On resume the new
        # module is built from the pretrained weights again, so the snapshot is the same.
        self.reference = {n: p.detach().clone() for n, p in module.backbone.named_parameters() if p.requires_grad}

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        return [
            ParamGroup("backbone", list(module.backbone.named_parameters()), weight_decay=0.0),
            head_group(module, weight_decay=0.0),
        ]

    def regularizer(self, module: nn.Module) -> torch.Tensor:
        zero = torch.zeros((), device=next(module.head.parameters()).device)
        backbone = module.backbone.named_parameters()
        sp = sum(((p - self._ref(n, p)).pow(2).sum() for n, p in backbone if n in self.reference), zero)
        head = sum((p.pow(2).sum() for p in module.head.parameters() if p.ndim > 1), zero)
        return 0.5 * self.alpha * sp + 0.5 * self.beta * head

    def _ref(self, name: str, p: torch.Tensor) -> torch.Tensor:
        ref = self.reference[name]
        if ref.device != p.device or ref.dtype != p.dtype:  # follow the model, once
            ref = self.reference[name] = ref.to(device=p.device, dtype=p.dtype)
        return ref
