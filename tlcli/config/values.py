"""Types and ranges of the values a user sets: checked before any work, all at once.

`RANGES` covers the keys tlcli owns and the arguments it hands to the optimizer,
scheduler, trainer and callbacks; it needs no imports, so `tlcli cat` applies it too.
`type_problems` checks every other key of a group against its `_target_`'s annotations.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# kept here (not imported from tlcli.data.augment / tlcli.training.tta): this module imports nothing of tlcli
AUGMENT_PRESETS = ("none", "light", "randaug", "trivial", "autoaug", "strong")
TTA_VIEWS = ("flip", "crops")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _tta(v: Any) -> bool:
    if isinstance(v, ListConfig | list):
        return len(v) > 0 and all(x in TTA_VIEWS for x in v)
    return v is None or v == "none" or v in TTA_VIEWS


# key -> (accepts the value?, what it must be, an example)
RANGES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "seed": (lambda v: _int(v) and v >= 0, "a non-negative integer", "0"),
    "test_after_fit": (_bool, "true or false", "true"),
    "auto_resume": (_bool, "true or false", "true"),
    "baseline": (_bool, "true or false", "true"),
    "calibrate": (_bool, "true or false", "true"),
    "head_init": (lambda v: v in ("random", "baseline"), "random or baseline", "baseline"),
    "ema_decay": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1) (0 = off)", "0.999"),
    "compile": (_bool, "true or false", "false"),
    "channels_last": (lambda v: _bool(v) or v == "auto", "auto, true or false", "auto"),
    "progress_bar": (_bool, "true or false", "false"),
    "accelerator": (lambda v: v in ("auto", "cpu", "gpu"), "auto, cpu or gpu", "auto"),
    "devices": (lambda v: _int(v) and v >= 1, "a positive integer", "2"),
    "num_nodes": (lambda v: _int(v) and v >= 1, "a positive integer", "1"),
    "alpha": (lambda v: v == "auto" or (_num(v) and 0 <= v <= 1), "auto or a number in [0, 1]", "0.5"),
    "alphas": (
        lambda v: isinstance(v, ListConfig) and len(v) > 0 and all(_num(a) and 0 <= a <= 1 for a in v),
        "a list of numbers in [0, 1]",
        "[0,0.25,0.5,0.75,1]",
    ),
    "wise_ft": (
        lambda v: v is None or v == "auto" or (_num(v) and 0 <= v <= 1),
        "null (off), auto (alpha chosen on val) or an alpha in [0, 1]",
        "auto",
    ),
    "wise_ft_alphas": (
        lambda v: isinstance(v, ListConfig) and len(v) > 0 and all(_num(a) and 0 <= a <= 1 for a in v),
        "a list of numbers in [0, 1]",
        "[0,0.25,0.5,0.75,1]",
    ),
    "method": (lambda v: v in ("greedy", "uniform"), "greedy or uniform", "greedy"),
    "top_k": (lambda v: _int(v) and v >= 1, "a positive integer", "5"),
    "batch_size": (lambda v: _int(v) and v >= 1, "a positive integer", "32"),
    "num_workers": (lambda v: v == "auto" or (_int(v) and v >= 0), "auto or an integer >= 0", "auto"),
    "optimizer.lr": (lambda v: _num(v) and v > 0, "a positive number", "1e-3"),
    "optimizer.weight_decay": (lambda v: _num(v) and v >= 0, "a number >= 0", "0.05"),
    "optimizer.momentum": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)", "0.9"),
    "scheduler.warmup_epochs": (lambda v: _num(v) and v >= 0, "a number >= 0", "1"),
    "scheduler.min_lr_ratio": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]", "0.01"),
    "trainer.max_epochs": (lambda v: _int(v) and (v >= 1 or v == -1), "a positive integer (-1: no limit)", "10"),
    "trainer.min_epochs": (lambda v: v is None or (_int(v) and v >= 0), "an integer >= 0", "1"),
    "trainer.accumulate_grad_batches": (lambda v: _int(v) and v >= 1, "a positive integer", "1"),
    "trainer.log_every_n_steps": (lambda v: _int(v) and v >= 1, "a positive integer", "10"),
    "trainer.gradient_clip_val": (lambda v: v is None or (_num(v) and v > 0), "null or a positive number", "1.0"),
    "data.batch_size": (lambda v: _int(v) and v >= 1, "a positive integer", "32"),
    "data.val_fraction": (lambda v: _num(v) and 0 < v < 1, "a number between 0 and 1", "0.2"),
    "data.k_shot": (lambda v: v is None or (_int(v) and v >= 1), "null or a positive integer", "10"),
    "data.image_size": (lambda v: v is None or (_int(v) and v >= 8), "null or an integer >= 8", "224"),
    "data.max_bad_fraction": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]", "0.01"),
    "data.max_image_pixels": (lambda v: v is None or (_int(v) and v >= 1), "null or a positive integer", "200000000"),
    "max_bad_fraction": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]", "0.01"),
    "max_image_pixels": (lambda v: v is None or (_int(v) and v >= 1), "null or a positive integer", "200000000"),
    "data.num_workers": (lambda v: v == "auto" or (_int(v) and v >= 0), "auto or an integer >= 0", "auto"),
    "data.augment": (
        lambda v: _bool(v) or v in AUGMENT_PRESETS or (isinstance(v, str) and v.startswith("rand-")),
        "a preset: none, light, randaug, trivial, autoaug, strong (true = light, false = none), or a timm "
        "RandAugment string such as rand-m9-mstd0.5-inc1",
        "randaug",
    ),
    "data.mixup_alpha": (lambda v: v is None or (_num(v) and v >= 0), "null (the augment preset's) or >= 0", "0.8"),
    "data.cutmix_alpha": (lambda v: v is None or (_num(v) and v >= 0), "null (the augment preset's) or >= 0", "1.0"),
    "data.mixup_prob": (lambda v: v is None or (_num(v) and 0 <= v <= 1), "null or a number in [0, 1]", "1.0"),
    "data.sampler": (lambda v: v in ("shuffle", "balanced"), "shuffle or balanced", "balanced"),
    "data.streaming": (_bool, "true or false", "true"),
    "data.shuffle_buffer": (lambda v: _int(v) and v >= 1, "a positive integer (examples)", "1000"),
    "data.val_size": (lambda v: _int(v) and v >= 1, "a positive integer (examples)", "1000"),
    "data.train_size": (lambda v: v is None or (_int(v) and v >= 1), "null or a positive integer", "50000"),
    "tta": (_tta, "null (off), flip, crops or [flip,crops]", "flip"),
    "callbacks.early_stopping.patience": (lambda v: _int(v) and v >= 0, "an integer >= 0", "3"),
    "distill.alpha": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]", "0.5"),
    "distill.temperature": (lambda v: _num(v) and v > 0, "a positive number", "4.0"),
}


def range_problems(cfg: DictConfig) -> list[str]:
    """One line per value of RANGES that is set (not an interpolation) and out of type or range."""
    out = []
    for key, (ok, what, example) in RANGES.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node or OmegaConf.is_interpolation(node, leaf):
            continue
        if OmegaConf.is_missing(node, leaf):
            continue  # reported as required by missing_keys
        value = node[leaf]
        if not ok(value):
            out.append(f"{key}={_show(value)} must be {what}, e.g. {key}={example}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, ListConfig | list | tuple):  # as an override writes it: [flip,zoom]
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if not isinstance(value, str) or value else "''"


def type_problem(key: str, value: Any, target: Callable, param: str) -> str | None:
    """`key=value must be ...` when the value cannot be what `target`'s `param` is annotated as."""
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return None
    hint = hints.get(param)
    if hint is None or _fits(value, hint) is not False:
        return None
    return f"{key}={_show(value)} must be {_describe(hint)}"


def _fits(value: Any, hint: Any) -> bool | None:
    """True / False, or None when the annotation is something a YAML value cannot be judged against."""
    if hint is Any or hint is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_fits(value, a) for a in typing.get_args(hint)]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return _bool(value)
    if hint is int:
        return _int(value)
    if hint is float:
        return _num(value)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (list, tuple, typing.Sequence) or (inspect.isclass(base) and base.__name__ in ("Sequence", "Iterable")):
        return isinstance(value, list | tuple | ListConfig)
    if base in (dict, typing.Mapping) or (inspect.isclass(base) and base.__name__ == "Mapping"):
        return isinstance(value, dict | DictConfig)
    return None


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, typing.Literal):
        literals = list(dict.fromkeys(str(v) for v in _literals(hint)))
        parts = [_describe(a) for a in typing.get_args(hint) if typing.get_origin(a) is not typing.Literal]
        parts = [p for p in dict.fromkeys(parts) if p and p != "null"]
        text = parts + ([f"one of {', '.join(literals)}"] if literals else [])
        if type(None) in typing.get_args(hint):
            text.append("null")
        return " or ".join(text)
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    base = origin or hint
    if base in (list, tuple) or getattr(base, "__name__", "") in ("Sequence", "Iterable"):
        return "a list"
    if base is dict or getattr(base, "__name__", "") == "Mapping":
        return "a mapping"
    return ""


def _literals(hint: Any) -> list[Any]:
    """Every Literal value inside a (possibly nested) Union."""
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [v for a in typing.get_args(hint) for v in _literals(a)]
    return []
