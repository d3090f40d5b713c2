"""Task heads: nn.Modules built as `head(in_features=..., num_classes=...)` by commands/fit.py.

in_features is the backbone's num_features: an int for pooled features (LinearHead, MLPHead; with
backbone.features=tokens they apply to each token's feature), a tuple of channel counts for a
feature pyramid (FPNHead, built for backbone.features=pyramid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tlcli.errors import ConfigError


def _pooled(head: str, in_features) -> int:
    if isinstance(in_features, int):
        return in_features
    raise ConfigError(
        f"head={head} takes pooled features (one vector per image), but the backbone gives feature maps "
        "(backbone.features=pyramid, which task=segmentation sets): use head=fpn"
    )


class LinearHead(nn.Sequential):
    """Dropout (optional) then one linear layer."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        in_features = _pooled("linear", in_features)
        layers = [nn.Dropout(dropout)] if dropout > 0 else []
        super().__init__(*layers, nn.Linear(in_features, num_classes))


class MLPHead(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.1):
        in_features = _pooled("mlp", in_features)
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )


class FPNHead(nn.Module):
    """A light FPN decoder: per-pixel logits (B, num_classes, H, W) at the input's size.

    Lateral 1x1 convs bring every feature map (finest first) to `channels`; the top-down path
    adds each coarser sum, upsampled (nearest), to the next finer map; a 3x3 conv + BatchNorm +
    ReLU smooths the finest sum, then dropout, a 1x1 conv to the classes and a bilinear upsample
    to the input size. (1x1 then upsample equals upsample then 1x1, both being linear with
    weights that sum to 1 per output pixel, at a fraction of the cost.)
    """

    def __init__(self, in_features: Sequence[int], num_classes: int, channels: int = 128, dropout: float = 0.1):
        super().__init__()
        if isinstance(in_features, int):
            raise ConfigError(
                "head=fpn needs feature maps, but the backbone gives pooled features: set task=segmentation "
                "(or backbone.features=pyramid), or use head=linear for classification"
            )
        if not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"head.channels={channels} must be a positive integer, e.g. 128")
        self.lateral = nn.ModuleList(nn.Conv2d(int(c), channels, 1) for c in in_features)
        self.smooth = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features) -> torch.Tensor:
        maps, size = features  # tlcli.backbones.base.FeatureMaps
        x = self.lateral[-1](maps[-1])
        for lateral, m in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            x = lateral(m) + F.interpolate(x, size=m.shape[-2:], mode="nearest")
        x = self.classifier(self.dropout(self.smooth(x)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
