"""Helpers the depth-aware strategies share: backbone layer groups as ParamGroups, and
the modules to keep in eval mode for a set of frozen parameters."""

from __future__ import annotations

from torch import nn

from tlcli.finetune.base import ParamGroup


def layer_param_groups(module: nn.Module) -> list[ParamGroup]:
    """One ParamGroup per backbone layer group, input side first, named 'backbone.<label>'.

    The labels come from the backbone's own depth grouping (timm group_matcher, HF
    embeddings/layer.i/final), so the names are the same on every build of the same
    architecture: resume and the LR logs can rely on them.
    """
    params = dict(module.backbone.named_parameters())
    return [
        ParamGroup(f"backbone.{label}", [(n, params[n]) for n in names])
        for label, names in module.backbone.layer_groups()
    ]


def head_group(module: nn.Module, **kwargs) -> ParamGroup:
    return ParamGroup("head", list(module.head.named_parameters()), **kwargs)


def labels(groups: list[ParamGroup]) -> str:
    """'conv1+bn1, layer1.0, ...' for error and log messages."""
    return ", ".join(g.name.removeprefix("backbone.") for g in groups)


def covering_modules(root: nn.Module, param_names: set[str]) -> list[nn.Module]:
    """The largest submodules of `root` whose parameters all lie in `param_names`.

    Putting these in eval mode pins every BatchNorm inside the frozen part, including
    parameter-less ones (affine=False) that no parameter name would point at.
    """
    chosen: list[nn.Module] = []
    taken: list[str] = []
    for name, m in root.named_modules():  # pre-order: parents before children
        if any(name.startswith(t) for t in taken):
            continue
        own = [f"{name}.{n}" if name else n for n, _ in m.named_parameters()]
        if own and all(n in param_names for n in own):
            chosen.append(m)
            if not name:
                return chosen
            taken.append(name + ".")
    return chosen


def batchnorm_modules(root: nn.Module) -> list[nn.Module]:
    """Every BatchNorm (with running statistics) under `root`."""
    return [m for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
