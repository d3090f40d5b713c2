"""The backbone protocol every model family implements."""

from __future__ import annotations

from typing import Any

from torch import nn


class Backbone(nn.Module):
    """A pretrained feature extractor.

    forward(x) -> (batch, num_features) pooled features, where x is an image tensor
    (B, 3, H, W) for modality "image" or a dict of token tensors (input_ids,
    attention_mask, ...) for modality "text"; after token_features(), (batch, tokens,
    num_features): one feature vector per token, for tasks that predict per token.
    """

    modality: str = "image"
    num_features: int

    def token_features(self) -> None:
        """Switch forward to one feature vector per token (B, T, num_features), unpooled.

        Asked for by a task that predicts per token (tlcli.tasks.Task.attach); backbones without
        tokens cannot give it."""
        from tlcli.errors import ConfigError

        raise ConfigError(
            f"{type(self).__name__} gives one feature vector per example, but the task predicts per token: "
            "use a Hugging Face text backbone, e.g. backbone=minilm_offline or backbone=hf backbone.name=ORG/NAME"
        )

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """Parameter names grouped by depth, input side first: [(group_name, [param names])].

        Names are relative to this module (as in self.named_parameters()). Every
        trainable parameter appears in exactly one group.
        """
        raise NotImplementedError

    def data_config(self) -> dict[str, Any]:
        """How inputs must be prepared, taken from the model's own pretrained config.

        image: {"modality": "image", "input_size": (3, H, W), "interpolation": str,
                "mean": (r, g, b), "std": (r, g, b), "crop_pct": float}
        text:  {"modality": "text", "tokenizer": PreTrainedTokenizerBase, "max_length": int}
        """
        raise NotImplementedError
