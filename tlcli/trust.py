"""What a checkpoint's saved config may name: the exact parts tlcli writes, nothing else.

A checkpoint is untrusted input. Its config is plain containers (read weights-only), but
rebuilding a model from it calls the `_target_`s it names, so every target must be one
of the classes and functions below: matched as an exact string (no prefixes, so neither
`torch.hub.load` nor `tlcli.cli.os.system` passes) and then resolved to the very object
listed here (so a module attribute or a re-export cannot stand in for it). Only the
keys a part's constructor takes are passed; Hydra's own `_args_`, `_recursive_`,
`_convert_` and nested `_target_`s are refused, so nothing inside a value is ever called.
"""

from __future__ import annotations

import functools
from typing import Any

from tlcli.errors import WeightsError

# config group -> the targets tlcli itself writes into that group (conf/<group>/*.yaml)
ALLOWED_TARGETS: dict[str, tuple[str, ...]] = {
    "backbone": ("tlcli.backbones.timm.TimmBackbone", "tlcli.backbones.hf.HFBackbone"),
    "head": ("tlcli.heads.LinearHead", "tlcli.heads.MLPHead", "tlcli.heads.FPNHead"),
    "task": (
        "tlcli.tasks.Classification",
        "tlcli.tasks.MultiLabel",
        "tlcli.tasks.Regression",
        "tlcli.tasks.Segmentation",
        "tlcli.tasks.TokenClassification",
    ),
    "finetune": (
        "tlcli.finetune.full.Full",
        "tlcli.finetune.linear_probe.LinearProbe",
        "tlcli.finetune.freeze_unfreeze.FreezeUnfreeze",
        "tlcli.finetune.gradual_unfreeze.GradualUnfreeze",
        "tlcli.finetune.llrd.LayerDecay",
        "tlcli.finetune.lp_ft.LPFT",
        "tlcli.finetune.partial.Partial",
        "tlcli.finetune.l2sp.L2SP",
        "tlcli.finetune.bitfit.BitFit",
        "tlcli.finetune.lora.LoRA",
    ),
    "optimizer": ("torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD"),
    "scheduler": ("tlcli.schedules.WarmupCosine",),
    "data": (
        "tlcli.data.ImageFolderDataModule",
        "tlcli.data.CSVDataModule",
        "tlcli.data.DigitsDataModule",
        "tlcli.data.HFDataModule",
        "tlcli.data.SegFolderDataModule",
        "tlcli.data.CoNLLDataModule",
    ),
}
# Hydra keys a saved part may carry: _partial_ (optimizers, heads) only
ALLOWED_SPECIAL_KEYS = ("_target_", "_partial_")


@functools.cache
def _objects() -> dict[str, Any]:
    """Each allowed name -> the object it must resolve to (imported directly, not by name)."""
    import torch

    from tlcli import data, heads, schedules, tasks
    from tlcli.backbones import hf, timm
    from tlcli.finetune import (
        bitfit,
        freeze_unfreeze,
        full,
        gradual_unfreeze,
        l2sp,
        linear_probe,
        llrd,
        lora,
        lp_ft,
        partial,
    )

    objects = [
        timm.TimmBackbone, hf.HFBackbone, heads.LinearHead, heads.MLPHead, heads.FPNHead, tasks.Classification,
        tasks.MultiLabel, tasks.Regression, tasks.Segmentation, tasks.TokenClassification,
        full.Full, linear_probe.LinearProbe, freeze_unfreeze.FreezeUnfreeze, gradual_unfreeze.GradualUnfreeze,
        llrd.LayerDecay, lp_ft.LPFT, partial.Partial, l2sp.L2SP, bitfit.BitFit, lora.LoRA,
        torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD, schedules.WarmupCosine,
        data.ImageFolderDataModule, data.CSVDataModule, data.DigitsDataModule, data.HFDataModule,
        data.SegFolderDataModule, data.CoNLLDataModule,
    ]  # fmt: skip
    names = [n for group in ALLOWED_TARGETS.values() for n in group]
    return dict(zip(names, objects, strict=True))


def _locate(name: str) -> Any:
    """module.attr for an allowed name: one getattr on an imported module, never a chain."""
    import importlib

    module, attr = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), attr)


def problems(config: dict[str, Any], groups: tuple[str, ...], resolve: bool = True) -> list[str]:
    """Every reason the saved groups may not be rebuilt; [] when all are tlcli's own parts.
    resolve=False: the names only, nothing imported (a fit's own config, checked before it trains)."""
    found = []
    for group in groups:
        node = config.get(group) if isinstance(config, dict) else None
        if not isinstance(node, dict):
            found.append(f"{group}: missing or not a mapping")
            continue
        target = node.get("_target_")
        if not isinstance(target, str) or target not in ALLOWED_TARGETS[group]:
            found.append(f"{group}._target_: {target!r} is not one of tlcli's own {group} parts")
        elif resolve and _locate(target) is not _objects()[target]:
            found.append(f"{group}._target_: {target} does not resolve to tlcli's own {group} part")
        for key, value in node.items():
            if str(key).startswith("_") and key not in ALLOWED_SPECIAL_KEYS:
                found.append(f"{group}.{key}: Hydra instantiation keys other than _target_/_partial_ are refused")
            else:
                found += [f"{group}.{key}{where}" for where in _nested_targets(value)]
        if group == "backbone" and node.get("trust_remote_code") not in (None, False):
            found.append("backbone.trust_remote_code: a checkpoint may not ask to run a model repository's code")
    return found


def _nested_targets(value: Any, path: str = "") -> list[str]:
    """': nested _target_ ...' for every mapping inside a value that names a callable."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).startswith("_"):
                out.append(f"{path}.{k}: a nested {k} is refused ({v!r})")
            else:
                out += _nested_targets(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            out += _nested_targets(v, f"{path}.{i}")
    return out


def require_trusted(config: dict[str, Any], groups: tuple[str, ...], source: str) -> None:
    """Raise WeightsError (exit 4) naming every refused target before anything is built."""
    found = problems(config, groups)
    if found:
        raise WeightsError(
            [f"{source}: refused, a checkpoint is rebuilt only from tlcli's own parts: {p}" for p in found]
        )


def target(node: dict[str, Any]) -> Any:
    """The object an (already checked) node's _target_ names, uncalled: e.g. the data class whose
    eval transform predict uses."""
    return _objects()[node["_target_"]]


def build(node: dict[str, Any], **extra: Any) -> Any:
    """Call a node's (already checked) target with its keys; `_partial_` gives a partial."""
    target = _objects()[node["_target_"]]
    kwargs = {k: v for k, v in node.items() if not str(k).startswith("_")}
    kwargs.update(extra)
    if node.get("_partial_"):
        return functools.partial(target, **kwargs)
    return target(**kwargs)
