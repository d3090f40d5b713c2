"""The backbone protocol every model family implements."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

# what forward returns (backbone.features): pooled features, a feature pyramid (image backbones,
# task=segmentation) or a feature per token (text backbones, task=token_cls)
FEATURES = ("pooled", "pyramid", "tokens")


class FeatureMaps(NamedTuple):
    """A backbone's feature pyramid: maps (B, C_i, H_i, W_i), finest first, and the input's (H, W)
    (a dense head upsamples its output to it)."""

    maps: list[torch.Tensor]
    size: tuple[int, int]


class Backbone(nn.Module):
    """A pretrained feature extractor.

    forward(x) -> (batch, num_features) pooled features, where x is an image tensor
    (B, 3, H, W) for modality "image" or a dict of token tensors (input_ids,
    attention_mask, ...) for modality "text". An image backbone built with
    features="pyramid" returns FeatureMaps instead, and num_features is then the tuple of
    the maps' channel counts (finest first): what a dense head (tlcli.heads.FPNHead) is built for.
    A text backbone built with features="tokens" returns (batch, tokens, num_features): one
    feature vector per token, unpooled, for a task that predicts per token (task=token_cls).
    """

    modality: str = "image"
    num_features: int | tuple[int, ...]

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """Parameter names grouped by depth, input side first: [(group_name, [param names])].

        Names are relative to this module (as in self.named_parameters()). Every
        trainable parameter appears in exactly one group.
        """
        raise NotImplementedError

    def source_head(self) -> nn.Linear | None:
        """The classifier the backbone was pretrained with (e.g. its ImageNet head), as a Linear on
        forward's pooled features: source_head()(backbone(x)) are the source model's logits.

        None when there is none to read: a text encoder, a feature pyramid, or weights without one.
        LEEP and NCE (`tlcli rank`) need it; the feature-based scores do not.
        """
        return None

    def data_config(self) -> dict[str, Any]:
        """How inputs must be prepared, taken from the model's own pretrained config.

        image: {"modality": "image", "input_size": (3, H, W), "interpolation": str,
                "mean": (r, g, b), "std": (r, g, b), "crop_pct": float}
        text:  {"modality": "text", "tokenizer": PreTrainedTokenizerBase, "max_length": int}
        """
        raise NotImplementedError
