"""BitFit (Ben Zaken et al., ACL 2022): only the backbone's bias terms train, plus the head."""

from __future__ import annotations

import logging

from torch import nn

from tlcli.errors import ConfigError
from tlcli.finetune.base import FinetuneStrategy
from tlcli.finetune.groups import batchnorm_modules

log = logging.getLogger(__name__)


def is_bias(name: str) -> bool:
    # 'attn.qkv.bias', 'bn1.bias', and BEiT-style 'q_bias'/'v_bias'
    return name.rsplit(".", 1)[-1].endswith("bias")


class BitFit(FinetuneStrategy):
    """A whole-run freeze of every non-bias backbone parameter (requires_grad=False).
    BatchNorm weights are frozen but their biases train; with train_bn=false the
    BatchNorm layers stay in eval mode, so their running statistics stay pretrained."""

    def __init__(self, train_bn: bool = False, freeze_bn_stats: bool = False):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)

    def setup(self, module: nn.Module) -> None:
        biases = 0
        for name, p in module.backbone.named_parameters():
            p.requires_grad_(is_bias(name))
            biases += p.numel() if is_bias(name) else 0
        if biases == 0:
            name = getattr(module.backbone, "name", type(module.backbone).__name__)
            raise ConfigError(
                f"finetune=bitfit: '{name}' (backbone.name) has no bias parameters to train: "
                "use finetune=linear_probe or finetune=lora"
            )
        total = sum(p.numel() for p in module.backbone.parameters())
        log.info("bitfit: %d of %d backbone parameters train (biases)", biases, total)

    def frozen_modules(self, module: nn.Module, epoch: int) -> list[nn.Module]:
        return batchnorm_modules(module.backbone)
