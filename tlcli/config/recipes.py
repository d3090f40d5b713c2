"""Recipes: the numbers a backbone family, a task and a strategy train best with, where the user set none.

A backbone, task or strategy YAML may carry `recipe:`, a mapping of dotted config keys to values:

    # conf/backbone/hf.yaml          # conf/task/token_cls.yaml     # conf/finetune/linear_probe.yaml
    recipe:                          task:                          recipe:
      optimizer.lr: 5e-5               recipe:                        optimizer.lr: 1e-3
                                         optimizer.lr: 1e-4           data.feature_cache: true
                                         data.batch_size: 8

Layers, later wins: the group YAML defaults < the backbone's recipe < the task's recipe < the
strategy's recipe < what the user set (a command-line override, a sweep value, an experiment
file). The task beats the backbone: the backbone's numbers are for its family on whole-input
tasks, the task knows its problem (a tag per token needs more optimizer steps than a label per
sentence). The strategy beats both: it decides what trains (a probe's head alone takes a far
larger learning rate). A preset declares its own recipe by overriding keys of its parent's
(`recipe: {optimizer.lr: 1e-4}`). A backbone's `finetune.*` keys set an option of whichever
strategy runs and has it (e.g. `finetune.backbone_lr_mult: 0.1`; no shipped recipe sets one); they
are applied once the strategy is final, as finetune=auto chooses it from the data.
The recipe nodes are removed once applied, so the parts, the saved config and the checkpoint
see plain values; `sources` says where each recipe key's value came from.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tlcli.errors import ConfigError

RECIPE_GROUPS = ("backbone", "task", "finetune")


def explicit_keys(overrides: list[str], experiment: str | None = None) -> set[str]:
    """Dotted keys the user set: `key=value` / `+key=value` overrides, and an experiment file's keys."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    from tlcli.config.compose import groups

    keys -= set(groups())  # finetune=full picks an option; it sets no value
    if experiment:
        from tlcli.config.paths import conf_dir

        path = conf_dir() / "experiment" / f"{experiment}.yaml"
        if path.is_file():
            node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            node.pop("defaults", None)
            keys |= set(_dotted(node))
    return keys


def _dotted(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix.rstrip(".")]
    return [k for key, value in node.items() for k in _dotted(value, f"{prefix}{key}.")]


def apply(
    cfg: DictConfig,
    explicit: set[str],
    choices: dict[str, str] | None = None,
    groups: tuple[str, ...] = RECIPE_GROUPS,
    held: dict[str, tuple[Any, str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fill cfg from the groups' recipes in place; returns {key: {"value", "source"}} for every recipe key.

    The backbone recipe's finetune.* keys speak to the strategy, which finetune=auto only knows once
    the data is read (it swaps the strategy's whole node): they go to `held` as {key: (value, origin)}
    for `apply_held` to set on the final strategy, after its own recipe."""
    choices = choices or {}
    sources: dict[str, dict[str, Any]] = {}
    problems = []
    for group in groups:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "recipe" not in node:
            continue
        recipe = node.recipe or {}
        origin = f"{group}={choices.get(group) or node._target_.rsplit('.', 1)[-1]} recipe"
        for key, value in recipe.items():
            if group == "backbone" and str(key).startswith("finetune."):
                if held is not None:
                    held[key] = (value, origin)
                continue
            if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
                parent = key.rpartition(".")[0]
                if parent and OmegaConf.select(cfg, parent, default=None) is None:
                    # a recipe speaks to every callbacks option: the one chosen here lacks this key
                    # (e.g. callbacks=none, no early stopping)
                    continue
                problems.append(f"{group}.recipe sets {key}, which is not a config key: fix the recipe's key")
                continue
            sources[key] = _fill(cfg, key, value, explicit, origin)
        with open_dict(cfg):
            del node["recipe"]
    if problems:
        raise ConfigError(problems)
    return sources


def apply_held(
    cfg: DictConfig, held: dict[str, tuple[Any, str]], explicit: set[str], sources: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Set the held finetune.* keys where the final strategy has the option and neither its recipe
    nor the user set it; returns their sources as `apply` does."""
    out = {}
    for key, (value, origin) in held.items():
        if key in sources or OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue  # the strategy's recipe chose, or this strategy has no such option
        out[key] = _fill(cfg, key, value, explicit, origin)
    return out


def with_defaults(
    cfg: DictConfig, sources: dict[str, dict[str, Any]], explicit: set[str], choices: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """sources plus the SHOWN keys no recipe set, with where their value came from."""
    out = dict(sources)
    for key in SHOWN:
        value = OmegaConf.select(cfg, key, default=None)
        if key in out or value is None:
            continue
        group = key.split(".")[0]
        where = "your setting" if _covered(key, explicit) else f"{group}={choices.get(group, group)} default"
        out[key] = {"value": value, "source": where}
    return dict(sorted(out.items()))


# the numbers every start-of-run summary lists with their source, recipe or not
SHOWN = (
    "optimizer.lr",
    "optimizer.weight_decay",
    "scheduler.warmup_epochs",
    "trainer.max_epochs",
    "callbacks.early_stopping.patience",
)


def _fill(cfg: DictConfig, key: str, value: Any, explicit: set[str], origin: str) -> dict[str, Any]:
    """Set key to the recipe's value unless the user set it; {"value", "source"} of what it holds."""
    if _covered(key, explicit):
        return {"value": OmegaConf.select(cfg, key), "source": "your setting"}
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)
    return {"value": OmegaConf.select(cfg, key), "source": origin}


def _covered(key: str, explicit: set[str]) -> bool:
    """The user set this key, or a node above it (optimizer.lr is covered by an override of optimizer)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in explicit for i in range(1, len(parts) + 1))
