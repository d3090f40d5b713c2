"""Checks on the composed config that need no model or data: all problems reported at once."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tlcli.config.values import RANGES, range_problems, type_problem
from tlcli.errors import ConfigError, did_you_mean, is_installed, missing_package

MONITORS = ("val/acc", "val/f1_macro", "val/loss", "val/miou", "val/pixel_acc")
GROUPS = ("backbone", "head", "data", "finetune", "task", "optimizer", "scheduler", "trainer")
# Loggers whose package is an optional extra (pyproject.toml): logger _target_ -> (module, pip extra)
OPTIONAL_LOGGERS = {
    "lightning.pytorch.loggers.WandbLogger": ("wandb", "wandb"),
    "lightning.pytorch.loggers.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.TensorBoardLogger": ("tensorboard", "tensorboard"),
}
LORA = "tlcli.finetune.lora.LoRA"
AUTO = "tlcli.finetune.auto.Auto"
ZERO_SHOT = "tlcli.zero_shot.ZeroShot"


def missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys still at ??? (without resolving interpolations, which may need a live Hydra run)."""
    out = []
    for key in node.keys():
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            out.append(full)
        elif not OmegaConf.is_interpolation(node, key):
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                out += missing_keys(child, full + ".")
    return out


def validate(cfg: DictConfig) -> None:
    """Missing values, unselected groups, monitor, value types and ranges; imports nothing heavy."""
    problems = validate_problems(cfg)
    if problems:
        raise ConfigError(problems)


def validate_all(cfg: DictConfig, groups: tuple[str, ...] = GROUPS, choices: dict | None = None) -> None:
    """validate + check_signatures, every problem of both in one error (exit 2).

    choices: group -> the option picked (its YAML name), when Hydra's runtime is not set up yet."""
    problems = validate_problems(cfg)
    selected = tuple(g for g in groups if isinstance(cfg.get(g), DictConfig) and "_target_" in cfg[g])
    problems += signature_problems(cfg, selected, choices)
    if problems:
        raise ConfigError(problems)


def validate_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for key in missing_keys(cfg):
        problems.append(f"{key} is required (it is ??? in the config): set it, e.g. {key}=VALUE")
    for group in GROUPS:
        node = cfg.get(group)  # group presence, not a value default
        if node is None or "_target_" not in node:
            problems.append(f"config group '{group}' is not selected: pick one, e.g. `tlcli ls {group}`")
    if OmegaConf.select(cfg, "finetune._target_") == ZERO_SHOT:
        from tlcli.zero_shot import FIT_REFUSAL

        problems.append(FIT_REFUSAL)
    problems += _missing_logger_packages(cfg)
    if OmegaConf.select(cfg, "finetune._target_") == LORA:
        problems += peft_problems()
    balanced = (OmegaConf.select(cfg, "data.sampler"), OmegaConf.select(cfg, "task.class_weights"))
    if balanced == ("balanced", "balanced"):
        problems.append(
            "data.sampler=balanced and task.class_weights=balanced both correct class imbalance: together the "
            "rare classes weigh more than the common ones; keep one (e.g. task.class_weights=null)"
        )
    if OmegaConf.select(cfg, "data.streaming") is True:
        problems += streaming_problems(cfg)
    if cfg.monitor not in MONITORS:
        problems.append(
            f"monitor={cfg.monitor} is not a logged metric; choose one of {', '.join(MONITORS)}."
            + did_you_mean(str(cfg.monitor), MONITORS)
        )
    if cfg.monitor_mode not in ("min", "max"):
        problems.append(f"monitor_mode={cfg.monitor_mode} must be min or max")
    elif cfg.monitor == "val/loss" and cfg.monitor_mode == "max":
        problems.append("monitor=val/loss with monitor_mode=max would keep the worst model: set monitor_mode=min")
    return problems + range_problems(cfg) + wise_ft_problems(cfg)


def wise_ft_problems(cfg: DictConfig) -> list[str]:
    """wise_ft rebuilds the model from the fit's best checkpoint as `tlcli wise` does: what the verb
    would refuse (a part that is not tlcli's own, no checkpoint at all), refused before training."""
    if cfg.wise_ft is None:
        return []
    from tlcli import trust  # names only: imports nothing heavy

    option = f"wise_ft={cfg.wise_ft}"
    groups = [g for g in trust.ALLOWED_TARGETS if isinstance(cfg.get(g), DictConfig)]  # unselected: said above
    if OmegaConf.select(cfg, "finetune._target_") in (AUTO, ZERO_SHOT):  # auto picks one of tlcli's own
        groups.remove("finetune")  # and fit refuses zero_shot above
    plain = {g: OmegaConf.to_container(cfg[g], resolve=False) for g in groups}
    out = [
        f"{option}: refused, `tlcli wise` rebuilds a checkpoint only from tlcli's own parts: {p}; "
        "use tlcli's own part, or wise_ft=null"
        for p in trust.problems(plain, tuple(groups), resolve=False)
    ]
    callbacks = (cfg.get("callbacks") or {}).values()
    if not any(str(OmegaConf.select(c, "_target_")).endswith("ModelCheckpoint") for c in callbacks if c is not None):
        out.append(
            f"{option} interpolates the run's best checkpoint, but no callback keeps one: keep "
            "callbacks.model_checkpoint (e.g. callbacks=default), or set wise_ft=null"
        )
    return out


def streaming_problems(cfg: DictConfig) -> list[str]:
    """What needs the training examples counted per class, which a stream (data.streaming=true) is not."""
    out = []
    if OmegaConf.select(cfg, "finetune._target_") == AUTO:
        out.append(
            "finetune=auto chooses from the training examples per class, which data.streaming=true does not "
            "count (that needs a pass over the whole stream): pick a strategy, e.g. finetune=full "
            "(auto's choice above 10 examples per class) or finetune=linear_probe"
        )
    if OmegaConf.select(cfg, "task.class_weights") == "balanced":
        out.append(
            "task.class_weights=balanced weighs classes by their training examples, which data.streaming=true "
            "does not count: give one weight per class, e.g. task.class_weights=[1.0,3.0], or null"
        )
    if OmegaConf.select(cfg, "head_init") == "baseline":
        out.append(
            "head_init=baseline starts the head from the frozen-features baseline, which needs every training "
            "example's features: with data.streaming=true set head_init=random"
        )
    return out


def peft_problems() -> list[str]:
    """finetune=lora trains through peft, which comes with the lora extra."""
    if is_installed("peft"):
        return []
    instead = "choose another strategy, e.g. finetune=full"
    return [missing_package("finetune=lora", "peft", "lora", alone="peft", instead=instead)]


def _missing_logger_packages(cfg: DictConfig) -> list[str]:
    out = []
    for name, node in (cfg.get("logger") or {}).items():
        target = node.get("_target_") if node is not None else None
        if target in OPTIONAL_LOGGERS:
            module, extra = OPTIONAL_LOGGERS[target]
            if not is_installed(module):
                instead = "choose another logger, e.g. logger=csv"
                out.append(missing_package(f"logger.{name}", module, extra, alone=module, instead=instead))
    return out


def check_signatures(cfg: DictConfig, groups: tuple[str, ...] = GROUPS) -> None:
    """Every key of a group must be a parameter of its `_target_`, of its type (imports the targets)."""
    problems = signature_problems(cfg, groups)
    if problems:
        raise ConfigError(problems)


def signature_problems(cfg: DictConfig, groups: tuple[str, ...] = GROUPS, choices: dict | None = None) -> list[str]:
    import inspect

    from hydra._internal.utils import _locate

    problems = []
    for group in groups:
        node = cfg[group]
        target = _locate(node._target_)
        params = inspect.signature(target).parameters
        for key in node:
            if (
                key.startswith("_")
                or key == "recipe"
                or f"{group}.{key}" in RANGES
                or OmegaConf.is_interpolation(node, key)
            ):
                continue
            if key in params and not OmegaConf.is_missing(node, key):
                problem = type_problem(f"{group}.{key}", node[key], target, key)
                problems += [problem] if problem else []
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        for key in node:
            if not key.startswith("_") and key != "recipe" and key not in params:
                accepted = [p for p in params if p not in ("self", "params", "data_config")]
                problems.append(
                    f"{group}.{key} is not an option of {group}={_choice(group, node, choices)}."
                    + did_you_mean(key, accepted)
                    + f" Its options: {', '.join(accepted)}."
                )
    return problems


def _choice(group: str, node: DictConfig, choices: dict | None = None) -> str:
    """The option the user picked for `group` (its YAML name), else the target's class name."""
    from hydra.core.hydra_config import HydraConfig

    if choices and choices.get(group):
        return choices[group]
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return choice
    return node._target_.rsplit(".", 1)[-1]
