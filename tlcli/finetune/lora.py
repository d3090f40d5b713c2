"""LoRA (Hu et al., ICLR 2022) through peft: low-rank adapters on the backbone's attention
layers; the pretrained weights stay frozen, only the adapters and the head train."""

from __future__ import annotations

import logging

from torch import nn

from tlcli.errors import ConfigError
from tlcli.finetune.base import FinetuneStrategy, ParamGroup
from tlcli.finetune.groups import batchnorm_modules, head_group

log = logging.getLogger(__name__)

# peft's own table lacks DistilBERT, one of our presets.
HF_EXTRA_TARGETS = {"distilbert": ["q_lin", "v_lin"]}
TIMM_VIT_TARGETS = ["attn.qkv", "attn.proj"]
KEY = "finetune.target_modules"


class LoRA(FinetuneStrategy):
    """target_modules: module names or suffixes (peft's matching: 'query' matches
    'encoder.layer.0.attention.self.query'), or one regex string; null picks a default per
    family: Hugging Face models from peft's table by model_type (BERT: query, value),
    timm ViTs attn.qkv + attn.proj. timm convnets have no default: name their Conv2d
    layers (peft adapts Conv2d too), e.g. [layer4.0.conv1, layer4.0.conv2].
    """

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        target_modules: list[str] | str | None = None,
        train_bn: bool = False,
        freeze_bn_stats: bool = False,
    ):
        super().__init__(train_bn=train_bn, freeze_bn_stats=freeze_bn_stats)
        from tlcli.config.validate import peft_problems

        missing = peft_problems()  # fit checks this up front; test/export of a LoRA checkpoint get here first
        if missing:
            raise ConfigError(missing)
        if r < 1:
            raise ConfigError(f"finetune.r={r} must be >= 1 (the rank of the adapters, e.g. 8)")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        is_list = target_modules is not None and not isinstance(target_modules, str)
        self.target_modules = list(target_modules) if is_list else target_modules
        self.trainable_fraction = 0.0

    def setup(self, module: nn.Module) -> None:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.tuners_utils import check_target_module_exists

        model = module.backbone.model
        targets = self.target_modules or default_targets(module.backbone)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)
        if not any(name and check_target_module_exists(config, name) for name, _ in model.named_modules()):
            raise ConfigError(f"{KEY}={targets} matches no module of the backbone: use {candidates(model)}")
        try:
            inject_adapter_in_model(config, model)
        except ValueError as e:  # e.g. a matched module type peft cannot adapt (a norm layer)
            raise ConfigError(
                f"{KEY}={targets}: peft cannot adapt the matched modules ({e}): use {candidates(model)}"
            ) from e
        for name, p in module.backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        params = list(module.backbone.parameters()) + list(module.head.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        self.trainable_fraction = trainable / sum(p.numel() for p in params)
        log.info("lora on %s: %d trainable parameters (%.2f%%)", targets, trainable, 100 * self.trainable_fraction)

    def param_groups(self, module: nn.Module) -> list[ParamGroup]:
        lora = [(n, p) for n, p in module.backbone.named_parameters() if "lora_" in n]
        return [ParamGroup("lora", lora), head_group(module)]

    def merge(self, module: nn.Module) -> None:
        merge(module)

    def frozen_modules(self, module: nn.Module, epoch: int) -> list[nn.Module]:
        return batchnorm_modules(module.backbone)  # not all of the backbone: LoRA dropout must stay on


def merge(module: nn.Module) -> None:
    """Fold every adapter into its base weight (W + B A * alpha/r) and remove the adapters,
    leaving the plain architecture, e.g. for export. In place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = module.backbone.model
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def default_targets(backbone: nn.Module) -> list[str]:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    model = backbone.model
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None:  # a Hugging Face model
        targets = HF_EXTRA_TARGETS.get(model_type) or PEFT_TARGETS.get(model_type)
        if isinstance(targets, list):
            return list(targets)
        raise ConfigError(
            f"finetune=lora has no default target modules for Hugging Face model type '{model_type}': "
            f"set {KEY}=[...], e.g. from {candidates(model)}"
        )
    if any(isinstance(m, nn.Linear) and n.endswith(".attn.qkv") for n, m in model.named_modules()):
        return list(TIMM_VIT_TARGETS)
    raise ConfigError(
        f"finetune=lora has no default target modules for '{backbone.name}' (backbone.name), which has no "
        f"attention layers (attn.qkv): set {KEY}=[...], e.g. from {candidates(model)}"
    )


def candidates(model: nn.Module, n: int = 4) -> str:
    """'Linear modules a, b, c, d (+20 more)', or the Conv2d ones when there is no Linear."""
    for kind in (nn.Linear, nn.Conv2d):
        names = [name for name, m in model.named_modules() if type(m) is kind]
        if names:
            more = f" (+{len(names) - n} more)" if len(names) > n else ""
            return f"{kind.__name__} modules {', '.join(names[:n])}{more}"
    return "the names of its Linear or Conv2d modules"
