"""Tasks: the loss, the metrics and how logits become scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from tlcli.errors import ConfigError


class Classification(nn.Module):
    """Single-label classification: cross-entropy with optional label smoothing and class weights."""

    multilabel = False

    def __init__(self, label_smoothing: float = 0.0, class_weights: str | list | None = None):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing={label_smoothing} must be in [0, 1), e.g. 0.1")
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.register_buffer("weight", None, persistent=False)

    def build(self, num_classes: int, label_counts: list[int]) -> None:
        """Fix the class weights once the data (and its class counts) is known."""
        cw = self.class_weights
        if cw is None:
            return
        if cw == "balanced":
            counts = torch.tensor(label_counts, dtype=torch.float)
            # sklearn's "balanced": n_samples / (n_classes * count); unseen classes get weight 0
            weight = counts.sum() / (num_classes * counts.clamp(min=1))
            self.weight = torch.where(counts > 0, weight, torch.zeros_like(weight))
        elif isinstance(cw, str):
            raise ConfigError(
                f"task.class_weights='{cw}' is not understood: use null, balanced, or a list of {num_classes} numbers"
            )
        else:
            if len(cw) != num_classes:
                raise ConfigError(
                    f"task.class_weights has {len(cw)} values but the data has {num_classes} "
                    f"classes: give one weight per class, or use task.class_weights=balanced"
                )
            self.weight = torch.tensor([float(w) for w in cw])

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, weight=self.weight, label_smoothing=self.label_smoothing)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)

    def metrics(self, num_classes: int) -> torchmetrics.MetricCollection:
        kw = {"task": "multiclass", "num_classes": num_classes}
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.Accuracy(**kw),
                "f1_macro": torchmetrics.F1Score(**kw, average="macro"),
            }
        )

    def metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


class MultiLabel(nn.Module):
    """Multi-label classification: BCE on one logit per label, thresholded per label."""

    multilabel = True

    def __init__(self, threshold: float | list[float] = 0.5):
        super().__init__()
        self.threshold_cfg = threshold
        self.register_buffer("threshold", None, persistent=False)

    def build(self, num_classes: int, label_counts: list[int]) -> None:
        thr = self.threshold_cfg
        values = [float(thr)] * num_classes if isinstance(thr, (int, float)) else list(thr)
        if len(values) != num_classes or not all(0.0 < t < 1.0 for t in values):
            raise ConfigError(
                f"task.threshold={thr} must be one number in (0, 1) or a list of "
                f"{num_classes} such numbers (one per label)"
            )
        self.thresholds = [float(t) for t in values]
        self.threshold = torch.tensor(values)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y.float())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def metrics(self, num_classes: int) -> torchmetrics.MetricCollection:
        kw = {"task": "multilabel", "num_labels": num_classes}
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.Accuracy(**kw),
                "f1_macro": torchmetrics.F1Score(**kw, average="macro"),
            }
        )

    def metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        # per-label thresholds applied here; torchmetrics then sees hard 0/1 predictions
        return (logits.sigmoid() >= self.threshold).float()
