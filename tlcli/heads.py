"""Task heads: nn.Modules built as `head(in_features=..., num_classes=...)` by commands/fit.py."""

from __future__ import annotations

from torch import nn


class LinearHead(nn.Sequential):
    """Dropout (optional) then one linear layer."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        layers = [nn.Dropout(dropout)] if dropout > 0 else []
        super().__init__(*layers, nn.Linear(in_features, num_classes))


class MLPHead(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.1):
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
