"""Any timm image model as a backbone: pooled features, or a feature pyramid for dense heads."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import group_parameters

from tlcli.backbones import weights as W
from tlcli.backbones.base import FEATURES, Backbone, FeatureMaps
from tlcli.errors import ConfigError, WeightsError, did_you_mean

log = logging.getLogger(__name__)


# feature maps a pyramid keeps: the last ones (strides 4 to 32 on most CNNs, the last blocks of a ViT)
PYRAMID_LEVELS = 4


class TimmBackbone(Backbone):
    """timm.create_model(name, num_classes=0): forward returns pooled (B, num_features) features.

    weights: "hub" (timm's pretrained weights, downloaded and cached), "none" (random
    init), "pkg:NAME" (weights shipped in a pip package) or a local .safetensors/.pt/.pth
    file. features: "pooled", or "pyramid" (set by task=segmentation): the last PYRAMID_LEVELS
    feature maps through timm's forward_intermediates, as FeatureMaps; the layers after the last
    map (the classifier side: conv_head, final norm) are pruned once the weights are loaded.
    Extra keyword arguments go to timm.create_model (e.g. drop_path_rate).
    source_head() gives back the pretrained classifier the pooled model leaves out (LEEP, NCE).
    """

    modality = "image"

    def __init__(
        self,
        name: str,
        weights: str = "hub",
        features: str = "pooled",
        recipe: dict | None = None,
        **model_kwargs: Any,
    ):
        # recipe: numbers `tlcli fit` trains this family with where the user set none (tlcli.config.recipes)
        super().__init__()
        _check_name(name)
        if features == "tokens":
            raise ConfigError(
                f"backbone.features=tokens: backbone={name} is an image model and gives no feature per token "
                "(task=token_cls): use a Hugging Face text backbone, e.g. backbone=minilm_offline"
            )
        if features not in FEATURES:
            raise ConfigError(f"backbone.features={features} must be pooled or pyramid")
        self.name, self.weights, self.features = name, str(weights), features
        self._model_kwargs = dict(model_kwargs)
        self._head: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # a checkpoint's classifier
        # the RNG state the random init is drawn from: source_head() draws the random classifier from it too
        self._init_rng = torch.get_rng_state()
        self.model = _create(name, self.weights == "hub", model_kwargs)
        if self.weights.startswith(W.PKG_PREFIX):
            self._load(W.packaged_state_dict(W.packaged_source(self.weights, name, "timm")), self.weights)
        elif self.weights not in ("hub", "none"):
            self._load(W.read_state_dict(Path(self.weights).expanduser()), self.weights)
        if features == "pyramid":
            self.levels = _pyramid(self.model, name)
            self.num_features = tuple(int(self.model.feature_info[i]["num_chs"]) for i in self.levels)
        else:
            # forward's width: a pre-logits layer's (MobileNetV3's conv_head) where there is one, else the trunk's
            self.num_features = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def _load(self, state: dict[str, torch.Tensor], source: str) -> None:
        # The checkpoint may carry the classifier our num_classes=0 model does not have.
        classifier = self.model.pretrained_cfg.get("classifier") or "classifier"
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        if self.features == "pooled" and len(heads) == 1:  # a distilled model's two heads: no single source head
            self._head = (state.get(f"{heads[0]}.weight"), state.get(f"{heads[0]}.bias"))
        W.load_matching(self.model, state, source, drop=tuple(f"{h}." for h in heads))

    def source_head(self) -> torch.nn.Linear | None:
        """The pretrained classifier as a Linear on the pooled features (ImageNet's 1000 classes for
        ImageNet weights), on the CPU, frozen.

        pkg: and file weights: the checkpoint's classifier tensors (None if it has none); hub: the
        classifier of timm.create_model(name, pretrained=True); none: the classifier a random init of
        the whole model gets (timm's own init for this architecture), drawn from the RNG state this
        backbone was built under, so one seed gives one head, and the caller's RNG is left as it was.
        None for a feature pyramid, or a classifier that is not one linear map of the pooled features.
        """
        if self.features != "pooled":
            return None
        width = self.num_features
        if self.weights not in ("hub", "none"):
            return _as_linear(*self._head, width)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._init_rng)
            # num_classes=None: timm's default for the pretrained tag (1000 for ImageNet-1k)
            full = _create(self.name, self.weights == "hub", self._model_kwargs, num_classes=None)
        head = full.get_classifier()
        if not isinstance(head, torch.nn.Linear | torch.nn.Conv2d):
            return None
        return _as_linear(head.weight, head.bias, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor | FeatureMaps:
        if self.features == "pooled":
            return self.model(x)
        maps = self.model.forward_intermediates(x, indices=self.levels, intermediates_only=True)
        return FeatureMaps(list(maps), (x.shape[-2], x.shape[-1]))

    def data_config(self) -> dict[str, Any]:
        cfg = timm.data.resolve_data_config({}, model=self.model)
        keys = ("input_size", "interpolation", "mean", "std", "crop_pct")
        return {"modality": "image", **{k: cfg[k] for k in keys}}

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """timm's own depth grouping (stem, each stage/block, head side), fine-grained."""
        prefix = "model."
        names = [n for n, _ in self.model.named_parameters()]
        matcher = getattr(self.model, "group_matcher", None)
        if matcher is None:
            log.info("timm model %s has no group_matcher: one layer group", self.name)
            return [("model", [prefix + n for n in names])]
        grouped = group_parameters(self.model, matcher(coarse=False))
        groups, seen = [], set()
        for members in grouped.values():
            label = _group_label(members)
            label = label if label not in seen else f"{label}#{len(groups)}"
            seen.add(label)
            groups.append((label, [prefix + n for n in members]))
        covered = {n for _, members in grouped.items() for n in members}
        rest = [prefix + n for n in names if n not in covered]
        if rest:  # group_parameters assigns every parameter today; stay correct if that changes
            groups.append(("rest", rest))
        return groups


def _as_linear(weight: torch.Tensor | None, bias: torch.Tensor | None, num_features: int) -> torch.nn.Linear | None:
    """A frozen CPU Linear with these tensors, if they map num_features inputs to classes (a 1x1 conv
    classifier on pooled maps counts); None otherwise."""
    if weight is None:
        return None
    weight = weight.detach().float().cpu()
    if weight.ndim == 4 and tuple(weight.shape[2:]) == (1, 1):
        weight = weight.flatten(1)
    if weight.ndim != 2 or weight.shape[1] != num_features:
        return None
    # skip_init: no default init, so building the head draws nothing from the RNG
    head = torch.nn.utils.skip_init(torch.nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias.detach().reshape(-1))
    return head.eval().requires_grad_(False)


def _pyramid(model: torch.nn.Module, name: str) -> list[int]:
    """Prune the model after its last PYRAMID_LEVELS feature maps; their indices."""
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "prune_intermediate_layers"):
        raise ConfigError(
            f"backbone.features=pyramid: timm model '{name}' gives no feature maps (it lacks "
            "forward_intermediates); pick a CNN or ViT such as resnet50, convnext_tiny or lite0_offline"
        )
    levels = model.prune_intermediate_layers(indices=PYRAMID_LEVELS, prune_head=True, prune_norm=True)
    return [int(i) for i in levels]


def _group_label(members: list[str]) -> str:
    """'conv1+bn1', 'layer2', 'blocks.5+norm': the common prefix under each top-level module."""
    by_top: dict[str, list[list[str]]] = {}
    for name in members:
        parts = name.split(".")[:-1] or name.split(".")
        by_top.setdefault(parts[0], []).append(parts)
    labels = []
    for paths in by_top.values():
        common = paths[0]
        for p in paths[1:]:
            n = 0
            while n < min(len(common), len(p)) and common[n] == p[n]:
                n += 1
            common = common[:n]
        labels.append(".".join(common))
    return "+".join(labels)


def _check_name(name: str) -> None:
    # hf-hub:/local-dir: prefixed names are resolved by timm itself.
    if ":" in name or timm.is_model(name):
        return
    stem = re.match(r"[A-Za-z]+", name)
    pattern = f"*{stem.group(0).lower()}*" if stem else "*"
    raise ConfigError(
        f"unknown timm model '{name}' (backbone.name).{did_you_mean(name, timm.list_models())} "
        f"List models with `tlcli ls backbones --pattern '{pattern}'`"
    )


def _create(name: str, pretrained: bool, model_kwargs: dict[str, Any], num_classes: int | None = 0) -> torch.nn.Module:
    """timm.create_model; num_classes=0: pooled features, None: the pretrained tag's own classifier."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **model_kwargs)
    except TypeError as e:
        raise ConfigError(f"timm model '{name}' rejected an extra backbone argument: {e}") from e
    except Exception as e:
        if not pretrained:
            raise
        # timm/huggingface_hub raise several types (OSError, RuntimeError, hub errors) here.
        raise WeightsError(
            f"could not load hub weights for timm model '{name}' (backbone.weights=hub): {str(e).rstrip('.')}. "
            "Offline, use backbone.weights=none, a local file, or a pkg: source "
            "(e.g. backbone=lite0_offline)"
        ) from e
