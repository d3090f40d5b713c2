"""The parts of a fit before training: recipes applied, finetune=auto resolved, backbone and data built.

Order matters: the backbone's recipe first (its data transforms and numbers), then the data
(finetune=auto needs its class counts), then the strategy's recipe, which may change data
keys (a probe caches features without augmentation): the data is rebuilt only then.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from tlcli.config import recipes
from tlcli.data import protocol

log = logging.getLogger(__name__)
AUTO = "tlcli.finetune.auto.Auto"


def user_choices() -> tuple[set[str], dict[str, str]]:
    """(keys the user set, group -> option picked) of the running Hydra job; empty outside one."""
    if not HydraConfig.initialized():
        return set(), {}
    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if isinstance(v, str)}
    return recipes.explicit_keys(list(hc.overrides.task), choices.get("experiment")), choices


def parts(cfg: DictConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(backbone, datamodule set up for fit, notes for metrics.json); cfg is completed in place."""
    explicit, choices = user_choices()
    sources = recipes.apply(cfg, explicit, choices, groups=("backbone",))
    backbone = instantiate(cfg.backbone)
    data_node = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = instantiate(cfg.data, data_config=backbone.data_config())
    datamodule.setup("fit")
    protocol.check(datamodule)
    notes: dict[str, Any] = {}
    if cfg.finetune._target_ == AUTO:
        name, reason = instantiate(cfg.finetune).choose(datamodule.label_counts(), backbone.modality)
        from tlcli.config.paths import conf_dir

        with open_dict(cfg):
            cfg.finetune = OmegaConf.load(conf_dir() / "finetune" / f"{name}.yaml")
        choices["finetune"] = name
        notes.update({"finetune/auto": name, "finetune/auto_reason": reason})
        log.info("finetune=auto chose finetune=%s: %s", name, reason)
    sources.update(recipes.apply(cfg, explicit, choices, groups=("finetune",)))
    _cache_only_without_inputs(cfg, explicit, sources)
    if OmegaConf.to_container(cfg.data, resolve=True) != data_node:
        datamodule = instantiate(cfg.data, data_config=backbone.data_config())
        datamodule.setup("fit")
    sources = recipes.with_defaults(cfg, sources, explicit, choices)
    notes.update({f"recipe/{k}": f"{v['value']} ({v['source']})" for k, v in sources.items()})
    notes["selection"] = f"best {cfg.monitor} ({cfg.monitor_mode}) on val; early stopping on the same"
    return backbone, datamodule, notes


def _cache_only_without_inputs(cfg: DictConfig, explicit: set[str], sources: dict[str, Any]) -> None:
    """A recipe's feature cache yields to what needs the inputs themselves: augmentation, a teacher."""
    data = cfg.data
    if "feature_cache" not in data or not data.feature_cache or "data.feature_cache" in explicit:
        return
    why = _input_changes(data) or ("distill.teacher" if cfg.distill.teacher else None)
    if OmegaConf.select(cfg, "backbone.features", default="pooled") != "pooled":
        why = "backbone.features=pyramid (feature maps, too large to cache)"
    if why:
        with open_dict(cfg):
            data.feature_cache = False
        needs = "" if why.startswith("backbone.") else " needs the inputs"
        sources["data.feature_cache"] = {"value": False, "source": f"off: {why}{needs}"}


def _input_changes(data: DictConfig) -> str | None:
    """The data key that changes the inputs from epoch to epoch (augmentation, batch mixing), or None."""
    from tlcli.data import augment

    if "augment" not in data:  # a data module of the user's own
        return None
    name = augment.preset(data.augment)
    if name != "none":
        return f"data.augment={str(data.augment).lower()}"
    if all(k in data for k in ("mixup_alpha", "cutmix_alpha", "mixup_prob")):
        if augment.mixing(name, data.mixup_alpha, data.cutmix_alpha, data.mixup_prob) is not None:
            return "data.mixup_alpha / data.cutmix_alpha"
    return None
