"""One assembly of the parts, used by every verb: backbone, data module, head, task, LightningModule.

fit (`parts`, then `module`), the checkpoint restore behind test/predict/export/serve/push
(`module` with tlcli.trust's checked builder), rank and `test finetune=zero_shot` (`frozen`),
test (`data`) and check all build through these functions, so a part is wired one way.

`parts` order matters: the backbone's recipe first (its data transforms and numbers) and the
task's over it, then the data (finetune=auto needs its class counts, counted as the task says),
then the strategy's recipe, which may change data keys (a probe caches features without
augmentation), then data.feature_views (auto: augmented views for a few-shot cached probe, whose
augmentation they are): the data is rebuilt only then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from tlcli.config import recipes
from tlcli.config.validate import AUTO
from tlcli.data import protocol
from tlcli.errors import ConfigError

log = logging.getLogger(__name__)


def user_choices() -> tuple[set[str], dict[str, str]]:
    """(keys the user set, group -> option picked) of the running Hydra job; empty outside one."""
    if not HydraConfig.initialized():
        return set(), {}
    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if isinstance(v, str)}
    return recipes.explicit_keys(list(hc.overrides.task), choices.get("experiment")), choices


Make = Callable[..., Any]  # hydra's instantiate, or tlcli.trust.build for a checkpoint's saved config


def backbone(node: Any, make: Make = instantiate) -> Any:
    """The backbone of a config node (pretrained weights as node.weights says)."""
    return make(node)


def data(node: Any, data_config: dict[str, Any], stage: str = "fit", make: Make = instantiate, **overrides: Any) -> Any:
    """The data module for `node` with a backbone's input spec (its data_config()), set up for `stage`,
    its contract checked."""
    datamodule = make(node, data_config=data_config, **overrides)
    datamodule.setup(stage)
    protocol.check(datamodule)
    return datamodule


def frozen(backbone_node: Any, data_node: Any, stage: str = "fit") -> tuple[Any, Any]:
    """(backbone in eval mode, its data without augmentation or cached views): what scores frozen
    features (rank, `test finetune=zero_shot`). Features must describe the data, not random crops of it."""
    model = backbone(backbone_node).eval()
    plain = {"feature_views": 0} if "feature_views" in data_node else {}  # a data module of the user's own has none
    return model, data(data_node, model.data_config(), stage, augment=False, **plain)


def head(node: Any, backbone: Any, num_classes: int, make: Make = instantiate) -> Any:
    """The head on top of the backbone's features (a partial in the config: in_features/num_classes come here)."""
    return make(node)(in_features=backbone.num_features, num_classes=num_classes)


def module(
    config: Any,
    backbone: Any,
    task: Any,
    class_names: list[str],
    label_counts: list[int],
    *,
    make: Make = instantiate,
    head_module: Any = None,
    strategy: Any = None,
    **options: Any,
) -> Any:
    """The TransferModule of a run config: its head, strategy, optimizer and schedule built by `make`.

    `task` comes built (fit fits its targets first; restore sizes it from the checkpoint); options
    go to TransferModule as they are (distiller, channels_last, compile)."""
    from tlcli.module import TransferModule

    if head_module is None:
        head_module = head(config["head"], backbone, len(class_names), make)
    plain = config if isinstance(config, dict) else OmegaConf.to_container(config, resolve=True)
    return TransferModule(
        backbone=backbone,
        head=head_module,
        task=task,
        strategy=strategy if strategy is not None else make(config["finetune"]),
        optimizer=make(config["optimizer"]),
        schedule=make(config["scheduler"]),
        class_names=list(class_names),
        label_counts=list(label_counts),
        config=plain,
        **options,
    )


def parts(cfg: DictConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(backbone, datamodule set up for fit, notes for metrics.json); cfg is completed in place."""
    explicit, choices = user_choices()
    # the backbone's recipe, then the task's (what the problem needs beats what the family likes); the
    # backbone's finetune.* keys wait for the final strategy (auto chooses it below)
    held: dict[str, tuple[Any, str]] = {}
    sources = recipes.apply(cfg, explicit, choices, groups=("backbone", "task"), held=held)
    model = backbone(cfg.backbone)
    data_node = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = data(cfg.data, model.data_config())
    notes: dict[str, Any] = {}
    probe_max = None  # finetune=auto's threshold, when it chooses
    if cfg.finetune._target_ == AUTO:
        counted = _counted(cfg, datamodule)
        chooser = instantiate(cfg.finetune)
        probe_max = chooser.probe_max_per_class
        name, reason = chooser.choose(list(counted.counts.values()), model.modality, counted.per, counted.unit)
        from tlcli.config.paths import conf_dir

        with open_dict(cfg):
            cfg.finetune = OmegaConf.load(conf_dir() / "finetune" / f"{name}.yaml")
        choices["finetune"] = name
        notes.update({"finetune/auto": name, "finetune/auto_reason": reason})
        log.info("finetune=auto chose finetune=%s: %s", name, reason)
    augment = cfg.data.augment if "augment" in cfg.data else None  # before a probe's recipe turns it off
    sources.update(recipes.apply(cfg, explicit, choices, groups=("finetune",)))
    sources.update(recipes.apply_held(cfg, held, explicit, sources))
    notes.update(_feature_views(cfg, choices, sources, datamodule, model.modality, augment, probe_max))
    _cache_only_without_inputs(cfg, explicit, sources)
    if data_node.get("feature_views") == "auto":  # a data module builds auto as 0: the same data at 0
        data_node["feature_views"] = 0
    if OmegaConf.to_container(cfg.data, resolve=True) != data_node:
        datamodule = data(cfg.data, model.data_config())
    sources = recipes.with_defaults(cfg, sources, explicit, choices)
    notes.update({f"recipe/{k}": f"{v['value']} ({v['source']})" for k, v in sources.items()})
    notes["selection"] = f"best {cfg.monitor} ({cfg.monitor_mode}) on val; early stopping on the same"
    return model, datamodule, notes


def _counted(cfg: DictConfig, datamodule: Any) -> Any:
    """What finetune=auto weighs: what is counted per class is the task's to say (token
    classification: entities per type)."""
    return instantiate(cfg.task).auto_counts(datamodule.label_counts(), datamodule.class_names)


def _feature_views(
    cfg: DictConfig,
    choices: dict[str, str],
    sources: dict[str, Any],
    datamodule: Any,
    modality: str,
    augment: Any,
    probe_max: int | None,
) -> dict[str, Any]:
    """Resolve data.feature_views to a number in place (auto: tlcli.finetune.auto.views); the notes
    saying which and why. The views are the cached probe's augmentation, so the probe recipe's
    data.augment=false yields to them (a data.augment=false of the user's does not: no views then).
    Views asked for where they cannot apply are a ConfigError."""
    from tlcli.data import augment as presets
    from tlcli.finetune import auto

    node = cfg.data
    if "feature_views" not in node:  # a data module of the user's own
        return {}
    asked = node.feature_views
    blocker = _views_blocker(cfg, choices, modality, augment)
    if asked == "auto":
        labels = OmegaConf.select(cfg, "task.labels", default="class")
        if blocker is None and labels != "class":  # auto follows the evidence: measured on class labels only
            blocker = (f"the task's targets are {labels}, and views were measured on single-label classes only", "")
        if blocker is None:
            if probe_max is None:  # finetune is not auto: its default threshold applies
                from tlcli.config.paths import conf_dir

                probe_max = OmegaConf.load(conf_dir() / "finetune" / "auto.yaml").probe_max_per_class
            counted = _counted(cfg, datamodule)
            smallest = min(counted.counts.values(), default=0)
            views, reason = auto.views(smallest, probe_max, None, counted.per, counted.unit)
        else:
            views, reason = auto.views(0, 0, blocker[0])
        notes = {"data/feature_views": views, "data/feature_views_reason": reason}
        log.debug("data.feature_views=auto -> %d: %s", views, reason)
    else:
        views, notes = asked, {"data/feature_views": asked}
        if views and blocker is not None:
            raise ConfigError(
                f"data.feature_views={views} caches augmented views of train images for a linear probe on "
                f"cached features, but {blocker[0]}: {blocker[1]}"
            )
    with open_dict(cfg):
        node.feature_views = views
        if views and presets.preset(node.augment) == "none":  # the probe recipe turned it off
            node.augment = augment
            sources["data.augment"] = {"value": augment, "source": f"kept: the {views} cached views are drawn with it"}
    sources["data.feature_views"] = {"value": views, "source": "auto" if asked == "auto" else "your setting"}
    return notes


def _views_blocker(cfg: DictConfig, choices: dict[str, str], modality: str, augment: Any) -> tuple[str, str] | None:
    """(why this run cannot cache augmented views, how to fix it), or None: it is the cached-feature
    probe on images, with a training transform to draw views through. augment: data.augment as
    it was before the strategy's recipe."""
    from hydra.utils import get_class

    from tlcli.data import augment as presets
    from tlcli.finetune.linear_probe import LinearProbe

    node, off = cfg.data, "or set data.feature_views=0"
    if modality != "image":
        return f"this data is {modality}, and texts are not augmented", "set data.feature_views=0 (or auto)"
    if not issubclass(get_class(cfg.finetune._target_), LinearProbe):
        name = choices.get("finetune") or cfg.finetune._target_.rsplit(".", 1)[-1]
        return f"finetune={name} trains the backbone, so its features are not cached", (
            f"use finetune=linear_probe (or finetune=auto on few examples), {off}"
        )
    if not node.feature_cache:
        return "data.feature_cache=false", f"set data.feature_cache=true, {off}"
    if cfg.distill.teacher:
        return "distill.teacher needs the images themselves", f"drop distill.teacher, {off}"
    if OmegaConf.select(cfg, "backbone.features", default="pooled") == "pyramid":
        return "backbone.features=pyramid gives feature maps, which are not cached", off.removeprefix("or ")
    name = presets.preset(augment)
    if name == "none":
        return f"data.augment={str(augment).lower()} leaves no training transform to draw views through", (
            f"set data.augment=light (random resized crop + flip, as measured), {off}"
        )
    if all(k in node for k in MIXING_KEYS) and presets.mixing(name, *(node[k] for k in MIXING_KEYS)) is not None:
        return "mixup / cutmix mix images, not their features", f"set data.mixup_alpha=0 data.cutmix_alpha=0, {off}"
    return None


MIXING_KEYS = ("mixup_alpha", "cutmix_alpha", "mixup_prob")


def _cache_only_without_inputs(cfg: DictConfig, explicit: set[str], sources: dict[str, Any]) -> None:
    """A recipe's feature cache yields to what needs the inputs themselves: augmentation (unless
    cached as views, data.feature_views), a teacher."""
    node = cfg.data
    if "feature_cache" not in node or not node.feature_cache or "data.feature_cache" in explicit:
        return
    views = "feature_views" in node and node.feature_views > 0
    why = _input_changes(node, views) or ("distill.teacher" if cfg.distill.teacher else None)
    if OmegaConf.select(cfg, "backbone.features", default="pooled") == "pyramid":
        why = "backbone.features=pyramid (feature maps, too large to cache)"
    if "streaming" in node and node.streaming:
        why = "data.streaming=true (a stream is read as it comes, not held to cache)"
    if why:
        with open_dict(cfg):
            node.feature_cache = False
        needs = "" if why.startswith(("backbone.", "data.streaming")) else " needs the inputs"
        sources["data.feature_cache"] = {"value": False, "source": f"off: {why}{needs}"}


def _input_changes(data: DictConfig, views: bool = False) -> str | None:
    """The data key that changes the inputs from epoch to epoch (augmentation, unless its cached
    views stand in for it; batch mixing), or None."""
    from tlcli.data import augment

    if "augment" not in data:  # a data module of the user's own
        return None
    name = augment.preset(data.augment)
    if name != "none" and not views:
        return f"data.augment={str(data.augment).lower()}"
    if all(k in data for k in MIXING_KEYS):
        if augment.mixing(name, data.mixup_alpha, data.cutmix_alpha, data.mixup_prob) is not None:
            return "data.mixup_alpha / data.cutmix_alpha"
    return None
